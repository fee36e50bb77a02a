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
 *    keeps it referenced), so a process grows with each host: between two
 *    hosts the worker's RSS (summed over its process tree) is checked, and
 *    past `maxMemoryBytes` it is replaced by a fresh process for the rest;
 *  - no `tryEval`: it would swallow nix's message and position. An error
 *    ends the process instead; the host it was on (the last "start") gets
 *    nix's message and file:line, and a fresh process goes on with the
 *    rest. A worker killed from outside (OOM killer, SIGKILL) costs only
 *    that host, the same way.
 * The markers carry a random nonce per process, so a flake's own traces
 * (NixOS warnings are traces too) can never be mistaken for them.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { execa } from "execa";
import type { Logger } from "../logger.js";
import { forEachLine } from "../util/line-splitter.js";
import { formatSetting } from "../util/duration.js";
import { formatSize } from "../util/size.js";
import { NixLogState, parseNixLine } from "./log.js";
import { killProcessTree, processTree } from "./process-tree.js";
import { sourceLocation, type HostBuild, type ProcessRecorder } from "./runner.js";
import type { ToplevelDrvs } from "./toplevel-cache.js";
import { DrvPathSchema } from "../store-path.js";

export interface EvalPoolOptions {
  nixBin: string;
  env?: Record<string, string>;
  /** Worker processes evaluating at the same time (at most one per host). */
  workers: number;
  /** Past this RSS a worker is replaced by a fresh process after the host it is on. */
  maxMemoryBytes: number;
  /** Longest one host's evaluation may take (the first host's includes fetching and loading the flake). */
  hostTimeoutMs: number;
  killGraceMs: number;
  logTailLines: number;
  logger: Logger;
  /** Records each worker, so that a builder killed mid-evaluation has its workers ended at the next start. */
  ledger?: ProcessRecorder;
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
  /** Replaced because they passed maxMemoryBytes. */
  replacedForMemory: number;
  /** Died (killed from outside, or nix failed) while evaluating a host. */
  lost: number;
  /** Highest RSS seen at a check, in bytes. */
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

/** RSS of `root` and its descendants, in bytes (Linux /proc). */
export async function treeRssBytes(root: number): Promise<number> {
  let total = 0;
  for (const pid of await processTree(root)) {
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    total += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  }
  return total;
}

/** Sends `sig`; false when the process is gone. */
function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
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
  private async runProcess(slot: number, queue: string[]): Promise<void> {
    const { nixBin, env, maxMemoryBytes, hostTimeoutMs, killGraceMs, logger } = this.options;
    const nonce = randomBytes(6).toString("hex");
    const log = new NixLogState(this.options.logTailLines);
    const spawnedAt = performance.now();
    const subprocess = execa(
      nixBin,
      ["eval", "--json", "--log-format", "internal-json", `${this.lockedUrl}#nixosConfigurations`, "--apply", workerExpression(queue, nonce)],
      { detached: true, cleanup: false, reject: false, stdin: "ignore", stdout: "ignore", buffer: false, env, encoding: "utf8" },
    );
    this.stats.processes += 1;
    const pid = subprocess.pid;
    // A worker is detached (its own process group): nothing else ends it if the builder dies.
    if (pid !== undefined) this.options.ledger?.started(pid);
    logger.debug({ worker: slot, pid, hosts: queue.length }, "evaluation worker started");
    const exited = subprocess.then(() => undefined);
    let current: { host: string; startedAt: number } | undefined;
    let announced = false;
    let ending: "replace" | "timeout" | "cancelled" | undefined;
    let killing: Promise<void> | undefined;
    let paused = false;
    const kill = (why: "replace" | "timeout" | "cancelled") => {
      if (killing || pid === undefined) return;
      ending = why;
      // A worker being replaced is discarded as it is (paused between two
      // hosts): no grace. Otherwise SIGTERM first, and a paused worker must
      // run again to act on it.
      killing = killProcessTree(pid, why === "replace" ? 0 : killGraceMs, exited);
      if (paused) signal(pid, "SIGCONT");
    };
    let timer = setTimeout(() => kill("timeout"), hostTimeoutMs);
    const onAbort = () => kill("cancelled");
    if (this.stopper.signal.aborted) onAbort();
    this.stopper.signal.addEventListener("abort", onAbort, { once: true });

    const checkMemory = async (after: string) => {
      if (pid === undefined || killing) return;
      const rss = await treeRssBytes(pid);
      this.stats.peakRssBytes = Math.max(this.stats.peakRssBytes, rss);
      if (rss <= maxMemoryBytes || killing || queue.length === 0) return;
      this.stats.replacedForMemory += 1;
      logger.info(
        { worker: slot, pid, rss: formatSize(rss), evalMaxMemory: formatSize(maxMemoryBytes), after, remaining: queue.length },
        "evaluation worker replaced: over build.evalMaxMemory",
      );
      kill("replace");
    };
    // Lines are handled one after another, each after the memory check the
    // one before started: once a worker is being replaced, what it still
    // printed (it went on with the next host meanwhile) is ignored and the
    // fresh worker starts at the host after the one that triggered the
    // check, whatever the timing.
    let handled: Promise<void> = Promise.resolve();
    const handle = async (line: string) => {
      const marker = parseMarker(line, nonce);
      if (marker === "trace") return;
      if (marker === undefined) {
        log.push(line);
        return;
      }
      if (ending === "replace") return;
      if (marker.kind === "start") {
        current = { host: marker.host, startedAt: performance.now() };
        announced = true;
        clearTimeout(timer);
        timer = setTimeout(() => kill("timeout"), hostTimeoutMs);
        logger.debug({ worker: slot, pid, host: marker.host }, "evaluating host");
        return;
      }
      if (marker.host !== queue[0]) return;
      queue.shift();
      const durationMs = Math.round(performance.now() - (current?.startedAt ?? spawnedAt));
      current = undefined;
      this.settle({ host: marker.host, ok: true, drvPath: marker.drvPath, durationMs });
      if (queue.length === 0 || pid === undefined) return;
      // Paused while its RSS is read: a worker left running would be well
      // into the next host (and its memory) by the time it is replaced.
      paused = signal(pid, "SIGSTOP");
      await checkMemory(marker.host);
      if (paused && !killing) signal(pid, "SIGCONT");
      paused = false;
    };
    const stderrDone = subprocess.stderr
      ? forEachLine(subprocess.stderr, (line) => {
          handled = handled.then(() => handle(line));
        })
      : Promise.resolve();

    const result = await subprocess;
    clearTimeout(timer);
    this.stopper.signal.removeEventListener("abort", onAbort);
    await stderrDone;
    await handled;
    await killing;
    if (pid !== undefined) this.options.ledger?.exited(pid);

    const victim = current?.host ?? queue[0];
    const durationMs = Math.round(performance.now() - (current?.startedAt ?? spawnedAt));
    if (ending === "replace" || victim === undefined) return;
    if (ending === "cancelled") {
      for (const host of queue.splice(0)) this.fail(host, { status: "cancelled", durationMs: host === victim ? durationMs : 0, error: "cancelled; the nix process tree was killed" }, false);
      return;
    }
    if (ending === "timeout") {
      queue.shift();
      this.stats.lost += 1;
      this.fail(victim, { status: "timeout", durationMs, error: `evaluation timed out after ${formatSetting(hostTimeoutMs)}; the nix process tree was killed` }, false);
      logger.warn({ worker: slot, pid, host: victim }, "evaluation worker timed out; a fresh one goes on with the rest");
      return;
    }
    const nixError = log.mainError();
    if (result.exitCode === 0) {
      // Every host was announced, or nix printed something we did not expect.
      for (const host of queue.splice(0)) this.fail(host, { status: "eval_error", durationMs: 0, error: "nix eval ended without evaluating this host" }, false);
      return;
    }
    const spawnError = result.failed && result.exitCode === undefined && result.signal === undefined;
    if (spawnError) {
      const error = `cannot run ${nixBin}: ${result.originalMessage || result.shortMessage} (is nix on the builder's PATH?)`;
      for (const host of queue.splice(0)) this.fail(host, { status: "eval_error", durationMs: 0, error }, false);
      return;
    }
    if (nixError && !result.signal) {
      const error = nixError.message.replace(/^error:\s*/, "");
      const location = sourceLocation(nixError);
      if (!announced) {
        // Before the first host: the flake itself does not load; every host would say the same.
        for (const host of queue.splice(0)) this.fail(host, { status: "eval_error", durationMs, error, ...(location ? { location } : {}) }, true);
        return;
      }
      queue.shift();
      this.fail(victim, { status: "eval_error", durationMs, error, ...(location ? { location } : {}) }, true);
      logger.debug({ worker: slot, pid, host: victim }, "host did not evaluate; a fresh worker goes on with the rest");
      return;
    }
    queue.shift();
    this.stats.lost += 1;
    const how = result.signal
      ? `was killed by ${result.signal}${result.signal === "SIGKILL" ? " (out of memory? the kernel's OOM killer sends SIGKILL)" : ""}`
      : `exited with code ${result.exitCode ?? "?"}${result.exitCode === 137 ? " (killed, perhaps out of memory)" : ""}`;
    const error = `the evaluation worker (nix eval, pid ${pid ?? "?"}) ${how} while evaluating this host`;
    this.fail(victim, { status: "eval_error", durationMs, error }, false);
    logger.warn({ worker: slot, pid, host: victim, signal: result.signal, exitCode: result.exitCode }, "evaluation worker died; a fresh one goes on with the rest");
  }
}
