/**
 * How the client shows a build: on a terminal, a live line for the host
 * being built (derivations N/M, phase, elapsed) above plain event lines;
 * otherwise plain lines only (progress at most every 30 s, for journald
 * and CI logs); with --json, every message as one JSON line. Colour only on
 * a terminal and never when NO_COLOR is set.
 */
import { formatDuration } from "../util/duration.js";
import { formatSize } from "../util/size.js";
import { formatTable, type Paint } from "./table.js";
import type {
  BuildResponse,
  CancelResponse,
  Changes,
  HistoryResponse,
  PackageChange,
  Completed,
  DiscoverResponse,
  EvaluationCounts,
  FinalResponse,
  HostResult,
  HostStatus,
  Progress,
  StatusResponse,
} from "../protocol.js";
import {
  changesCell,
  changesText,
  evaluationText,
  firstLine,
  packageText,
  plural,
  progressText,
  shortRev,
  signedBytes,
  timeLeftText,
} from "../describe.js";

export interface Reporter {
  message(message: BuildResponse): void;
  /** No builder is listening (yet): the request is asked again until `until` (epoch ms). */
  waiting(reason: string, until: number): void;
  /** Prints the summary and stops any live output. */
  finish(final: FinalResponse): void;
  /** Stops live output without a summary (e.g. on an error). */
  close(): void;
}

export interface Output {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}


/**
 * Five SGR codes, by hand. When to colour (a terminal, no NO_COLOR, not
 * TERM=dumb) is decided here either way; Node's util.styleText is not in
 * Node 20.9 (engines; it came in 20.12), and picocolors would change what
 * is written (each colour closed with its own reset, 39 or 22, instead of
 * 0) for no gain in five colours that are never nested.
 */
const CODES = { green: 32, red: 31, yellow: 33, dim: 2, bold: 1 } as const;

export function painter(out: Output, env: NodeJS.ProcessEnv = process.env): Paint {
  const colour = out.isTTY === true && env["NO_COLOR"] === undefined && env["TERM"] !== "dumb";
  return (color, text) => (colour ? `\x1b[${CODES[color]}m${text}\x1b[0m` : text);
}

const STATUS_COLOR: Record<HostStatus, "green" | "red" | "yellow"> = {
  success: "green",
  failure: "red",
  eval_error: "red",
  timeout: "yellow",
  cancelled: "yellow",
};

function positionText(position: number): string {
  return position === 0 ? "starting now" : `${plural(position, "job")} ahead`;
}

export interface DescribeOptions {
  /** Every changed package of a host, not just the first few. */
  allChanges?: boolean;
}

export function describeMessage(message: BuildResponse, paint: Paint = (_c, t) => t, options: DescribeOptions = {}): string[] {
  switch (message.type) {
    case "accepted":
      return [`accepted: job ${message.jobId}, ${positionText(message.position)}${message.joined ? " (joined an identical queued request)" : ""}`];
    case "queued":
      return [`queued: ${positionText(message.position)}`];
    case "job_started":
      return [
        `started: ${message.repo} at ${shortRev(message.revision)}, ${plural(message.hosts.length, "host")}${typeof message.expectedMs === "number" ? `, usually ${formatDuration(message.expectedMs)}` : ""}`,
      ];
    case "evaluating":
      return [`evaluating: ${evaluationText(message)}`];
    case "host_started":
      return [`[${message.index}/${message.total}] ${message.host}: building${typeof message.expectedMs === "number" ? ` (usually ${formatDuration(message.expectedMs)})` : ""}`];
    case "progress":
      return [
        `[${message.index}/${message.total}] ${message.host}: ${progressText(message)}, ${formatDuration(message.elapsedMs)}${
          timeLeftText(message.expectedMs, message.elapsedMs) ? ` (${timeLeftText(message.expectedMs, message.elapsedMs)})` : ""
        }`,
      ];
    case "heartbeat":
      return [];
    case "host_finished":
      return hostFinishedLines(message, paint, options);
    case "interrupted":
      return [`${paint("yellow", "interrupted")}: ${message.reason}; waiting for it`];
    case "resumed":
      return [`resumed: the builder is back and took up job ${message.jobId} again${message.position > 0 ? `, ${positionText(message.position)}` : ""}`];
    case "completed":
      return [completedLine(message, paint)];
    case "rejected":
      return [`${paint("red", "rejected")}: ${message.error}`];
  }
}

