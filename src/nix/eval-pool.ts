/**
 * Evaluating many NixOS hosts' toplevel `.drv` paths in a bounded pool of
 * `nix eval` worker processes, the way nix-eval-jobs does for Hydra, but
 * with plain `nix eval` (nix-eval-jobs is not something we can depend on).
 *
 * Each worker is one `nix eval <locked>#nixosConfigurations --apply …` that
 * evaluates its share of the hosts one after another and announces each
 * one with a `builtins.trace` marker on stderr: "start <host>" before, and
 * "done <host> <drv>" as soon as the .drv is known, so builds can start
 * while the rest is still being evaluated. Why this shape (measured in
 * docs/performance.md):
 *  - one process for several hosts pays the shared part (nixpkgs) once per
 *    process, not once per host;
 *  - every evaluated host stays alive in its process (nixosConfigurations
 *    keeps it referenced), so a process grows with each host. `maxMemoryBytes`
 *    is a ceiling on the worker (its process tree's RSS), enforced while a
 *    host evaluates: the RSS is sampled every MEMORY_SAMPLE_MS, and Boehm's
 *    GC_MAXIMUM_HEAP_SIZE makes nix itself stop ("out of memory") should
 *    the heap outrun the samples. A worker over it that has evaluated
 *    other hosts first is replaced, and its host goes to a fresh worker
 *    (the memory may be theirs); a fresh worker over it fails its host
 *    ("evaluation exceeded evalMaxMemory"). Between two hosts the worker
 *    is paused and checked once more, and replaced if it is over;
 *    `hostsPerWorker` bounds how many hosts one process takes (1: one
 *    process per host, which is fastest where hosts share little);
 *  - no `tryEval`: it would swallow nix's message and position. An error
 *    ends the process instead; the host it was on (the last "start") gets
 *    nix's message and file:line, and a fresh process goes on with the
 *    rest. A worker killed from outside (OOM killer, SIGKILL) costs only
 *    that host, the same way.
 * The markers carry a random nonce per process, so a flake's own traces
 * (NixOS warnings are traces too) can never be mistaken for them.
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "../logger.js";
import { formatSetting } from "../util/duration.js";
import { formatSize } from "../util/size.js";
import { NixLogState, parseNixLine } from "./log.js";
import { NIX_PATH_HINT, sourceLocation, type HostBuild } from "./runner.js";
import { cannotRun, type SupervisedProcess, type Supervisor } from "./supervisor.js";
import type { ToplevelDrvs } from "./toplevel-cache.js";
import { DrvPathSchema } from "../store-path.js";

export interface EvalPoolOptions {
  nixBin: string;
  /** Starts the workers: each in the daemon's process ledger, so a builder killed mid-evaluation has its workers ended at the next start. */
  supervisor: Supervisor;
  /** Worker processes evaluating at the same time (at most one per host). */
  workers: number;
  /** The most a worker may hold (RSS of its tree, and nix's GC heap): past it a worker is replaced, or the host it evaluates first fails. */
  maxMemoryBytes: number;
  /** A worker evaluates at most this many hosts; a fresh one goes on with the rest (1: one process per host). */
  hostsPerWorker?: number;
  /** Longest one host's evaluation may take (the first host's includes fetching and loading the flake). */
  hostTimeoutMs: number;
  logTailLines: number;
  logger: Logger;
  /** Ends every worker: the job was cancelled or the builder is stopping. */
  signal?: AbortSignal;
  /** Called once per host as soon as its evaluation succeeded or failed (not for cancelled hosts). */
  onEvaluated?: (evaluation: HostEvaluation, counts: EvalCounts) => void;
}

export type HostEvaluation =
  | { host: string; ok: true; drvPath: string; durationMs: number }
  | {
      host: string;
      ok: false;
      /** eval_error (nix's error or a dead worker), timeout, or cancelled. */
      build: HostBuild;
      /** True when evaluating it again would fail the same way (nix reported an error), so the answer may be cached. */
      deterministic: boolean;
    };

export interface EvalCounts {
  /** Hosts whose evaluation ended, successfully or not. */
  evaluated: number;
  failed: number;
  total: number;
}

