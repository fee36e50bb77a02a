/**
 * Activating a NixOS system the way nixos-rebuild does, in steps the
 * deploy runs one after another. Every step returns a result (a failed
 * step is data with a DeployError, never an exception), and nothing a
 * request carries is ever run: only nix, nix-env and the realised system's
 * own bin/switch-to-configuration, with argv lists, no shell.
 */
import { access, constants } from "node:fs/promises";
import { describeFailure, flakeUrlWithRef, supportsRef, type NixRunner, type RunResult } from "../nix/runner.js";
import { cannotRun, type ProcessResult } from "../nix/supervisor.js";
import { RingBuffer } from "../util/ring-buffer.js";
import type { NixProgress } from "../nix/log.js";
import { isSystemOfHost, type DeployAction, type DeployError, type DeployErrorCode } from "../deploy-protocol.js";
import { isStorePath } from "../store-path.js";
import { profileGeneration, systemAt, type SystemPaths } from "./system.js";

export type Step<T> = { ok: true; value: T } | { ok: false; error: DeployError };

export interface ActivationOptions {
  nix: NixRunner;
  host: string;
  /** The flake URL of this host's configuration (deploys evaluated on the host). */
  repoUrl: string;
  system: SystemPaths;
  /**
   * A symlink the listener keeps as a GC root for the system of its last
   * deploy: from the fetch or build on, so that a garbage collection before
   * the profile or /run/current-system hold it (or after a `test` deploy,
   * which sets no profile) cannot take it away. Replaced by the next deploy.
   */
  root: string;
  timeouts: { fetch: number; build: number; switch: number };
}

const SWITCH = "bin/switch-to-configuration";

function fail<T>(code: DeployErrorCode, message: string, cause?: string): Step<T> {
  return { ok: false, error: { code, message, ...(cause ? { cause } : {}) } };
}

/** A program that is not nix (switch-to-configuration, a health command), as it ended, with its last lines. */
export interface CommandRun {
  result: ProcessResult;
  tail: string[];
  timeoutMs: number;
}

/** Why such a command did not succeed. */
export function commandFailure({ result, timeoutMs }: CommandRun, bin: string): string {
  switch (result.outcome) {
    case "spawn_failed":
      return cannotRun(bin, result);
    case "timeout":
      return `${bin} timed out after ${Math.round(timeoutMs / 1000)}s; its process tree was killed`;
    case "cancelled":
      return `${bin} was stopped`;
    case "exited":
      return result.signal ? `${bin} was killed by ${result.signal}` : `${bin} exited with code ${result.exitCode ?? "?"}`;
  }
}

/** Why nix-env failed and the last lines it wrote, as a DeployError's cause. */
function nixCause(run: RunResult, bin: string): string {
  return [describeFailure(run, bin), ...run.log.logTail().slice(-10)].join("\n");
}

const TAIL_LINES = 10;

function succeeded(run: ProcessResult): boolean {
  return run.outcome === "exited" && run.exitCode === 0;
}

export class Activation {
  constructor(private readonly options: ActivationOptions) {}

  /** Fetches a prebuilt toplevel and its closure from the substituters: no evaluation. */
  async fetch(toplevel: string, onProgress: (progress: NixProgress) => void): Promise<Step<string>> {
    const built = await this.options.nix.realise(toplevel, { timeoutMs: this.options.timeouts.fetch, onProgress }, this.options.root);
    if (built.status !== "success") {
      return fail("realise_failed", `cannot fetch ${toplevel} from the substituters: ${built.error ?? built.status}`, built.logTail?.join("\n"));
    }
    return { ok: true, value: toplevel };
  }

