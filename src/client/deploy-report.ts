/**
 * How the deployer shows a deploy: on a terminal, a live line per host
 * (what it is doing and for how long) below the event lines; elsewhere
 * plain lines only (a host's progress at most every 30 s); with --json,
 * every message as one JSON line. Then a summary table, one row per host.
 * The same pieces as a build's report (painter, progress text, closure
 * changes, the table layout), and the fleet list of `deploy --list`.
 */
import { formatDuration } from "../util/duration.js";
import type { BuildResponse } from "../protocol.js";
import type { DeployResponse } from "../deploy-protocol.js";
import type { DeploySink, FleetRow, HostOutcome, HostPlan } from "./deploy.js";
import { changesCell, changesText, firstLine, progressText } from "../describe.js";
import { describeMessage, painter, tableWidth, type Output } from "./report.js";
import { formatTable, type Paint } from "./table.js";

export interface DeployReporter extends DeploySink {
  /** The summary table; stops live output. */
  finish(outcomes: readonly HostOutcome[]): void;
  close(): void;
}

type Colour = "green" | "red" | "yellow" | "dim";

const STATUS_COLOR: Record<string, Colour> = {
  success: "green",
  failure: "red",
  rolled_back: "yellow",
  rejected: "red",
  "not built": "red",
  "no answer": "yellow",
};

function storeName(path: string | null | undefined): string {
  return path ?? "";
}

export function describePlan(plan: HostPlan, tier: string): string {
  if (plan.toplevel !== undefined) return `${plan.host}: deploying the builder's ${storeName(plan.toplevel)} (${tier})`;
  if (plan.evaluatedBecause === "never_built") return `${plan.host}: the builder has never built it; evaluating on the host (${tier})`;
  return `${plan.host}: evaluating on the host (${tier})`;
}

export function describeDeployMessage(message: DeployResponse, paint: Paint = (_c, t) => t, allChanges = false): string[] {
  const host = message.host;
  switch (message.type) {
    case "accepted":
      return [`${host}: accepted: deploy ${message.deployId} (${message.action}${message.ref ? ` of ${message.ref}` : ""})`];
    case "rejected":
      return [
        `${host}: ${paint("red", "rejected")} (${message.code}): ${message.error}${message.runningDeployId ? ` (running: ${message.runningDeployId})` : ""}`,
      ];
    case "started":
      return [
        `${host}: started ${message.action}${message.toplevel ? ` of ${message.toplevel}` : ""} (${message.prebuilt ? "prebuilt: fetched from the cache, no evaluation" : "evaluating on the host"})`,
      ];
    case "progress":
      return [`${host}: ${message.phase}: ${progressText(message)}, ${formatDuration(message.elapsedMs)}`];
    case "activating":
      return [
        `${host}: activating (${message.action})${message.generation !== null ? `, generation ${message.generation}` : ""}${message.previous ? `, was ${message.previous}` : ""}`,
      ];
    case "health": {
      const failed = message.checks.filter((c) => !c.ok);
      if (message.ok) return [`${host}: healthy (${message.checks.length} check${message.checks.length === 1 ? "" : "s"} passed, NATS reached again)`];
      const lines = [`${host}: ${paint("red", "unhealthy")}${message.natsConfirmed ? "" : ": NATS not reached again in time"}`];
      for (const check of failed) lines.push(`    ${check.argv.join(" ")}: ${firstLine(check.error ?? `exit code ${check.exitCode ?? "?"}`)}`);
      return lines;
    }
    case "resumed":
      return [
        `${host}: the listener restarted and took deploy ${message.deployId} up again${message.activated ? " (the new system is running: checking health)" : " (the new system is not running: rolling back)"}`,
      ];
    case "heartbeat":
      // Only keeps the deployer's idle timeout from running out, as a build's does.
      return [];
    case "completed":
      return completedLines(message, paint, allChanges);
  }
}

function completedLines(message: Extract<DeployResponse, { type: "completed" }>, paint: Paint, allChanges: boolean): string[] {
  const status = paint(STATUS_COLOR[message.status] ?? "dim", message.status);
  const head = `${message.host}: ${status} in ${formatDuration(message.durationMs)}`;
  const reboot = message.rebootRequired ? `; ${paint("yellow", "reboot required")}` : "";
  if (message.status === "success") {
    const lines = [`${head} → ${storeName(message.toplevel)}${message.generation !== null ? ` (generation ${message.generation})` : ""}${reboot}`];
    const changes = changesText(message.changes, allChanges ? Number.MAX_SAFE_INTEGER : 2);
    if (changes) lines.push(`    ${changes}`);
    return lines;
  }
  const error = message.error;
  const lines = [`${head}${error ? `: ${error.code}: ${firstLine(error.message)}` : ""}${reboot}`];
  if (message.status === "rolled_back") lines.push(`    back on ${storeName(message.previous)}`);
  for (const line of (error?.cause ?? "").split("\n").filter((l) => l.trim().length > 0).slice(-20)) lines.push(paint("dim", `    │ ${line}`));
  return lines;
}