export interface EvalPoolStats {
  /** Worker processes started, replacements included. */
  processes: number;
  /** Replaced because they passed maxMemoryBytes (their host, if any, went to a fresh worker). */
  replacedForMemory: number;
  /** Died (killed from outside, or nix failed, or past maxMemoryBytes on its first host) while evaluating a host. */
  lost: number;
  /** Highest RSS of one worker seen by a sample or a check between hosts, in bytes. */
  peakRssBytes: number;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const MARKER = "trace: @homelab-deploy-eval-";

/**
 * How often a worker's RSS is read while it evaluates. A runaway host
 * allocates a few hundred MiB a second; nix's own heap cap
 * (GC_MAXIMUM_HEAP_SIZE) stops it between two samples if need be.
 */
const MEMORY_SAMPLE_MS = 250;

/** nix's words when Boehm's heap cannot grow (GC_MAXIMUM_HEAP_SIZE): Nix 2.8 and current Nix. */
const OUT_OF_MEMORY = /^(?:error:\s*)?out of memory/;

/**
 * The `--apply` expression a worker runs. Host names are checked against
 * the protocol's strict pattern before they get here; JSON.stringify makes
 * each a Nix string literal all the same.
 */
export function workerExpression(hosts: readonly string[], nonce: string): string {
  const names = hosts.map((host) => JSON.stringify(host)).join(" ");
  const tag = `@homelab-deploy-eval-${nonce}`;
  return [
    "cs: builtins.foldl' (n: host:",
    `  builtins.seq (builtins.trace "${tag} start \${host}" null)`,
    `  (builtins.seq (builtins.trace "${tag} done \${host} \${cs.\${host}.config.system.build.toplevel.drvPath}" null) (n + 1)))`,
    `  0 [ ${names} ]`,
  ].join("\n");
}

type Marker = { kind: "start"; host: string } | { kind: "done"; host: string; drvPath: string };

function parseMarker(line: string, nonce: string): Marker | "trace" | undefined {
  const event = parseNixLine(line);
  if (event.action !== "msg") return undefined;
  if (!event.msg.startsWith("trace: ")) return undefined;
  const prefix = `${MARKER}${nonce} `;
  if (!event.msg.startsWith(prefix)) return "trace";
  const [kind, host, drvPath] = event.msg.slice(prefix.length).split(" ");
  if (kind === "start" && host) return { kind, host };
  if (kind === "done" && host && drvPath && DrvPathSchema.safeParse(drvPath).success) return { kind, host, drvPath };
  return "trace";
}

export class EvalPool {
  private readonly results = new Map<string, Deferred<HostEvaluation>>();
  private readonly settled = new Map<string, HostEvaluation>();
  private readonly stopper = new AbortController();
  private readonly counts: EvalCounts;
  private finished: Promise<void> | undefined;
  readonly stats: EvalPoolStats = { processes: 0, replacedForMemory: 0, lost: 0, peakRssBytes: 0 };

  constructor(
    private readonly lockedUrl: string,
    private readonly hosts: readonly string[],
    private readonly options: EvalPoolOptions,
  ) {
    for (const host of hosts) this.results.set(host, deferred());
    this.counts = { evaluated: 0, failed: 0, total: hosts.length };
    const { signal } = options;
    if (signal?.aborted) this.stopper.abort();
    signal?.addEventListener("abort", () => this.stopper.abort(), { once: true });
  }

  /** Starts the workers; hosts are dealt out round-robin so they finish roughly in build order. */
  start(): void {
    if (this.finished) return;
    const workers = Math.max(1, Math.min(this.options.workers, this.hosts.length));
    const shares = Array.from({ length: workers }, (_, k) => this.hosts.filter((_, i) => i % workers === k));
    this.finished = Promise.all(shares.map((share, k) => this.worker(k + 1, share))).then(() => undefined);
  }

  has(host: string): boolean {
    return this.results.has(host);
  }

  /** The host's evaluation, once it is known. */
  result(host: string): Promise<HostEvaluation> {
    const entry = this.results.get(host);
    if (!entry) throw new RangeError(`host ${host} is not part of this evaluation`);
    return entry.promise;
  }

  get progress(): EvalCounts {
    return { ...this.counts };
  }

  /** Resolves when every host is settled and no worker process is left. */
  done(): Promise<void> {
    return this.finished ?? Promise.resolve();
  }

