/**
 * nix's `--log-format internal-json` stream: one `@nix {json}` line per
 * event, on stderr. Type numbers are from nix's src/libutil/logging.hh
 * (the same in Nix 2.8 and current Nix); unknown actions, types and extra
 * fields are tolerated and ignored. A Build activity's fields are
 * [drvPath, machineName, curRound, nrRounds]: machineName is "" for a
 * local build and the store URL of the remote builder otherwise.
 * Fixtures recorded from Nix 2.8 live in test/fixtures/nix-log/.
 */
import { stripVTControlCharacters } from "node:util";
import { z } from "zod";
import { RingBuffer } from "../util/ring-buffer.js";

export const ActivityType = {
  Unknown: 0,
  CopyPath: 100,
  FileTransfer: 101,
  Realise: 102,
  CopyPaths: 103,
  Builds: 104,
  Build: 105,
  OptimiseStore: 106,
  VerifyPaths: 107,
  Substitute: 108,
  QueryPathInfo: 109,
  PostBuildHook: 110,
  BuildWaiting: 111,
} as const;

/** Note 105 is Build as an activity type but Progress as a result type. */
export const ResultType = {
  FileLinked: 100,
  BuildLogLine: 101,
  UntrustedPath: 102,
  CorruptedPath: 103,
  SetPhase: 104,
  Progress: 105,
  SetExpected: 106,
  PostBuildLogLine: 107,
} as const;

/** nix verbosity levels: 0 error, 1 warn, 2 notice, 3 info, 4 talkative, 5 chatty, 6 debug, 7 vomit. */
export const Verbosity = { Error: 0, Warn: 1, Notice: 2, Info: 3 } as const;

const Field = z.union([z.string(), z.number(), z.null(), z.boolean()]);

const StartSchema = z.looseObject({
  action: z.literal("start"),
  id: z.number(),
  type: z.number(),
  level: z.number().optional(),
  text: z.string().optional(),
  parent: z.number().optional(),
  fields: z.array(Field).optional(),
});
const StopSchema = z.looseObject({ action: z.literal("stop"), id: z.number() });
const ResultSchema = z.looseObject({
  action: z.literal("result"),
  id: z.number(),
  type: z.number(),
  fields: z.array(Field).default([]),
});
const MsgSchema = z.looseObject({
  action: z.literal("msg"),
  level: z.number(),
  msg: z.string(),
  raw_msg: z.string().optional(),
  file: z.string().nullable().optional(),
  line: z.number().nullable().optional(),
  column: z.number().nullable().optional(),
});

export const NixEventSchema = z.discriminatedUnion("action", [StartSchema, StopSchema, ResultSchema, MsgSchema]);
export type NixEvent = z.infer<typeof NixEventSchema>;
export type NixLine = NixEvent | { action: "plain"; text: string } | { action: "ignored" };

