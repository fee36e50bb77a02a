/**
 * Every program a daemon starts runs through here: nix, nix-store, nix-env,
 * a system's `bin/switch-to-configuration`. One place that
 *  - starts it with execa, arguments as an array (never a shell);
 *  - gives it a process group of its own (`detached`), so that ending it
 *    ends what it started, and a signal to the daemon's group does not
 *    reach it half-way through something;
 *  - bounds it by a timeout and an AbortSignal, and ends the whole process
 *    tree when either fires (process-tree.ts);
 *  - records it in the process ledger while it runs, so that a daemon that
 *    was killed has its leftovers ended at its next start;
 *  - samples the tree's RSS from /proc when asked to (a memory ceiling, a
 *    benchmark's peak).
 * Owners of a process may also pause it, reset its timeout or end it for a
 * reason of their own (`kill("replace")`): the reason comes back as the
 * run's outcome, so nobody keeps a second flag beside the process.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { execa, type ResultPromise } from "execa";
import { forEachLine } from "../util/line-splitter.js";
import { killProcessTree, sendSignal, treeRssBytes } from "./process-tree.js";

/** Where each process group started is recorded, so a crashed daemon's leftovers can be ended (process-ledger.ts). */
export interface ProcessRecorder {
  started(pid: number): void;
  exited(pid: number): void;
}

export interface SupervisorOptions {
  /** How long a process has between SIGTERM and SIGKILL when it is ended. */
  killGraceMs: number;
  /** Added to the daemon's environment for every process. */
  env?: Record<string, string>;
  ledger?: ProcessRecorder;
}

export interface StartOptions {
  timeoutMs: number;
  /** Ends the process tree when aborted (outcome "cancelled"). */
  signal?: AbortSignal;
  /** "collect" (the default): stdout comes back in the result, up to 16 MiB. */
  stdout?: "collect" | "ignore";
  /** Each line of stderr as it comes; without it stderr is discarded. */
  onStderrLine?: (line: string) => void;
  /** Added to the supervisor's environment for this process. */
  env?: Record<string, string>;
  cwd?: string;
  /** Samples the tree's RSS this often while it runs (into `peakRssBytes`, and to `onRss`). */
  rssSampleMs?: number;
  onRss?: (bytes: number) => void;
  /**
   * false: not recorded in the ledger, so a daemon's next start leaves it
   * alone. For a process that must finish even if it ends the daemon
   * itself (a system switch that restarts the daemon's own unit).
   */
  record?: boolean;
}

/** Why a process ended: it exited by itself, could not be started, or was ended (timeout, cancel, or the owner's reason `K`). */
export type ProcessOutcome<K extends string = never> = "exited" | "spawn_failed" | "timeout" | "cancelled" | K;

export interface ProcessResult<K extends string = never> {
  outcome: ProcessOutcome<K>;
  exitCode: number | undefined;
  signal: string | undefined;
  /** "" unless stdout was collected. */
  stdout: string;
  durationMs: number;
  /** Highest RSS of the tree seen by a sample (0 when none was taken). */
  peakRssBytes: number;
  /** Why it could not be started (outcome "spawn_failed"). */
  spawnError?: string;
}

/** "cannot run <bin>: <why>": the same words whichever daemon could not start whichever program. */
export function cannotRun(bin: string, result: Pick<ProcessResult, "spawnError">, hint?: string): string {
  return `cannot run ${bin}: ${result.spawnError ?? "spawn failed"}${hint ? ` (${hint})` : ""}`;
}

export class SupervisedProcess<K extends string = never> {
  readonly pid: number | undefined;
  readonly result: Promise<ProcessResult<K>>;
  private readonly subprocess: ResultPromise;
  private readonly exited: Promise<void>;
  private readonly finished = new AbortController();
  private ending: ProcessOutcome<K> | undefined;
  private killing: Promise<void> | undefined;
  private paused = false;
  private timer: NodeJS.Timeout | undefined;
  private peak = 0;
  private readonly startedAt = performance.now();

  constructor(
    bin: string,
    args: readonly string[],
    private readonly options: StartOptions,
    private readonly supervisor: SupervisorOptions,
  ) {
    const env = { ...supervisor.env, ...options.env };
    const collect = options.stdout !== "ignore";
    this.subprocess = execa(bin, args, {
      detached: true,
      cleanup: false,
      reject: false,
      stdin: "ignore",
      stdout: collect ? "pipe" : "ignore",
      stderr: options.onStderrLine ? "pipe" : "ignore",
      buffer: { stdout: collect, stderr: false },
      maxBuffer: 16 * 1024 * 1024,
      ...(Object.keys(env).length > 0 ? { env } : {}),
      ...(options.cwd ? { cwd: options.cwd } : {}),
      encoding: "utf8",
    });
    this.pid = this.subprocess.pid;
    if (this.pid !== undefined && options.record !== false) supervisor.ledger?.started(this.pid);
    this.exited = this.subprocess.then(() => undefined);
    this.resetTimeout();
    const { signal } = options;
    if (signal?.aborted) this.kill("cancelled");
    signal?.addEventListener("abort", this.onAbort, { once: true });
    this.result = this.supervise();
  }