  /** Ends every worker's process tree; hosts not evaluated yet are cancelled. */
  async stop(): Promise<void> {
    this.stopper.abort();
    await this.done();
  }

  /**
   * Every host's .drv (null: nix reported an error evaluating it), once every
   * host is settled; undefined if some host was cancelled, timed out or lost
   * its worker: evaluating it again might give another answer, so it must
   * not be remembered.
   */
  drvs(): ToplevelDrvs | undefined {
    if (this.settled.size !== this.hosts.length) return undefined;
    const drvs: ToplevelDrvs = {};
    for (const host of this.hosts) {
      const evaluation = this.settled.get(host);
      if (!evaluation || (!evaluation.ok && !evaluation.deterministic)) return undefined;
      drvs[host] = evaluation.ok ? evaluation.drvPath : null;
    }
    return drvs;
  }

  private settle(evaluation: HostEvaluation): void {
    if (this.settled.has(evaluation.host)) return;
    this.settled.set(evaluation.host, evaluation);
    this.results.get(evaluation.host)?.resolve(evaluation);
    if (!evaluation.ok && evaluation.build.status === "cancelled") return;
    this.counts.evaluated += 1;
    if (!evaluation.ok) this.counts.failed += 1;
    this.options.onEvaluated?.(evaluation, this.progress);
  }

  private async worker(slot: number, share: string[]): Promise<void> {
    const queue = [...share];
    while (queue.length > 0) {
      if (this.stopper.signal.aborted) {
        for (const host of queue.splice(0)) this.fail(host, { status: "cancelled", durationMs: 0, error: "not evaluated: the job was cancelled" }, false);
        return;
      }
      await this.runProcess(slot, queue);
    }
  }

  private fail(host: string, build: HostBuild, deterministic: boolean): void {
    this.settle({ host, ok: false, build, deterministic });
  }

  /** One worker process over `queue`; removes every host it settles from the front of `queue`. */
  private runProcess(slot: number, queue: string[]): Promise<void> {
    const context: WorkerContext = {
      lockedUrl: this.lockedUrl,
      options: this.options,
      stats: this.stats,
      signal: this.stopper.signal,
      settle: (evaluation) => this.settle(evaluation),
    };
    return new EvalWorker(context, slot, queue).run();
  }
}

/** What a worker needs from its pool. */
interface WorkerContext {
  lockedUrl: string;
  options: EvalPoolOptions;
  stats: EvalPoolStats;
  /** The pool is stopping: end the worker, cancel what it has not evaluated. */
  signal: AbortSignal;
  settle(evaluation: HostEvaluation): void;
}

/**
 * One `nix eval` process over the front of a queue of hosts. It removes
 * every host it settles from the front of the queue; the pool starts a
 * fresh worker for whatever is left when it ends.
 */
class EvalWorker {
  private readonly nonce = randomBytes(6).toString("hex");
  /** The front of the queue it evaluates (all of it unless hostsPerWorker). */
  private readonly hosts: string[];
  private readonly log: NixLogState;
  private readonly nix: SupervisedProcess<"replace" | "memory">;
  private readonly spawnedAt = performance.now();
  /** The host it announced last and has not finished. */
  private current: { host: string; startedAt: number } | undefined;
  /** It reached the first host: the flake itself loaded. */
  private announced = false;
  /** Hosts it evaluated: past maxMemoryBytes with none, the host it is on is to blame. */
  private evaluated = 0;
  private lastEvaluated: string | undefined;
  /** The RSS that made it end for memory. */
  private overRss: number | undefined;
  /**
   * Lines are handled one after another, each after the memory check the
   * one before started: once a worker is being replaced, what it still
   * printed (it went on with the next host meanwhile) is ignored and the
   * fresh worker starts at the host after the one that triggered the
   * check, whatever the timing.
   */
  private handled: Promise<void> = Promise.resolve();