  /** Evaluates and builds this host's configuration from the repo (at `ref`), as `nixos-rebuild --flake` does. */
  async build(ref: string | null, onProgress: (progress: NixProgress) => void): Promise<Step<string>> {
    const { repoUrl, host, nix } = this.options;
    if (ref !== null && !supportsRef(repoUrl)) return fail("build_failed", `the repo URL ${repoUrl} cannot be pinned to a ref`);
    const built = await nix.buildHost(flakeUrlWithRef(repoUrl, ref), host, { timeoutMs: this.options.timeouts.build, onProgress }, this.options.root);
    if (built.status !== "success" || !built.storePath) {
      return fail("build_failed", `building ${host} from ${repoUrl}${ref ? ` at ${ref}` : ""} failed: ${built.error ?? built.status}`, built.logTail?.join("\n"));
    }
    return { ok: true, value: built.storePath };
  }

  /** A NixOS system of this host: named `nixos-system-<host>-…`, with an executable bin/switch-to-configuration. */
  async checkSystem(toplevel: string): Promise<Step<void>> {
    if (!isStorePath(toplevel) || !isSystemOfHost(toplevel, this.options.host)) {
      return fail("not_a_system", `${toplevel} is not a NixOS system of ${this.options.host} (expected nixos-system-${this.options.host}-…)`);
    }
    try {
      await access(`${toplevel}/${SWITCH}`, constants.X_OK);
    } catch {
      return fail("not_a_system", `${toplevel} has no ${SWITCH}: not a NixOS system`);
    }
    return { ok: true, value: undefined };
  }

  /** `nix-env -p <profile> --set <toplevel>`: the new generation's number. */
  async setProfile(toplevel: string): Promise<Step<number | null>> {
    const { nix, system } = this.options;
    const run = await nix.run(["-p", system.profile, "--set", toplevel], { timeoutMs: this.options.timeouts.switch }, nix.nixEnvBin);
    if (!succeeded(run)) return fail("profile_failed", `cannot set the system profile ${system.profile} to ${toplevel}`, nixCause(run, nix.nixEnvBin));
    return { ok: true, value: await profileGeneration(system.profile) };
  }

  /** `nix-env -p <profile> --switch-generation <N>`: back to a generation the profile had. */
  async switchGeneration(generation: number): Promise<Step<void>> {
    const { nix, system } = this.options;
    const run = await nix.run(["-p", system.profile, "--switch-generation", String(generation)], { timeoutMs: this.options.timeouts.switch }, nix.nixEnvBin);
    if (!succeeded(run)) return fail("rollback_failed", `cannot switch the system profile back to generation ${generation}`, nixCause(run, nix.nixEnvBin));
    return { ok: true, value: undefined };
  }

  /**
   * `<toplevel>/bin/switch-to-configuration <action>`. Not recorded in the
   * process ledger: it may restart the listener itself, and must finish
   * even then (the next start must not end it).
   */
  async switchTo(toplevel: string, action: DeployAction): Promise<Step<void>> {
    const bin = `${toplevel}/${SWITCH}`;
    const run = await this.runCommand(bin, [action], this.options.timeouts.switch, { record: false });
    if (!succeeded(run.result)) {
      return fail("switch_failed", `switch-to-configuration ${action} of ${toplevel} failed`, [commandFailure(run, bin), ...run.tail].join("\n"));
    }
    return { ok: true, value: undefined };
  }

  /** Runs a program through the daemon's process supervisor, keeping its last stderr lines. */
  async runCommand(bin: string, args: readonly string[], timeoutMs: number, { record = true } = {}): Promise<CommandRun> {
    const tail = new RingBuffer<string>(TAIL_LINES);
    const result = await this.options.nix.supervisor.run(bin, args, {
      timeoutMs,
      stdout: "ignore",
      onStderrLine: (line) => {
        if (line.trim()) tail.push(line);
      },
      record,
    });
    return { result, tail: tail.toArray(), timeoutMs };
  }

  /** The system the profile's current generation is. */
  profileSystem(): Promise<string | null> {
    return systemAt(this.options.system.profile);
  }

  current(): Promise<string | null> {
    return systemAt(this.options.system.current);
  }

  booted(): Promise<string | null> {
    return systemAt(this.options.system.booted);
  }

  generation(): Promise<number | null> {
    return profileGeneration(this.options.system.profile);
  }
}