  /** Why it is being ended, once it is (timeout, cancel, or the owner's reason). */
  get endingFor(): ProcessOutcome<K> | undefined {
    return this.ending;
  }

  /** Starts the timeout over (an evaluation worker's timeout is per host, not per process). */
  resetTimeout(timeoutMs = this.options.timeoutMs): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kill("timeout"), timeoutMs);
  }

  /**
   * Ends the process tree, once: SIGTERM, then SIGKILL after `graceMs`
   * (the supervisor's killGrace unless given). `why` is the run's outcome.
   */
  kill(why: "timeout" | "cancelled" | K, graceMs = this.supervisor.killGraceMs): void {
    if (this.killing || this.pid === undefined) return;
    this.ending = why;
    this.killing = killProcessTree(this.pid, graceMs, this.exited);
    // A stopped process acts on no signal but SIGKILL: let it see the SIGTERM.
    if (this.paused) sendSignal(this.pid, "SIGCONT");
  }

  /** SIGSTOP: holds it still (while its memory is read, say). False when it is gone. */
  pause(): boolean {
    if (this.pid === undefined || this.killing) return false;
    this.paused = sendSignal(this.pid, "SIGSTOP");
    return this.paused;
  }

  resume(): void {
    if (this.paused && this.pid !== undefined && !this.killing) sendSignal(this.pid, "SIGCONT");
    this.paused = false;
  }

  /** The tree's RSS now, in bytes (0 once it is gone). */
  async rss(): Promise<number> {
    if (this.pid === undefined || this.finished.signal.aborted) return 0;
    const bytes = await treeRssBytes(this.pid);
    this.peak = Math.max(this.peak, bytes);
    return bytes;
  }

  private readonly onAbort = () => this.kill("cancelled");

  private async sample(everyMs: number, onRss?: (bytes: number) => void): Promise<void> {
    for (;;) {
      try {
        await sleep(everyMs, undefined, { signal: this.finished.signal });
      } catch {
        return;
      }
      const bytes = await this.rss();
      if (!this.finished.signal.aborted && !this.killing) onRss?.(bytes);
    }
  }

  private async supervise(): Promise<ProcessResult<K>> {
    const { onStderrLine, rssSampleMs, onRss, signal, record } = this.options;
    const stderrDone = this.subprocess.stderr && onStderrLine ? forEachLine(this.subprocess.stderr, onStderrLine) : Promise.resolve();
    const sampling = rssSampleMs ? this.sample(rssSampleMs, onRss) : Promise.resolve();
    const result = await this.subprocess;
    this.finished.abort();
    clearTimeout(this.timer);
    signal?.removeEventListener("abort", this.onAbort);
    await Promise.all([stderrDone, sampling, this.killing]);
    if (this.pid !== undefined && record !== false) this.supervisor.ledger?.exited(this.pid);
    const spawnFailed = result.failed && result.exitCode === undefined && result.signal === undefined && !this.killing;
    return {
      outcome: spawnFailed ? "spawn_failed" : (this.ending ?? "exited"),
      exitCode: result.exitCode,
      signal: result.signal,
      stdout: typeof result.stdout === "string" ? result.stdout : "",
      durationMs: Math.round(performance.now() - this.startedAt),
      peakRssBytes: this.peak,
      ...(spawnFailed ? { spawnError: result.originalMessage || result.shortMessage } : {}),
    };
  }
}

/** Starts supervised processes for one daemon, all recorded in its ledger and ended with its kill grace. */
export class Supervisor {
  constructor(private readonly options: SupervisorOptions) {}

  get ledger(): ProcessRecorder | undefined {
    return this.options.ledger;
  }

  /** Starts `bin args…`; `K` names the owner's own reasons for ending it early. */
  start<K extends string = never>(bin: string, args: readonly string[], options: StartOptions): SupervisedProcess<K> {
    return new SupervisedProcess<K>(bin, args, options, this.options);
  }

  /** Starts `bin args…` and waits for it to end. */
  run(bin: string, args: readonly string[], options: StartOptions): Promise<ProcessResult> {
    return this.start(bin, args, options).result;
  }
}