  constructor(
    private readonly context: WorkerContext,
    private readonly slot: number,
    private readonly queue: string[],
  ) {
    const { options, lockedUrl, signal, stats } = context;
    this.log = new NixLogState(options.logTailLines);
    this.hosts = queue.slice(0, options.hostsPerWorker ?? queue.length);
    const args = ["eval", "--json", "--log-format", "internal-json", `${lockedUrl}#nixosConfigurations`, "--apply", workerExpression(this.hosts, this.nonce)];
    this.nix = options.supervisor.start<"replace" | "memory">(options.nixBin, args, {
      timeoutMs: options.hostTimeoutMs,
      signal,
      stdout: "ignore",
      env: { GC_MAXIMUM_HEAP_SIZE: String(options.maxMemoryBytes) },
      rssSampleMs: MEMORY_SAMPLE_MS,
      onRss: (bytes) => this.sampled(bytes),
      onStderrLine: (line) => {
        this.handled = this.handled.then(() => this.handle(line));
      },
    });
    stats.processes += 1;
    options.logger.debug({ worker: slot, pid: this.nix.pid, hosts: this.hosts.length }, "evaluation worker started");
  }

  private get logger(): Logger {
    return this.context.options.logger;
  }

  private fail(host: string, build: HostBuild, deterministic: boolean): void {
    this.context.settle({ host, ok: false, build, deterministic });
  }

  private async handle(line: string): Promise<void> {
    const marker = parseMarker(line, this.nonce);
    if (marker === "trace") return;
    if (marker === undefined) {
      this.log.push(line);
      return;
    }
    // Ended for memory: the host it was on is settled as it was then.
    if (this.nix.endingFor === "replace" || this.nix.endingFor === "memory") return;
    const { slot, queue, nix } = this;
    if (marker.kind === "start") {
      this.current = { host: marker.host, startedAt: performance.now() };
      this.announced = true;
      nix.resetTimeout();
      this.logger.debug({ worker: slot, pid: nix.pid, host: marker.host }, "evaluating host");
      return;
    }
    if (marker.host !== queue[0]) return;
    queue.shift();
    this.evaluated += 1;
    this.lastEvaluated = marker.host;
    const durationMs = Math.round(performance.now() - (this.current?.startedAt ?? this.spawnedAt));
    this.current = undefined;
    this.context.settle({ host: marker.host, ok: true, drvPath: marker.drvPath, durationMs });
    if (this.evaluated === this.hosts.length) return;
    // Paused while its RSS is read: a worker left running would be well
    // into the next host (and its memory) by the time it is replaced.
    nix.pause();
    await this.checkMemory();
    nix.resume();
  }

  /** Between two hosts: past maxMemoryBytes, the worker is discarded as it is (paused, so no grace) and a fresh one takes the rest. */
  private async checkMemory(): Promise<void> {
    if (this.nix.endingFor) return;
    this.sampled(await this.nix.rss());
  }

  /** An RSS sample, while a host evaluates or between two. */
  private sampled(rss: number): void {
    const { stats, options } = this.context;
    stats.peakRssBytes = Math.max(stats.peakRssBytes, rss);
    if (rss > options.maxMemoryBytes) this.overMemory(rss);
  }

  /**
   * Over the ceiling. A worker that evaluated other hosts is replaced (they
   * may hold the memory) and its host, if it is on one, goes to a fresh
   * worker; a fresh worker's host is to blame. Killed at once: nix does
   * not stop evaluating on SIGTERM, and every moment costs memory.
   */
  private overMemory(rss: number): void {
    const { nix, queue } = this;
    // Done with its share: it is exiting by itself.
    if (nix.endingFor || this.evaluated === this.hosts.length) return;
    if (this.evaluated === 0) {
      this.overRss = rss;
      nix.kill("memory", 0);
      return;
    }
    this.replacedForMemory(rss);
    nix.kill("replace", 0);
  }

  /** Counts and logs a replacement; the host it was on, if any, stays at the front of the queue for a fresh worker. */
  private replacedForMemory(rss: number | undefined): void {
    const { nix, queue, slot } = this;
    const { stats, options } = this.context;
    stats.replacedForMemory += 1;
    const where = this.current ? { during: this.current.host } : { after: this.lastEvaluated };
    this.logger.info(
      { worker: slot, pid: nix.pid, ...(rss === undefined ? {} : { rss: formatSize(rss) }), evalMaxMemory: formatSize(options.maxMemoryBytes), ...where, remaining: queue.length },
      "evaluation worker replaced: over build.evalMaxMemory",
    );
  }