const PREFIX = "@nix ";
/** Advice nix prints at error level after the real error. */
const HINT = /^\(use '--show-trace'/;
/**
 * Lines nix's helpers (git, above all) and nix's own last-resort handlers
 * (e.g. "error: stack overflow") write to stderr directly, past the JSON
 * logger. A `warning:` line is never an error: on a machine without the
 * nixbld group every nix call warns about it, and that said nothing about
 * why a fetch failed.
 */
const PLAIN_ERROR = /^(?:error|fatal):\s/;
/** nix's error when a git it ran failed; git's own stderr says why. */
const HELPER_FAILED = /^(?:error:\s*)?program '(?:git|hg|ssh)' failed with exit code \d+/;
/** nix-store --realise's advice about GC roots: the builder keeps none on purpose (like nix build --no-link). */
const NOISE = /you did not specify '--add-root'/;

/** One stderr line from nix, classified. Never throws. */
export function parseNixLine(line: string): NixLine {
  if (!line.startsWith(PREFIX)) return { action: "plain", text: stripVTControlCharacters(line) };
  let json: unknown;
  try {
    json = JSON.parse(line.slice(PREFIX.length));
  } catch {
    return { action: "plain", text: stripVTControlCharacters(line) };
  }
  const parsed = NixEventSchema.safeParse(json);
  return parsed.success ? parsed.data : { action: "ignored" };
}

/**
 * A build's log line as nix writes it (nlohmann::json orders keys by name,
 * in Nix 2.8 as in current Nix): `@nix {"action":"result","fields":[…],
 * "id":N,"type":101}` (107 after a post-build hook). A build that prints a
 * lot sends little else, and only the last few lines are ever shown, so
 * these lines skip JSON.parse and the schema: the fields' JSON is kept as
 * it is and decoded when the tail is read (about 0.2 µs a line instead of
 * 2.2 µs, docs/performance.md "Accept latency"). Anything else takes the
 * full parse.
 */
const LOG_LINE_START = '@nix {"action":"result","fields":[';
const LOG_LINE_ID = '],"id":';
const LOG_LINE_END = [',"type":101}', ',"type":107}'] as const;

/** A log line kept undecoded: its derivation's name, and `fields` as nix wrote it (a JSON array). */
interface RawLogLine {
  drv: string | undefined;
  fields: string;
}

/** The `id` and fields' JSON of a build log line, or undefined for any other line. */
function rawLogLine(line: string): { id: number; fields: string } | undefined {
  if (!line.startsWith(LOG_LINE_START) || !(line.endsWith(LOG_LINE_END[0]) || line.endsWith(LOG_LINE_END[1]))) return undefined;
  const idAt = line.lastIndexOf(LOG_LINE_ID);
  if (idAt < LOG_LINE_START.length - 1) return undefined;
  const digits = line.slice(idAt + LOG_LINE_ID.length, line.length - LOG_LINE_END[0].length);
  if (!/^\d{1,16}$/.test(digits)) return undefined;
  return { id: Number(digits), fields: line.slice(LOG_LINE_START.length - 1, idAt + 1) };
}

function decodeLogLine(raw: RawLogLine): string {
  let text = "";
  try {
    const fields = JSON.parse(raw.fields) as unknown;
    if (Array.isArray(fields) && typeof fields[0] === "string") text = stripVTControlCharacters(fields[0]);
  } catch {
    // Not what nix writes; shown as it came rather than dropped.
    text = stripVTControlCharacters(raw.fields);
  }
  return raw.drv ? `${raw.drv}> ${text}` : text;
}

export interface Counts {
  done: number;
  expected: number;
  running: number;
  failed: number;
}

export interface NixProgress {
  derivations: Counts;
  substitutions: Counts;
  downloadedBytes: number;
  expectedDownloadBytes: number;
  /**
   * The derivation being built now (name without hash), its phase when nix
   * reports one, and the remote builder (`builders` / nix.buildMachines)
   * building it, if not this machine.
   */
  building: { drv: string; phase: string | null; machine?: string } | null;
}

export interface NixError {
  message: string;
  file?: string;
  line?: number;
  column?: number;
}

interface Activity {
  type: number;
  name: string;
  phase: string | null;
  machine?: string;
}

/** A remote builder's store URL without its ?settings (key files, remote-program): what an operator recognises. */
function machineName(url: string): string {
  const plain = stripVTControlCharacters(url);
  const query = plain.indexOf("?");
  return query === -1 ? plain : plain.slice(0, query);
}

function buildingOf(activity: Activity): NonNullable<NixProgress["building"]> {
  return { drv: activity.name, phase: activity.phase, ...(activity.machine ? { machine: activity.machine } : {}) };
}

const zero = (): Counts => ({ done: 0, expected: 0, running: 0, failed: 0 });

/** "/nix/store/abc…-hello-2.12.drv" → "hello-2.12". */
export function drvName(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1).replace(/\.drv$/, "");
  const dash = base.indexOf("-");
  return dash > 0 && dash <= 33 ? base.slice(dash + 1) : base;
}

function counts(fields: readonly unknown[]): Counts {
  const n = (i: number) => (typeof fields[i] === "number" ? (fields[i] as number) : 0);
  return { done: n(0), expected: n(1), running: n(2), failed: n(3) };
}