export function describeOutcome(outcome: HostOutcome, paint: Paint = (_c, t) => t): string[] {
  switch (outcome.kind) {
    case "not_built":
      return [`${outcome.host}: ${paint("red", "not deployed")}: ${outcome.error}`];
    case "no_answer":
      return [`${outcome.host}: ${paint("yellow", "no answer")}: ${outcome.error}`];
    default:
      return [];
  }
}

function outcomeStatus(outcome: HostOutcome): string {
  switch (outcome.kind) {
    case "completed":
      return outcome.message.status;
    case "rejected":
      return "rejected";
    case "not_built":
      return "not built";
    case "no_answer":
      return "no answer";
  }
}

function outcomeDetail(outcome: HostOutcome): string {
  switch (outcome.kind) {
    case "completed": {
      const m = outcome.message;
      if (m.status === "success") return storeName(m.toplevel);
      return m.error ? `${m.error.code}: ${firstLine(m.error.message)}` : "";
    }
    case "rejected":
      return `${outcome.message.code}: ${firstLine(outcome.message.error)}`;
    default:
      return firstLine(outcome.error);
  }
}

/** One row per host: status, action, duration, reboot, changes, the system or the error. */
export function deploySummaryTable(outcomes: readonly HostOutcome[], paint: Paint = (_c, t) => t, width?: number): string[] {
  if (outcomes.length === 0) return [];
  const rows = [...outcomes]
    .sort((a, b) => a.host.localeCompare(b.host))
    .map((o) => {
      const m = o.kind === "completed" ? o.message : undefined;
      return [
        o.host,
        outcomeStatus(o),
        m?.action ?? "",
        m ? formatDuration(m.durationMs) : "",
        m?.rebootRequired ? "yes" : m ? "no" : "",
        m?.status === "success" ? changesCell(m.changes) : "",
        outcomeDetail(o),
      ];
    });
  return formatTable(["HOST", "STATUS", "ACTION", "DURATION", "REBOOT", "CHANGES", "RESULT"], rows, {
    width,
    colour: { column: 1, paint, colourOf: (status) => STATUS_COLOR[status] ?? "dim" },
  });
}

/** `deploy --list`: one row per listener. */
export function fleetTable(rows: readonly FleetRow[], paint: Paint = (_c, t) => t, width?: number): string[] {
  const cells = rows.map((r) => [
    r.host,
    r.tier,
    r.roles.join(",") || "-",
    r.behind === null ? "never built" : r.behind ? "behind" : "up to date",
    r.rebootRequired ? "yes" : "no",
    r.busy ?? "-",
    storeName(r.current) || "?",
    r.booted === r.current ? "same" : storeName(r.booted) || "?",
    r.built === null ? "-" : r.built === r.current ? "same" : r.built,
  ]);
  const colourOf = (state: string): Colour | undefined => (state === "behind" ? "yellow" : state === "up to date" ? "green" : "dim");
  return formatTable(["HOST", "TIER", "ROLES", "STATE", "REBOOT", "BUSY", "RUNNING", "BOOTED", "BUILT"], cells, {
    width,
    colour: { column: 3, paint, colourOf },
  });
}

/** Build messages worth a line while deploying: the host results and the job's start and end. */
function buildLines(message: BuildResponse, paint: Paint): string[] {
  if (message.type === "progress" || message.type === "heartbeat" || message.type === "evaluating") return [];
  return describeMessage(message, paint).map((line) => `build: ${line}`);
}

class JsonDeployReporter implements DeployReporter {
  constructor(private readonly out: Output) {}
  private line(value: unknown): void {
    this.out.write(`${JSON.stringify(value)}\n`);
  }
  planned(plan: HostPlan, tier: string): void {
    this.line({ type: "plan", host: plan.host, tier, toplevel: plan.toplevel ?? null, prebuilt: plan.toplevel !== undefined, evaluatedBecause: plan.evaluatedBecause ?? null });
  }
  message(message: DeployResponse): void {
    this.line(message);
  }
  build(message: BuildResponse): void {
    this.line({ type: "build", message });
  }
  outcome(outcome: HostOutcome): void {
    if (outcome.kind === "not_built" || outcome.kind === "no_answer") this.line({ type: outcome.kind, host: outcome.host, error: outcome.error });
  }
  finish(): void {}
  close(): void {}
}

const PLAIN_PROGRESS_EVERY_MS = 30_000;

class PlainDeployReporter implements DeployReporter {
  private readonly lastProgressAt = new Map<string, number>();

  constructor(
    private readonly out: Output,
    private readonly paint: Paint,
    private readonly allChanges: boolean,
  ) {}

