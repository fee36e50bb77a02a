/**
 * Parses `nix store diff-closures <before> <after>` (Nix 2.8 to current):
 * one line per package whose versions or size changed,
 *
 *   linux: 6.6.1 → 6.6.2, +58.6 KiB
 *   openssl: 3.0.1 → 1.1.1w, 3.0.2
 *   grows: +74.9 KiB
 *   added: ∅ → 0.5
 *
 * "∅" is "not in that closure", "ε" an empty version; sizes below 8 KiB are
 * not shown. Nix colours the size even when stdout is not a terminal, so
 * escape codes are stripped first. Recorded output: test/fixtures/diff-closures.
 */
import { stripVTControlCharacters } from "node:util";
import type { PackageChange } from "../protocol.js";

const SIZE_RE = /^([+-]\d+(?:\.\d+)?) (KiB|MiB|GiB)$/;
const UNIT = { KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 } as const;

function versions(text: string): string[] {
  const trimmed = text.trim();
  if (trimmed === "∅" || trimmed === "") return [];
  return trimmed.split(", ").map((v) => (v === "ε" ? "" : v));
}

function sizeBytes(text: string): number | undefined {
  const match = SIZE_RE.exec(text.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * UNIT[match[2] as keyof typeof UNIT]);
}

/** One package per line nix printed; lines that are not package lines are skipped. */
export function parseDiffClosures(output: string): PackageChange[] {
  const changes: PackageChange[] = [];
  for (const raw of stripVTControlCharacters(output).split("\n")) {
    const line = raw.trim();
    const colon = line.indexOf(": ");
    if (colon <= 0) continue;
    const name = line.slice(0, colon);
    let rest = line.slice(colon + 2);
    let sizeDeltaBytes = 0;
    // The size, when shown, is the last ", "-separated item (or the only one).
    const lastComma = rest.lastIndexOf(", ");
    const sizePart = lastComma === -1 ? rest : rest.slice(lastComma + 2);
    const size = sizeBytes(sizePart);
    if (size !== undefined) {
      sizeDeltaBytes = size;
      rest = lastComma === -1 ? "" : rest.slice(0, lastComma);
    }
    let before: string[] = [];
    let after: string[] = [];
    if (rest !== "") {
      const arrow = rest.indexOf(" → ");
      if (arrow === -1) continue;
      before = versions(rest.slice(0, arrow));
      after = versions(rest.slice(arrow + 3));
    } else if (size === undefined) {
      continue;
    }
    changes.push({ name, before, after, sizeDeltaBytes });
  }
  return changes;
}
