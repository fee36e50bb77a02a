/**
 * How the build client shows a build to a person: one line per event and a
 * table at the end. Scripts use --json instead and get the raw messages.
 */
import { formatDuration } from "./duration.js";
import type { BuildResponse, Completed, FinalResponse, HostResult } from "./protocol.js";

export type Write = (line: string) => void;

function shortRev(revision: string | null): string {
  return revision ? revision.slice(0, 12) : "(unknown revision)";
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function positionText(position: number): string {
  return position === 0 ? "starting now" : `${plural(position, "job")} ahead`;
}

export function describeMessage(message: BuildResponse): string[] {
  switch (message.type) {
    case "accepted":
      return [
        `accepted: job ${message.jobId}, ${positionText(message.position)}${message.joined ? " (joined an identical queued request)" : ""}`,
      ];
    case "queued":
      return [`queued: ${positionText(message.position)}`];
    case "job_started":
      return [`started: ${message.repo} at ${shortRev(message.revision)}, ${plural(message.hosts.length, "host")}`];
    case "host_started":
      return [`[${message.index}/${message.total}] ${message.host}: building`];
    case "host_finished":
      return hostFinishedLines(message);
    case "completed":
      return [completedLine(message)];
    case "rejected":
      return [`rejected: ${message.error}`];
  }
}

function hostFinishedLines(message: Extract<BuildResponse, { type: "host_finished" }>): string[] {
  const head = `[${message.index}/${message.total}] ${message.host}: ${message.status} in ${formatDuration(message.durationMs)}`;
  if (message.status === "success") return [`${head} → ${message.storePath ?? ""}`];
  const lines = [`${head}: ${firstLine(message.error ?? "")}`];
  for (const line of message.logTail ?? []) lines.push(`    │ ${line}`);
  return lines;
}

function completedLine(message: Completed): string {
  const built = message.results.filter((r) => r.status === "success").length;
  const of = message.results.length > 0 ? `, ${built} of ${plural(message.results.length, "host")} built` : "";
  const error = message.error ? `: ${firstLine(message.error)}` : "";
  return `completed: ${message.status}${of}, ${shortRev(message.revision)}, in ${formatDuration(message.durationMs)}${error}`;
}

function firstLine(text: string): string {
  const line = text.split("\n")[0] ?? "";
  return line.length > 160 ? `${line.slice(0, 160)}…` : line;
}

function resultDetail(result: HostResult): string {
  if (result.status === "success") return result.storePath ?? "";
  return firstLine(result.error ?? "");
}

/** A fixed-width table of per-host results. */
export function summaryTable(final: FinalResponse): string[] {
  if (final.type !== "completed" || final.results.length === 0) return [];
  const rows = final.results.map((r) => [r.host, r.status, formatDuration(r.durationMs), resultDetail(r)]);
  const header = ["HOST", "STATUS", "DURATION", "RESULT"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
  const format = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] as number)))
      .join("  ")
      .trimEnd();
  return [format(header), ...rows.map(format)];
}