function hostFinishedLines(message: Extract<BuildResponse, { type: "host_finished" }>, paint: Paint, options: DescribeOptions): string[] {
  const status = paint(STATUS_COLOR[message.status], message.status);
  const head = `[${message.index}/${message.total}] ${message.host}: ${status} in ${formatDuration(message.durationMs)}`;
  if (message.status === "success") {
    const lines = [`${head} → ${message.storePath ?? ""}`];
    if (message.copy && !message.copy.ok) lines.push(paint("yellow", `    warning: not in the shared cache: ${firstLine(message.copy.error ?? "")}`));
    if (message.gcRoot === false) lines.push(paint("yellow", "    warning: not registered as a GC root (see the builder's log); garbage collection may delete it"));
    const changes = changesText(message.changes);
    if (changes) {
      const against = message.changes?.againstRevision ? ` since ${shortRev(message.changes.againstRevision)}` : "";
      lines.push(`    ${changes}${against}`);
      if (options.allChanges && message.changes) {
        for (const p of message.changes.packages) lines.push(`      ${packageText(p)}`);
        if (message.changes.omittedPackages) lines.push(`      … and ${plural(message.changes.omittedPackages, "more package")} (the builder sends at most ${message.changes.packages.length})`);
      }
    }
    return lines;
  }
  if (message.status === "eval_error") {
    const where = message.location ? ` (${message.location.file}${message.location.line ? `:${message.location.line}` : ""})` : "";
    const [first = "", ...rest] = (message.error ?? "").split("\n");
    return [`${head}${where}: ${first}`, ...rest.filter((l) => l.trim().length > 0).map((l) => `    ${l}`)];
  }
  const lines = [`${head}: ${firstLine(message.error ?? "")}`];
  for (const line of message.logTail ?? []) lines.push(paint("dim", `    │ ${line}`));
  return lines;
}

function completedLine(message: Completed, paint: Paint): string {
  const built = message.results.filter((r) => r.status === "success").length;
  const of = message.results.length > 0 ? `, ${built} of ${plural(message.results.length, "host")} built` : "";
  const loc = message.location;
  const where = loc ? ` (at ${loc.file}${loc.line ? `:${loc.line}${loc.column ? `:${loc.column}` : ""}` : ""})` : "";
  const error = message.error ? `: ${firstLine(message.error)}${where}` : "";
  const status = paint(message.status === "success" ? "green" : message.status === "failure" ? "red" : "yellow", message.status);
  return `completed: ${status}${of}, ${shortRev(message.revision)}, in ${formatDuration(message.durationMs)}${error}`;
}

function resultDetail(result: HostResult): string {
  if (result.status === "success") return result.storePath ?? "";
  return firstLine(result.error ?? "");
}

/**
 * A fixed-width table of per-host results. With `width` (a terminal),
 * each line is cut to it instead of wrapping.
 */
export function summaryTable(final: FinalResponse, paint: Paint = (_c, t) => t, width?: number): string[] {
  if (final.type !== "completed" || final.results.length === 0) return [];
  const rows = final.results.map((r) => [r.host, r.status, formatDuration(r.durationMs), r.status === "success" ? changesCell(r.changes) : "", resultDetail(r)]);
  return formatTable(["HOST", "STATUS", "DURATION", "CHANGES", "RESULT"], rows, {
    width,
    colour: { column: 1, paint, colourOf: (status) => STATUS_COLOR[status as HostStatus] ?? "dim" },
  });
}

/** The terminal width a table is cut to, on a terminal only. */
export function tableWidth(out: Output): number | undefined {
  return out.isTTY ? (out.columns ?? 120) : undefined;
}

class JsonReporter implements Reporter {
  constructor(private readonly out: Output) {}
  message(message: BuildResponse): void {
    this.out.write(`${JSON.stringify(message)}\n`);
  }
  /** Only the builder's messages go to stdout; the wait is logged on stderr. */
  waiting(): void {}
  finish(): void {}
  close(): void {}
}

/** "waiting for a builder: no builder is listening on …; asking again for up to 30s". */
function waitingLine(reason: string, until: number): string {
  return `waiting for a builder: ${reason.replace(/; is the builder running\?$/, "")}; asking again for up to ${formatDuration(Math.max(0, until - Date.now()))}`;
}

const PLAIN_PROGRESS_EVERY_MS = 30_000;

/** Lines only; progress at most every 30 s per host. */
class PlainReporter implements Reporter {
  private lastProgressAt = 0;
  private lastEvaluatingAt = 0;
  private saidWaiting = false;

  constructor(
    private readonly out: Output,
    private readonly paint: Paint,
    private readonly describe: DescribeOptions,
  ) {}

