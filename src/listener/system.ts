/**
 * What the host runs: the system profile's generations and the current and
 * booted systems, read from their links (config `system`; tests point them
 * into a temp dir). Reading never throws: a missing or broken link is null.
 */
import { readlink, realpath } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { isStorePath } from "../store-path.js";

export interface SystemPaths {
  profile: string;
  current: string;
  booted: string;
}

/** The store path a system link (e.g. /run/current-system) points to, or null. */
export async function systemAt(link: string): Promise<string | null> {
  const target = await realpath(link).catch(() => null);
  return target !== null && isStorePath(target) ? target : null;
}

/**
 * The profile's current generation number: the profile is a link to
 * `<name>-<N>-link` beside it (nix-env's layout, Nix 2.8 to current).
 */
export async function profileGeneration(profile: string): Promise<number | null> {
  const target = await readlink(profile).catch(() => null);
  if (target === null) return null;
  const match = new RegExp(`^${escape(basename(profile))}-(\\d+)-link$`).exec(basename(target));
  if (!match || (dirname(target) !== "." && dirname(target) !== dirname(profile))) return null;
  return Number(match[1]);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The parts of a NixOS system that only a reboot brings in. */
const BOOT_PARTS = ["kernel", "initrd", "kernel-modules"] as const;

/**
 * True when `system`'s kernel, initrd or kernel modules differ from the
 * booted system's (as comin and nixos-needsreboot compare them). Without a
 * booted system to compare with (a container, a test) nothing is pending.
 */
export async function rebootRequired(system: string | null, booted: string | null): Promise<boolean> {
  if (system === null || booted === null || system === booted) return false;
  for (const part of BOOT_PARTS) {
    const [ours, theirs] = await Promise.all([realpath(`${system}/${part}`).catch(() => null), realpath(`${booted}/${part}`).catch(() => null)]);
    if (ours !== theirs) return true;
  }
  return false;
}