/**
 * Follows one nix invocation's event stream: progress counters, the build
 * being run, the last log lines (a fixed-size ring) and the errors nix
 * reported. Memory is bounded by the ring and the live activities.
 */
export class NixLogState {
  readonly progress: NixProgress = {
    derivations: zero(),
    substitutions: zero(),
    downloadedBytes: 0,
    expectedDownloadBytes: 0,
    building: null,
  };
  readonly errors: NixError[] = [];
  /** error:/fatal: lines written to stderr outside the JSON stream (see PLAIN_ERROR). */
  readonly plainErrors: string[] = [];
  /** True once nix started realising (building or substituting): evaluation is over. */
  realiseStarted = false;
  private readonly tail: RingBuffer<string | RawLogLine>;
  private readonly activities = new Map<number, Activity>();
  private readonly transfers = new Map<number, number>();
  private finishedTransferBytes = 0;
  private lastBuildId: number | undefined;
  private static readonly MAX_ERRORS = 8;

  constructor(tailLines: number) {
    this.tail = new RingBuffer(tailLines);
  }

  /** Feeds one stderr line; returns true when the visible progress changed. */
  push(line: string): boolean {
    const raw = rawLogLine(line);
    if (raw) {
      this.tail.push({ drv: this.activities.get(raw.id)?.name || undefined, fields: raw.fields });
      return false;
    }
    const event = parseNixLine(line);
    switch (event.action) {
      case "plain":
        if (event.text.trim().length > 0) this.tail.push(event.text);
        if (PLAIN_ERROR.test(event.text) && this.plainErrors.length < NixLogState.MAX_ERRORS) this.plainErrors.push(event.text.trim());
        return false;
      case "start":
        return this.onStart(event);
      case "stop":
        return this.onStop(event.id);
      case "result":
        return this.onResult(event);
      case "msg":
        this.onMsg(event);
        return false;
      default:
        return false;
    }
  }

  logTail(): string[] {
    return this.tail.toArray().map((line) => (typeof line === "string" ? line : decodeLogLine(line)));
  }

  /**
   * The error that explains the failure: nix's first one (later ones are
   * consequences, e.g. "1 dependencies of derivation … failed to build"),
   * ANSI codes removed; undefined if nix printed none.
   */
  mainError(): NixError | undefined {
    const first = this.errors[0];
    if (!first) {
      // No JSON error at all: nix died past its logger (stack overflow).
      const plain = this.plainErrors.find((line) => line.startsWith("error:"));
      return plain ? { message: plain } : undefined;
    }
    // "program 'git' failed with exit code 128" names no cause; git's
    // fatal: line does ("unable to access …: Couldn't connect to server").
    const helper = this.plainErrors.filter((line) => line.startsWith("fatal:"));
    if (HELPER_FAILED.test(first.message) && helper.length > 0) {
      return { ...first, message: `${helper.join("; ")} (${first.message.replace(/^error:\s*/, "")})` };
    }
    return first;
  }

  private onStart(event: z.infer<typeof StartSchema>): boolean {
    const fields = event.fields ?? [];
    if (event.type === ActivityType.Realise || event.type === ActivityType.Builds) this.realiseStarted = true;
    if (event.type === ActivityType.Build) {
      const drv = typeof fields[0] === "string" ? drvName(fields[0]) : "?";
      const machine = typeof fields[1] === "string" && fields[1].length > 0 ? machineName(fields[1]) : this.remoteBuilderOf(drv);
      const activity: Activity = { type: event.type, name: drv, phase: null, ...(machine ? { machine } : {}) };
      this.activities.set(event.id, activity);
      this.lastBuildId = event.id;
      this.progress.building = buildingOf(activity);
      return true;
    }
    if (event.type === ActivityType.FileTransfer) {
      this.transfers.set(event.id, 0);
    }
    this.activities.set(event.id, { type: event.type, name: "", phase: null });
    return false;
  }

