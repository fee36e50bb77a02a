/**
 * Runs one job: lock the repo at one revision, list its hosts (for `all`),
 * then build host after host, telling the job's requesters each step. A
 * host that fails, times out or does not evaluate is a result; the job goes
 * on with the next host.
 */
import type { HostCatalog } from "./catalog.js";
import { repoNamed, type Config } from "../config.js";
import type { Logger } from "../logger.js";
import { boundedLogTail, boundedText } from "../util/log-tail.js";
import { existsSync } from "node:fs";
import { isLockedUrl, type FlakeLock, type NixRunner, type Outcome } from "../nix/runner.js";
import type { ToplevelCache, ToplevelDrvs } from "../nix/toplevel-cache.js";
import type { NixProgress } from "../nix/log.js";
import type { HostBuild } from "../nix/runner.js";
import type { EvalPool } from "../nix/eval-pool.js";
import { startEvaluation } from "./evaluation.js";
import { ProgressThrottle } from "../nix/progress.js";
import { ALL_HOSTS, type HostResult, type JobStatus } from "../protocol.js";
import type { Job, JobCheckpoint } from "../job.js";
import type { JobQueue } from "./queue.js";
import { completedMessage, endedEarly, type JobOutcome } from "./outcome.js";
import type { BuildResponder } from "./responder.js";
import type { EventBus } from "../events.js";
import type { Keeper } from "./keep/keeper.js";
import { copyToCache } from "./copy-to-cache.js";

export interface JobRunnerOptions {
  config: Config;
  nix: NixRunner;
  catalog: HostCatalog;
  responder: BuildResponder;
  /** Told how each `all` job's evaluation pool went (metrics). */
  events?: EventBus;
  logger: Logger;
  /** Toplevel .drv paths per locked URL: a re-run of an unchanged revision evaluates nothing. */
  toplevels: ToplevelCache;
  /** GC roots, history, closure changes and expected durations (src/builder/keep). */
  keeper: Keeper;
  /** Shortest time between two progress messages of one build. */
  progressIntervalMs?: number;
  /** The durable queue: saved when the job's plan is known and after each host. */
  queue?: Pick<JobQueue, "saveSoon">;
}

/** A host to build, and its toplevel .drv when an earlier evaluation of this revision produced it. */
interface PlannedHost {
  host: string;
  drv: string | null;
}

/** The hosts in build order; `evaluate`: their .drv paths are not known yet (an `all` job on a new revision). */
interface Plan {
  hosts: PlannedHost[];
  evaluate: boolean;
}

export class JobRunner {
  private readonly progressIntervalMs: number;

  constructor(private readonly options: JobRunnerOptions) {
    this.progressIntervalMs = options.progressIntervalMs ?? 250;
  }