  message(message: BuildResponse): void {
    if (message.type === "host_started") this.lastProgressAt = Date.now();
    if (message.type === "progress") {
      if (Date.now() - this.lastProgressAt < PLAIN_PROGRESS_EVERY_MS) return;
      this.lastProgressAt = Date.now();
    }
    // The first and the last, and in between at most every 30 s: one line per host would drown the builds.
    if (message.type === "evaluating") {
      const edge = message.evaluated === 0 || message.evaluated === message.total;
      if (!edge && Date.now() - this.lastEvaluatingAt < PLAIN_PROGRESS_EVERY_MS) return;
      this.lastEvaluatingAt = Date.now();
    }
    for (const line of describeMessage(message, this.paint, this.describe)) this.out.write(`${line}\n`);
  }

  /** Said once: a log line per retry would say nothing new. */
  waiting(reason: string, until: number): void {
    if (this.saidWaiting) return;
    this.saidWaiting = true;
    this.out.write(`${waitingLine(reason, until)}\n`);
  }

  finish(final: FinalResponse): void {
    const table = summaryTable(final, this.paint);
    if (table.length > 0) this.out.write(`\n${table.join("\n")}\n`);
  }

  close(): void {}
}

/** A terminal: event lines scroll, one live line shows the host being built. */
class LiveReporter implements Reporter {
  private current: { index: number; total: number; host: string; startedAt: number; expectedMs: number | null; progress?: Progress } | undefined;
  /** `all`: evaluation counts while hosts are still being evaluated, and since when. */
  private evaluation: { counts: EvaluationCounts; since: number } | undefined;
  /** Since when the builder has been restarting (between `interrupted` and `resumed`). */
  private restartingSince: number | undefined;
  /** Since when no builder has been listening (before the first answer). */
  private waitingSince: number | undefined;
  private readonly ticker: NodeJS.Timeout;
  private shown = false;

  constructor(
    private readonly out: Output,
    private readonly paint: Paint,
    private readonly describe: DescribeOptions,
  ) {
    // Elapsed time moves even when nix reports nothing new.
    this.ticker = setInterval(() => this.draw(), 1000);
    this.ticker.unref();
  }

  message(message: BuildResponse): void {
    this.waitingSince = undefined;
    switch (message.type) {
      case "host_started":
        this.current = { index: message.index, total: message.total, host: message.host, startedAt: Date.now(), expectedMs: message.expectedMs ?? null };
        this.draw();
        return;
      case "progress":
        if (this.current?.host === message.host) this.current.progress = message;
        this.draw();
        return;
      case "evaluating":
        this.evaluation = message.evaluated < message.total ? { counts: message, since: this.evaluation?.since ?? Date.now() } : undefined;
        this.draw();
        return;
      case "heartbeat":
        return;
      case "host_finished":
        this.current = undefined;
        break;
      case "interrupted":
        this.restartingSince = Date.now();
        break;
      case "resumed":
        this.restartingSince = undefined;
        this.current = undefined;
        break;
    }
    this.clear();
    for (const line of describeMessage(message, this.paint, this.describe)) this.out.write(`${line}\n`);
    this.draw();
  }

  /** The live line's text, or undefined when there is nothing to show. */
  liveText(now = Date.now()): string | undefined {
    const current = this.current;
    const evaluating = this.evaluation ? evaluationText(this.evaluation.counts) : undefined;
    if (!current) return this.evaluation && evaluating ? `evaluating: ${evaluating} · ${formatDuration(now - this.evaluation.since)}` : undefined;
    const elapsedMs = now - current.startedAt;
    const left = timeLeftText(current.expectedMs, elapsedMs);
    const elapsed = `${formatDuration(elapsedMs)}${left ? `, ${left}` : ""}`;
    const detail = current.progress ? progressText(current.progress) : "evaluating";
    return `[${current.index}/${current.total}] ${current.host}: ${detail} · ${elapsed}${evaluating ? ` · ${evaluating}` : ""}`;
  }

  waiting(): void {
    this.waitingSince ??= Date.now();
    this.draw();
  }

  finish(final: FinalResponse): void {
    this.close();
    const table = summaryTable(final, this.paint, tableWidth(this.out));
    if (table.length > 0) this.out.write(`\n${table.join("\n")}\n`);
  }

  close(): void {
    clearInterval(this.ticker);
    this.current = undefined;
    this.evaluation = undefined;
    this.waitingSince = undefined;
    this.clear();
  }

  private clear(): void {
    if (this.shown) this.out.write("\r\x1b[2K");
    this.shown = false;
  }

