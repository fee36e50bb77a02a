/**
 * The `build` tool's answer: per-host status and duration, store paths,
 * failure log tails cut to what an assistant can usefully read, and eval
 * errors with nix's location — as structured content (BuildToolOutputSchema)
 * and as the text the CLI would print.
 */
import { z } from "zod";
import { boundedLogTail } from "../util/log-tail.js";
import {
  HostResultSchema,
  RejectCodeSchema,
  type Completed,
  type FinalResponse,
  type HostFinished,
  type HostResult,
  type Rejected,
} from "../protocol.js";
import { describeMessage, summaryTable } from "../client/report.js";
import { changesText, packageText } from "../describe.js";
import type { BuildTarget } from "../client/client.js";

/**
 * The builder sends up to build.logTailLines (50) lines of 2000 characters;
 * an assistant needs the end of it: 40 lines of at most 400 characters
 * (about 4k tokens at most).
 */
export const MCP_TAIL_LINES = 40;
export const MCP_TAIL_LINE_CHARS = 400;
/** An eval error carries nix's whole message and code frame; a long trace is cut. */
export const MCP_ERROR_CHARS = 4_000;

export const BuildToolOutputSchema = z.object({
  outcome: z.enum(["success", "failure", "cancelled", "rejected"]).describe("success: every host built; rejected: the builder refused the request and built nothing"),
  repo: z.string(),
  target: z.string(),
  ref: z.string().nullable(),
  jobId: z.string().nullable().describe("the builder's job id (for build_status and cancel_build); null when rejected"),
  revision: z.string().nullable().describe("the git revision every host was built from"),
  durationMs: z.number().int().nonnegative().nullable(),
  hosts: z.array(HostResultSchema).describe("one entry per host: status, duration, storePath and changes (packages changed since the last good default-branch build) on success, error (and location for eval_error) and the last lines of the nix log on failure"),
  error: z.string().optional().describe("why the job as a whole failed, or why it was rejected"),
  rejection: z
    .object({ code: RejectCodeSchema, known: z.array(z.string()).optional().describe("the names that would have worked") })
    .optional(),
});
export type BuildToolOutput = z.infer<typeof BuildToolOutputSchema>;

export interface BuildToolResult {
  output: BuildToolOutput;
  lines: string[];
}

/** `finished`: the host_finished messages seen, by host: only they carry the log tails. */
export function buildToolResult(request: BuildTarget, final: FinalResponse, finished: ReadonlyMap<string, HostFinished>): BuildToolResult {
  return final.type === "rejected" ? rejectedResult(request, final) : completedResult(final, finished);
}

function rejectedResult(request: BuildTarget, final: Rejected): BuildToolResult {
  return {
    output: {
      outcome: "rejected",
      repo: request.repo,
      target: request.target,
      ref: request.ref ?? null,
      jobId: null,
      revision: null,
      durationMs: null,
      hosts: [],
      error: final.error,
      rejection: { code: final.code, ...(final.known ? { known: final.known } : {}) },
    },
    lines: describeMessage(final),
  };
}

function completedResult(final: Completed, finished: ReadonlyMap<string, HostFinished>): BuildToolResult {
  const hosts = final.results.map((result) => trimResult(result, finished.get(result.host)?.logTail));
  const output: BuildToolOutput = {
    outcome: final.status,
    repo: final.repo,
    target: final.target,
    ref: final.ref,
    jobId: final.jobId,
    revision: final.revision,
    durationMs: final.durationMs,
    hosts,
    ...(final.error !== undefined ? { error: trimText(final.error) } : {}),
  };
  return { output, lines: completedLines({ ...final, results: hosts }) };
}

function trimResult(result: HostResult, logTail: readonly string[] | undefined): HostResult {
  const trimmed: HostResult = { ...result };
  if (result.error !== undefined) trimmed.error = trimText(result.error);
  const tail = logTail ?? result.logTail;
  if (tail && tail.length > 0) trimmed.logTail = boundedLogTail(tail.slice(-MCP_TAIL_LINES), MCP_TAIL_LINE_CHARS, Infinity);
  return trimmed;
}

function trimText(text: string): string {
  return text.length > MCP_ERROR_CHARS ? `${text.slice(0, MCP_ERROR_CHARS)}… (${text.length - MCP_ERROR_CHARS} more characters)` : text;
}

/** The summary line, the per-host table, each host's closure changes, then what went wrong on each host that did not build. */
function completedLines(final: Completed): string[] {
  const table = summaryTable(final);
  const lines = [...describeMessage(final), ...(table.length > 0 ? ["", ...table] : [])];
  for (const result of final.results) {
    const changes = changesText(result.changes);
    if (!changes || !result.changes) continue;
    const since = result.changes.againstRevision ? ` since ${result.changes.againstRevision.slice(0, 12)}` : "";
    lines.push("", `${result.host}: ${changes}${since}`, ...result.changes.packages.map((p) => `  ${packageText(p)}`));
    if (result.changes.omittedPackages) lines.push(`  … and ${result.changes.omittedPackages} more`);
  }
  final.results.forEach((result, i) => {
    if (result.status === "success") return;
    const asMessage: HostFinished = { type: "host_finished", jobId: final.jobId, index: i + 1, total: final.results.length, ...result };
    lines.push("", ...describeMessage(asMessage));
  });
  return lines;
}