  private write(lines: string[]): void {
    for (const line of lines) this.out.write(`${line}\n`);
  }
  planned(plan: HostPlan, tier: string): void {
    this.write([describePlan(plan, tier)]);
  }
  message(message: DeployResponse): void {
    if (message.type === "started") this.lastProgressAt.set(message.host, Date.now());
    if (message.type === "progress") {
      if (Date.now() - (this.lastProgressAt.get(message.host) ?? 0) < PLAIN_PROGRESS_EVERY_MS) return;
      this.lastProgressAt.set(message.host, Date.now());
    }
    this.write(describeDeployMessage(message, this.paint, this.allChanges));
  }
  build(message: BuildResponse): void {
    this.write(buildLines(message, this.paint));
  }
  outcome(outcome: HostOutcome): void {
    this.write(describeOutcome(outcome, this.paint));
  }
  finish(outcomes: readonly HostOutcome[]): void {
    const table = deploySummaryTable(outcomes, this.paint);
    if (table.length > 0) this.out.write(`\n${table.join("\n")}\n`);
  }
  close(): void {}
}

/** A terminal: event lines scroll; below them one live line per host still deploying. */
class LiveDeployReporter implements DeployReporter {
  private readonly hosts = new Map<string, { since: number; state: string }>();
  private readonly ticker: NodeJS.Timeout;
  private shown = 0;

  constructor(
    private readonly out: Output,
    private readonly paint: Paint,
    private readonly allChanges: boolean,
  ) {
    this.ticker = setInterval(() => this.draw(), 1000);
    this.ticker.unref();
  }

  private set(host: string, state: string | undefined): void {
    if (state === undefined) this.hosts.delete(host);
    else this.hosts.set(host, { since: this.hosts.get(host)?.since ?? Date.now(), state });
  }

  private write(lines: string[]): void {
    this.clear();
    for (const line of lines) this.out.write(`${line}\n`);
    this.draw();
  }

  planned(plan: HostPlan, tier: string): void {
    this.set(plan.host, "waiting for the listener");
    this.write([describePlan(plan, tier)]);
  }

  message(message: DeployResponse): void {
    switch (message.type) {
      case "progress":
        this.set(message.host, `${message.phase}: ${progressText(message)}`);
        this.draw();
        return;
      case "heartbeat":
        return;
      case "accepted":
        this.set(message.host, "accepted");
        break;
      case "started":
        this.set(message.host, message.prebuilt ? "fetching from the cache" : "evaluating and building on the host");
        break;
      case "activating":
        this.set(message.host, `activating (${message.action})`);
        break;
      case "health":
        this.set(message.host, message.ok ? "healthy" : "unhealthy: rolling back");
        break;
      case "resumed":
        this.set(message.host, message.activated ? "checking health after the listener's restart" : "rolling back after the listener's restart");
        break;
      case "completed":
      case "rejected":
        this.set(message.host, undefined);
        break;
    }
    this.write(describeDeployMessage(message, this.paint, this.allChanges));
  }

  build(message: BuildResponse): void {
    if (message.type === "host_started") this.set(message.host, "building on the builder");
    if (message.type === "progress") {
      this.set(message.host, `building on the builder: ${progressText(message)}`);
      this.draw();
      return;
    }
    if (message.type === "host_finished") this.set(message.host, message.status === "success" ? "built" : undefined);
    const lines = buildLines(message, this.paint);
    if (lines.length > 0) this.write(lines);
  }

  outcome(outcome: HostOutcome): void {
    this.set(outcome.host, undefined);
    this.write(describeOutcome(outcome, this.paint));
  }

  /** The live lines' text. */
  liveLines(now = Date.now()): string[] {
    return [...this.hosts.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([host, { since, state }]) => `${host}: ${state} · ${formatDuration(now - since)}`);
  }

  finish(outcomes: readonly HostOutcome[]): void {
    this.close();
    const table = deploySummaryTable(outcomes, this.paint, tableWidth(this.out));
    if (table.length > 0) this.out.write(`\n${table.join("\n")}\n`);
  }

  close(): void {
    clearInterval(this.ticker);
    this.hosts.clear();
    this.clear();
  }

  private clear(): void {
    if (this.shown === 0) return;
    // Back over the live lines, clearing each.
    this.out.write(`\r\x1b[2K${"\x1b[1A\x1b[2K".repeat(this.shown - 1)}`);
    this.shown = 0;
  }

  private draw(): void {
    this.clear();
    const width = this.out.columns ?? 120;
    const lines = this.liveLines().map((line) => this.paint("bold", line.length > width - 1 ? `${line.slice(0, width - 2)}…` : line));
    if (lines.length === 0) return;
    this.out.write(lines.join("\n"));
    this.shown = lines.length;
  }
}

export function createDeployReporter(options: { json: boolean; out: Output; env?: NodeJS.ProcessEnv; allChanges?: boolean }): DeployReporter {
  if (options.json) return new JsonDeployReporter(options.out);
  const paint = painter(options.out, options.env);
  const allChanges = options.allChanges === true;
  return options.out.isTTY ? new LiveDeployReporter(options.out, paint, allChanges) : new PlainDeployReporter(options.out, paint, allChanges);
}