  private draw(): void {
    let line: string | undefined;
    if (this.restartingSince !== undefined) {
      const current = this.current;
      const where = current ? `[${current.index}/${current.total}] ${current.host}: ` : "";
      line = `${where}the builder is restarting; the job is saved and resumes when it is back · ${formatDuration(Date.now() - this.restartingSince)}`;
    } else if (this.waitingSince !== undefined) {
      line = `waiting for a builder… · ${formatDuration(Date.now() - this.waitingSince)}`;
    } else line = this.liveText();
    if (line === undefined) return;
    const width = this.out.columns ?? 120;
    if (line.length > width - 1) line = `${line.slice(0, width - 2)}…`;
    this.out.write(`\r\x1b[2K${this.paint("bold", line)}`);
    this.shown = true;
  }
}

export function createReporter(options: { json: boolean; out: Output; env?: NodeJS.ProcessEnv; allChanges?: boolean }): Reporter {
  if (options.json) return new JsonReporter(options.out);
  const paint = painter(options.out, options.env);
  const describe = { allChanges: options.allChanges === true };
  return options.out.isTTY ? new LiveReporter(options.out, paint, describe) : new PlainReporter(options.out, paint, describe);
}

export function describeDiscover(discover: DiscoverResponse, repo?: string): string[] {
  const lines: string[] = [];
  for (const info of discover.repos) {
    if (repo !== undefined && info.name !== repo) continue;
    const at = info.revision ? ` at ${shortRev(info.revision)}` : "";
    const note = info.loading ? " — still fetching (ask again)" : info.error ? ` — ${info.error}` : "";
    lines.push(`${info.name} (${info.url})${at}: ${plural(info.hosts.length, "host")}${note}`);
    for (const host of info.hosts) lines.push(`  ${host}`);
  }
  return lines;
}

export function describeStatus(status: StatusResponse, now = Date.now()): string[] {
  const lines = [`builder ${status.builder} (homelab-deploy ${status.version})`];
  const running = status.running;
  if (!running) lines.push("running: nothing");
  else {
    const ref = running.ref ? ` --ref ${running.ref}` : "";
    const since = formatDuration(now - Date.parse(running.startedAt));
    lines.push(`running: job ${running.jobId} ${running.repo} ${running.target}${ref}, started ${since} ago`);
    if (running.currentHost) {
      const hostSince = running.hostStartedAt ? formatDuration(now - Date.parse(running.hostStartedAt)) : "?";
      const progress = running.progress ? `: ${progressText(running.progress)}` : "";
      const left = running.hostStartedAt ? timeLeftText(running.expectedMs, now - Date.parse(running.hostStartedAt)) : undefined;
      lines.push(`  [${running.hostIndex}/${running.totalHosts}] ${running.currentHost} for ${hostSince}${left ? ` (${left})` : ""}${progress}`);
    } else if (!running.evaluation) lines.push("  fetching the flake and listing its hosts");
    if (running.evaluation) lines.push(`  ${evaluationText(running.evaluation)}`);
  }
  if (status.queued.length === 0) lines.push("queued: nothing");
  else {
    lines.push(`queued: ${plural(status.queued.length, "job")}`);
    for (const job of status.queued) {
      const ref = job.ref ? ` --ref ${job.ref}` : "";
      lines.push(`  ${job.position}. job ${job.jobId} ${job.repo} ${job.target}${ref} (${plural(job.requesters, "requester")})`);
    }
  }
  return lines;
}

export function describeCancel(answer: CancelResponse): string {
  const what = answer.outcome === "removed" ? "removed from the queue" : "stopping: its nix process tree is being killed";
  return `job ${answer.jobId}: ${what}`;
}

/** The builder's history as a table, newest first. */
export function describeHistory(history: HistoryResponse, now = Date.now()): string[] {
  const what = history.host ? `${history.repo} ${history.host}` : history.repo;
  if (history.entries.length === 0) return [`no builds of ${what} recorded yet`];
  const rows = history.entries.map((e) => [
    e.host,
    e.status,
    formatDuration(e.durationMs),
    e.revision ? e.revision.slice(0, 12) : "-",
    e.ref ?? "-",
    `${formatDuration(Math.max(0, now - Date.parse(e.finishedAt)))} ago`,
    e.status === "success" ? (e.storePath ?? "") : firstLine(e.error ?? ""),
  ]);
  return formatTable(["HOST", "STATUS", "DURATION", "REVISION", "REF", "FINISHED", "RESULT"], rows);
}
