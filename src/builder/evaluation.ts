/**
 * The evaluation side of an `all` job: starts the worker pool
 * (src/nix/eval-pool.ts) for the job's hosts and tells the requesters how
 * far it has got (`evaluating` messages, `job.evaluation` for status),
 * while the job runner builds each host as soon as its .drv is known.
 */
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import type { Job } from "../job.js";
import { EvalPool } from "../nix/eval-pool.js";
import type { NixRunner } from "../nix/runner.js";
import { formatSize } from "../util/size.js";
import type { BuildResponder } from "./responder.js";

export interface EvaluationSetup {
  config: Config;
  nix: NixRunner;
  logger: Logger;
  responder: BuildResponder;
  job: Job;
  lockedUrl: string;
  /** In build order: workers take them round-robin, so they finish roughly in that order. */
  hosts: string[];
}

export function startEvaluation(setup: EvaluationSetup): EvalPool {
  const { config, nix, logger, responder, job, lockedUrl, hosts } = setup;
  const { build } = config;
  const started = Date.now();
  const failed: string[] = [];
  const pool = new EvalPool(lockedUrl, hosts, {
    nixBin: build.nixBin,
    supervisor: nix.supervisor,
    workers: build.evalWorkers,
    maxMemoryBytes: build.evalMaxMemory,
    ...(build.evalHostsPerWorker ? { hostsPerWorker: build.evalHostsPerWorker } : {}),
    hostTimeoutMs: build.timeout,
    logTailLines: build.logTailLines,
    logger: logger.child({ jobId: job.id, repo: job.spec.repo }),
    signal: job.abort.signal,
    onEvaluated: (evaluation, counts) => {
      if (!evaluation.ok) failed.push(evaluation.host);
      job.evaluation = counts;
      responder.toJob(job, { type: "evaluating", jobId: job.id, ...counts });
      if (counts.evaluated < counts.total) return;
      const { processes, replacedForMemory, lost, peakRssBytes } = pool.stats;
      logger.info(
        {
          jobId: job.id,
          repo: job.spec.repo,
          hosts: counts.total,
          failed,
          durationMs: Date.now() - started,
          workers: Math.min(build.evalWorkers, hosts.length),
          processes,
          replacedForMemory,
          lost,
          peakRss: formatSize(peakRssBytes),
        },
        "evaluated every host",
      );
    },
  });
  job.evaluation = pool.progress;
  responder.toJob(job, { type: "evaluating", jobId: job.id, ...pool.progress });
  logger.info({ jobId: job.id, repo: job.spec.repo, hosts: hosts.length, workers: Math.min(build.evalWorkers, hosts.length), evalMaxMemory: formatSize(build.evalMaxMemory) }, "evaluating hosts");
  pool.start();
  return pool;
}