  private onStop(id: number): boolean {
    const activity = this.activities.get(id);
    this.activities.delete(id);
    const bytes = this.transfers.get(id);
    if (bytes !== undefined) {
      this.transfers.delete(id);
      this.finishedTransferBytes += bytes;
    }
    if (activity?.type === ActivityType.Build && id === this.lastBuildId) {
      this.lastBuildId = this.latestBuild();
      const current = this.lastBuildId === undefined ? undefined : this.activities.get(this.lastBuildId);
      this.progress.building = current ? buildingOf(current) : null;
      return true;
    }
    return false;
  }

  /**
   * nix relays a remote builder's own log, whose Build activity for the
   * same derivation names no machine: it still runs there.
   */
  private remoteBuilderOf(drv: string): string | undefined {
    for (const activity of this.activities.values()) {
      if (activity.type === ActivityType.Build && activity.name === drv && activity.machine) return activity.machine;
    }
    return undefined;
  }

  private latestBuild(): number | undefined {
    let latest: number | undefined;
    for (const [id, activity] of this.activities) if (activity.type === ActivityType.Build) latest = id;
    return latest;
  }

  private onResult(event: z.infer<typeof ResultSchema>): boolean {
    const activity = this.activities.get(event.id);
    const { fields } = event;
    switch (event.type) {
      case ResultType.BuildLogLine:
      case ResultType.PostBuildLogLine: {
        const text = typeof fields[0] === "string" ? stripVTControlCharacters(fields[0]) : "";
        this.tail.push(activity?.name ? `${activity.name}> ${text}` : text);
        return false;
      }
      case ResultType.SetPhase: {
        if (!activity || typeof fields[0] !== "string") return false;
        activity.phase = fields[0];
        if (event.id === this.lastBuildId) this.progress.building = buildingOf(activity);
        return true;
      }
      case ResultType.Progress:
        return this.onProgress(activity, event.id, fields);
      case ResultType.SetExpected:
        return this.onExpected(activity, fields);
      default:
        return false;
    }
  }

  private onProgress(activity: Activity | undefined, id: number, fields: readonly unknown[]): boolean {
    if (!activity) return false;
    if (activity.type === ActivityType.Builds) {
      return this.replace("derivations", counts(fields));
    }
    if (activity.type === ActivityType.CopyPaths) {
      return this.replace("substitutions", counts(fields));
    }
    if (activity.type === ActivityType.FileTransfer) {
      const done = counts(fields).done;
      this.transfers.set(id, done);
      const total = this.finishedTransferBytes + [...this.transfers.values()].reduce((a, b) => a + b, 0);
      const changed = total !== this.progress.downloadedBytes;
      this.progress.downloadedBytes = total;
      return changed;
    }
    return false;
  }

  private onExpected(activity: Activity | undefined, fields: readonly unknown[]): boolean {
    if (activity?.type !== ActivityType.Realise && activity?.type !== ActivityType.CopyPaths) return false;
    const [kind, expected] = fields;
    if (kind !== ActivityType.FileTransfer || typeof expected !== "number") return false;
    const changed = expected !== this.progress.expectedDownloadBytes;
    this.progress.expectedDownloadBytes = expected;
    return changed;
  }

  private replace(key: "derivations" | "substitutions", next: Counts): boolean {
    const prev = this.progress[key];
    const changed =
      prev.done !== next.done || prev.expected !== next.expected || prev.running !== next.running || prev.failed !== next.failed;
    this.progress[key] = next;
    return changed;
  }

  private onMsg(event: z.infer<typeof MsgSchema>): void {
    const text = stripVTControlCharacters(event.msg);
    if (event.level > Verbosity.Warn || NOISE.test(text)) return;
    this.tail.push(text);
    if (event.level !== Verbosity.Error || HINT.test(text)) return;
    const error: NixError = { message: text };
    if (event.file) error.file = event.file;
    if (typeof event.line === "number") error.line = event.line;
    if (typeof event.column === "number") error.column = event.column;
    if (this.errors.length < NixLogState.MAX_ERRORS) this.errors.push(error);
  }
}