  /** The host a fresh worker could not evaluate within maxMemoryBytes fails on its own. */
  private failForMemory(victim: string, durationMs: number, how: string): void {
    const { queue, slot, nix } = this;
    const { stats, options } = this.context;
    queue.shift();
    stats.lost += 1;
    this.fail(victim, { status: "eval_error", durationMs, error: `evaluation exceeded evalMaxMemory (${formatSize(options.maxMemoryBytes)}): ${how}` }, false);
    this.logger.warn({ worker: slot, pid: nix.pid, host: victim, evalMaxMemory: formatSize(options.maxMemoryBytes) }, "evaluation exceeded build.evalMaxMemory; a fresh worker goes on with the rest");
  }

  async run(): Promise<void> {
    const result = await this.nix.result;
    await this.handled;
    const { queue, slot, nix, current } = this;
    const { stats, options } = this.context;
    const pid = nix.pid;
    const victim = current?.host ?? queue[0];
    const durationMs = Math.round(performance.now() - (current?.startedAt ?? this.spawnedAt));
    if (result.outcome === "replace" || victim === undefined) return;
    if (result.outcome === "memory") {
      this.failForMemory(victim, durationMs, `its nix eval reached ${formatSize(this.overRss ?? 0)} and was killed`);
      return;
    }
    if (result.outcome === "cancelled") {
      for (const host of queue.splice(0)) this.fail(host, { status: "cancelled", durationMs: host === victim ? durationMs : 0, error: "cancelled; the nix process tree was killed" }, false);
      return;
    }
    if (result.outcome === "timeout") {
      queue.shift();
      stats.lost += 1;
      this.fail(victim, { status: "timeout", durationMs, error: `evaluation timed out after ${formatSetting(options.hostTimeoutMs)}; the nix process tree was killed` }, false);
      this.logger.warn({ worker: slot, pid, host: victim }, "evaluation worker timed out; a fresh one goes on with the rest");
      return;
    }
    if (result.outcome === "spawn_failed") {
      const error = cannotRun(options.nixBin, result, NIX_PATH_HINT);
      for (const host of queue.splice(0)) this.fail(host, { status: "eval_error", durationMs: 0, error }, false);
      return;
    }
    if (result.exitCode === 0) {
      // Every host of its share was announced (the rest is for a fresh worker), or nix printed something we did not expect.
      for (const host of queue.splice(0, this.hosts.length - this.evaluated)) this.fail(host, { status: "eval_error", durationMs: 0, error: "nix eval ended without evaluating this host" }, false);
      return;
    }
    const nixError = this.log.mainError();
    if (nixError && !result.signal && OUT_OF_MEMORY.test(nixError.message)) {
      // Boehm's heap reached GC_MAXIMUM_HEAP_SIZE before a sample did.
      if (this.evaluated > 0) {
        this.replacedForMemory(undefined);
        return;
      }
      this.failForMemory(victim, durationMs, "nix's heap reached it and nix stopped");
      return;
    }
    if (nixError && !result.signal) {
      const error = nixError.message.replace(/^error:\s*/, "");
      const location = sourceLocation(nixError);
      if (!this.announced) {
        // Before the first host: the flake itself does not load; every host would say the same.
        for (const host of queue.splice(0)) this.fail(host, { status: "eval_error", durationMs, error, ...(location ? { location } : {}) }, true);
        return;
      }
      queue.shift();
      this.fail(victim, { status: "eval_error", durationMs, error, ...(location ? { location } : {}) }, true);
      this.logger.debug({ worker: slot, pid, host: victim }, "host did not evaluate; a fresh worker goes on with the rest");
      return;
    }
    queue.shift();
    stats.lost += 1;
    const how = result.signal
      ? `was killed by ${result.signal}${result.signal === "SIGKILL" ? " (out of memory? the kernel's OOM killer sends SIGKILL)" : ""}`
      : `exited with code ${result.exitCode ?? "?"}${result.exitCode === 137 ? " (killed, perhaps out of memory)" : ""}`;
    const error = `the evaluation worker (nix eval, pid ${pid ?? "?"}) ${how} while evaluating this host`;
    this.fail(victim, { status: "eval_error", durationMs, error }, false);
    this.logger.warn({ worker: slot, pid, host: victim, signal: result.signal, exitCode: result.exitCode }, "evaluation worker died; a fresh one goes on with the rest");
  }
}