  /** The queue hands a job out only once its requesters were told `accepted`: every message here comes after it. */
  async run(job: Job): Promise<void> {
    const { config, nix, logger } = this.options;
    const { repo, target, ref } = job.spec;
    const started = Date.now();
    const signal = job.abort.signal;
    const url = repoNamed(config.repos, repo)?.url as string;
    logger.info({ jobId: job.id, repo, target, ref }, "job started");

    // A resumed job goes on at the revision and with the hosts it started with.
    const resumed = job.checkpoint ? resumedPlan(job.checkpoint, this.options.toplevels) : undefined;
    const locking = resumed ?? nix.resolveFlake(url, ref, { timeoutMs: config.build.fetchTimeout, signal });
    const lock = await locking;
    if (!lock.ok) {
      const error = lock.outcome === "timeout" ? `${lock.error} (build.fetchTimeout)` : lock.error;
      this.complete(job, endedEarly(job, { status: job.cancelled ? "cancelled" : "failure", error, since: started, revision: null, detail: lock }));
      return;
    }
    const { lockedUrl, revision } = lock.value;
    const plan = resumed ? { ok: true as const, value: resumed.value.plan } : await this.plan(job, lockedUrl, revision);
    if (!plan.ok) {
      this.complete(job, endedEarly(job, { status: job.cancelled ? "cancelled" : "failure", error: plan.error, since: started, revision, detail: plan }));
      return;
    }

    const hosts = plan.value.hosts.map((p) => p.host);
    job.totalHosts = hosts.length;
    job.checkpoint = { lockedUrl, revision, hosts };
    this.options.queue?.saveSoon();
    const expectedMs = this.options.keeper.expectedJobMs(repo, hosts);
    this.options.responder.toJob(job, { type: "job_started", jobId: job.id, ...job.spec, revision, lockedUrl, hosts, expectedMs });
    const earlier = new Map(job.results.map((r) => [r.host, r]));
    // Hosts are evaluated side by side while they are built one at a time,
    // in order: all of them for a new revision; for a resumed `all` (the
    // builder restarted mid-job, as when the build host switches to its own
    // new configuration) the unfinished ones whose .drv is not known.
    const toEvaluate = plan.value.evaluate
      ? hosts
      : resumed && target === ALL_HOSTS
        ? plan.value.hosts.filter((p) => p.drv === null && !earlier.has(p.host)).map((p) => p.host)
        : [];
    const pool = toEvaluate.length > 0 ? startEvaluation({ ...this.options, job, lockedUrl, hosts: toEvaluate }) : undefined;
    // Kept as soon as every host is evaluated, not when the builds are done:
    // a job cut short by a restart after that evaluates nothing again.
    // (A pool that fails is the job's error, reported where it is awaited below.)
    if (pool && plan.value.evaluate) pool.done().then(() => this.remember(pool, lockedUrl), () => undefined);
    const results: HostResult[] = [];
    try {
      for (const [i, planned] of plan.value.hosts.entries()) {
        const done = earlier.get(planned.host);
        if (done) {
          results.push(done);
          continue;
        }
        const evaluated = pool?.has(planned.host) && !job.cancelled ? await pool.result(planned.host) : undefined;
        if (job.cancelled) {
          results.push({ host: planned.host, status: "cancelled", durationMs: 0, error: "not started: the job was cancelled" });
          continue;
        }
        const next = evaluated?.ok ? { host: planned.host, drv: evaluated.drvPath } : planned;
        const result = await this.buildHost(job, lockedUrl, revision, next, i + 1, hosts.length, evaluated && !evaluated.ok ? evaluated.build : undefined);
        // Stopped for a restart: this host is built again when the job resumes.
        if (job.interrupted) return;
        results.push(result);
        job.results.push(result);
        this.options.queue?.saveSoon();
      }
    } finally {
      if (pool) {
        await pool.stop();
        this.options.events?.emit({ type: "evaluation", job, ...pool.stats });
      }
      job.evaluation = null;
    }
    job.currentHost = null;
    job.progress = null;
    this.complete(job, { status: jobStatus(job, results), revision, results, durationMs: Date.now() - started });
  }

  complete(job: Job, outcome: JobOutcome): void {
    if (job.interrupted) return;
    this.options.responder.toJob(job, completedMessage(job, outcome));
    this.options.logger.info(
      { jobId: job.id, ...job.spec, status: outcome.status, revision: outcome.revision, durationMs: outcome.durationMs, error: outcome.error },
      "job completed",
    );
  }

  /**
   * Which hosts to build, in order. A single host is left to `nix build`
   * (nix's eval cache makes its re-runs cheap). For `all`, the hosts are
   * listed (cheap: no host is evaluated) and then evaluated by a pool of
   * workers (src/nix/eval-pool.ts), unless an earlier evaluation of this
   * revision already gave every .drv.
   */
  private async plan(job: Job, lockedUrl: string, revision: string | null): Promise<Outcome<Plan>> {
    const { repo, target, ref } = job.spec;
    if (target !== ALL_HOSTS) return { ok: true, value: { hosts: [{ host: target, drv: null }], evaluate: false } };
    const { config, nix, catalog, logger, toplevels } = this.options;
    const run = { timeoutMs: config.build.resolveTimeout, signal: job.abort.signal };
    const drvs: ToplevelDrvs | undefined = toplevels.get(lockedUrl);
    if (drvs) logger.info({ jobId: job.id, repo }, "every host's toplevel .drv is known from an earlier evaluation of this revision");
    const names: Outcome<string[]> = drvs ? { ok: true, value: Object.keys(drvs) } : await nix.listHosts(lockedUrl, run);
    if (!names.ok) return names;
    const valid = catalog.requestable(repo, names.value);
    if (ref === null) {
      catalog.record(repo, { hosts: valid, revision, fetchedAt: Date.now() });
      await this.options.keeper.hostsListed(repo, valid);
    }
    if (valid.length === 0) return { ok: false, error: `repo ${repo} has no nixosConfigurations to build`, outcome: "exited" };
    return { ok: true, value: { hosts: valid.map((host) => ({ host, drv: drvs?.[host] ?? null })), evaluate: !drvs } };
  }

