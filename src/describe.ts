/**
 * How protocol values read as text: closure changes, nix progress, time
 * left, sizes. One wording for every place that shows them: the client's
 * terminal report and MCP answers (src/client) and the status page
 * (src/observability).
 */
import { formatDuration } from "./util/duration.js";
import { formatSize } from "./util/size.js";
import type { Changes, EvaluationCounts, PackageChange, Progress } from "./protocol.js";

export function shortRev(revision: string | null): string {
  return revision ? revision.slice(0, 12) : "(unknown revision)";
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function firstLine(text: string): string {
  const line = text.split("\n")[0] ?? "";
  return line.length > 160 ? `${line.slice(0, 160)}…` : line;
}

/** "+1.2 MiB", "-340 KiB". */
export function signedBytes(n: number): string {
  return `${n < 0 ? "-" : "+"}${formatSize(Math.abs(n), "display")}`;
}

export function versionsText(versions: string[]): string {
  return versions.length === 0 ? "∅" : versions.map((v) => v || "ε").join(", ");
}

/** "linux 6.6.1 → 6.6.2", "grows +74 KiB". */
export function packageText(p: PackageChange): string {
  const versions = p.before.length === 0 && p.after.length === 0 ? "" : ` ${versionsText(p.before)} → ${versionsText(p.after)}`;
  const size = p.sizeDeltaBytes !== 0 ? `${versions ? "," : ""} ${signedBytes(p.sizeDeltaBytes)}` : "";
  return `${p.name}${versions}${size}`;
}

export function changedCount(changes: Changes): number {
  return changes.packages.length + (changes.omittedPackages ?? 0);
}

/** "3 packages changed (linux 6.6.1 → 6.6.2, …), +1.2 MiB", or undefined when there is nothing to compare with. */
export function changesText(changes: Changes | null | undefined, shown = 2): string | undefined {
  if (!changes) return undefined;
  const count = changedCount(changes);
  const size = changes.sizeDeltaBytes !== 0 ? `, ${signedBytes(changes.sizeDeltaBytes)}` : "";
  if (count === 0) return `no package changes${size}`;
  const names = changes.packages.slice(0, shown).map(packageText);
  const more = count > names.length ? ", …" : "";
  return `${plural(count, "package")} changed (${names.join(", ")}${more})${size}`;
}

/** The CHANGES cell: "3 packages, +1.2 MiB", "none", "-" without a comparison. */
export function changesCell(changes: Changes | null | undefined): string {
  if (!changes) return "-";
  const count = changedCount(changes);
  const size = changes.sizeDeltaBytes !== 0 ? `, ${signedBytes(changes.sizeDeltaBytes)}` : "";
  return count === 0 ? `none${size}` : `${plural(count, "package")}${size}`;
}

/** "~16s left", "~4s over" — from the expected duration and the time so far. */
export function timeLeftText(expectedMs: number | null | undefined, elapsedMs: number): string | undefined {
  if (expectedMs === null || expectedMs === undefined) return undefined;
  const left = expectedMs - elapsedMs;
  return left >= 0 ? `~${formatDuration(left)} left` : `${formatDuration(-left)} over the usual ${formatDuration(expectedMs)}`;
}

/** "12/48 derivations, 3/10 paths, 12.0 MiB, building foo (buildPhase)". */
export function progressText(progress: Pick<Progress, "derivations" | "substitutions" | "downloadedBytes" | "building">): string {
  const parts = [`${progress.derivations.done}/${progress.derivations.expected} derivations`];
  if (progress.derivations.failed > 0) parts.push(`${progress.derivations.failed} failed`);
  if (progress.substitutions.expected > 0) parts.push(`${progress.substitutions.done}/${progress.substitutions.expected} paths substituted`);
  if (progress.downloadedBytes > 0) parts.push(`${formatSize(progress.downloadedBytes, "display")} downloaded`);
  if (progress.building) {
    const { drv, phase, machine } = progress.building;
    parts.push(`building ${drv}${machine ? ` on ${machine}` : ""}${phase ? ` (${phase})` : ""}`);
  }
  return parts.join(", ");
}

/** "5/12 hosts evaluated, 1 failed". */
export function evaluationText(counts: EvaluationCounts): string {
  return `${counts.evaluated}/${counts.total} hosts evaluated${counts.failed > 0 ? `, ${counts.failed} failed` : ""}`;
}