  /** Keeps the .drv paths of a revision whose every host evaluated, or failed in its own code (not killed, not timed out). */
  private remember(pool: EvalPool, lockedUrl: string): void {
    const drvs = pool.drvs();
    if (drvs && isLockedUrl(lockedUrl)) this.options.toplevels.set(lockedUrl, drvs);
  }

  /** `failedEvaluation`: the host did not evaluate; it is reported as such without running nix again. */
  private async buildHost(
    job: Job,
    lockedUrl: string,
    revision: string | null,
    planned: PlannedHost,
    index: number,
    total: number,
    failedEvaluation?: HostBuild,
  ): Promise<HostResult> {
    const { config, nix, logger, responder, keeper } = this.options;
    const { host, drv } = planned;
    const startedAt = Date.now();
    const expectedMs = keeper.expectedMs(job.spec.repo, host);
    Object.assign(job, { currentHost: host, hostIndex: index, hostStartedAt: startedAt, progress: null, expectedMs });
    responder.toJob(job, { type: "host_started", jobId: job.id, host, index, total, startedAt: new Date(startedAt).toISOString(), expectedMs });
    logger.info({ jobId: job.id, repo: job.spec.repo, host, index, total }, "building host");
    const throttle = new ProgressThrottle(this.progressIntervalMs, (progress, sentAt) => {
      job.progress = progress;
      responder.toJob(job, { type: "progress", jobId: job.id, host, index, total, elapsedMs: sentAt - startedAt, expectedMs, ...progress });
    });
    const run = { timeoutMs: config.build.timeout, signal: job.abort.signal, onProgress: (progress: NixProgress) => throttle.update(progress) };
    // A cached .drv may have been garbage-collected since: then evaluate again.
    const build = failedEvaluation ?? (drv && existsSync(drv) ? await nix.realise(drv, run) : await nix.buildHost(lockedUrl, host, run));
    throttle.flush();
    const result: HostResult = { host, status: build.status, durationMs: build.durationMs };
    if (build.storePath) result.storePath = build.storePath;
    if (build.error) result.error = boundedText(build.error);
    if (build.location) result.location = build.location;
    // An eval error's message already is the useful part; the log would repeat it.
    const logTail = build.status !== "success" && build.status !== "eval_error" && build.logTail ? boundedLogTail(build.logTail) : undefined;
    Object.assign(result, await keeper.finished({ repo: job.spec.repo, ref: job.spec.ref, revision, jobId: job.id, result, logTail }));
    // Rooted first (garbage collection can no longer take it), then shared.
    if (build.status === "success" && build.storePath) {
      const copy = await copyToCache(this.options, job, host, build.storePath);
      if (copy) result.copy = copy;
    }
    responder.toJob(job, { type: "host_finished", jobId: job.id, index, total, ...result, ...(logTail ? { logTail } : {}) });
    const level = build.status === "success" ? "info" : "warn";
    logger[level]({ jobId: job.id, repo: job.spec.repo, host, status: build.status, durationMs: build.durationMs, error: build.error }, "host finished");
    return result;
  }
}

function resumedPlan(checkpoint: JobCheckpoint, toplevels: ToplevelCache): { ok: true; value: FlakeLock & { plan: Plan } } {
  // Known .drv paths are reused; for `all`, run() evaluates the others in the pool.
  const drvs = toplevels.get(checkpoint.lockedUrl);
  const hosts = checkpoint.hosts.map((host) => ({ host, drv: drvs?.[host] ?? null }));
  return { ok: true, value: { lockedUrl: checkpoint.lockedUrl, revision: checkpoint.revision, plan: { hosts, evaluate: false } } };
}

function jobStatus(job: Job, results: HostResult[]): JobStatus {
  if (job.cancelled) return "cancelled";
  return results.every((r) => r.status === "success") ? "success" : "failure";
}
