/**
 * Restarts without losing accepted work: what the builder saves when it
 * stops for a restart, and what it makes of the saved queue when it starts.
 * A job saved while running was cut short (a stop or a crash); after
 * MAX_INTERRUPTIONS of those it is completed as a failure, so a job that
 * crashes the builder does not crash it forever. A job whose repo the
 * config no longer has is completed as a failure that says so.
 */
import { repoNamed, type Config } from "../config.js";
import { Job } from "../job.js";
import type { Logger } from "../logger.js";
import { restoredJob } from "./job-store.js";
import { completedMessage, endedEarly } from "./outcome.js";
import type { JobQueue } from "./queue.js";
import type { BuildResponder } from "./responder.js";

export const MAX_INTERRUPTIONS = 3;

export interface JobRecoveryOptions {
  config: Config;
  queue: JobQueue;
  responder: BuildResponder;
  logger: Logger;
}

export class JobRecovery {
  constructor(private readonly options: JobRecoveryOptions) {}

  /** The saved jobs that run again, in their order (the others are answered here), and whether there were any. */
  async restore(): Promise<{ jobs: Job[]; saved: number }> {
    const { config, logger } = this.options;
    const jobs: Job[] = [];
    const all = await this.options.queue.load();
    for (const saved of all) {
      const { spec, restored } = restoredJob(saved);
      const job = new Job(spec, restored);
      if (saved.running) job.interruptions++;
      if (!repoNamed(config.repos, spec.repo)) {
        const known = Object.keys(config.repos).join(", ");
        this.fail(job, `the builder's config no longer has repo ${spec.repo} (it builds ${known}); the saved job cannot run`);
        continue;
      }
      if (job.interruptions >= MAX_INTERRUPTIONS) {
        this.fail(
          job,
          `the job was cut short ${job.interruptions} times (the builder stopped or crashed while building it${job.checkpoint ? `, last on host ${firstUnfinished(job) ?? "?"}` : ""}); not trying it again`,
        );
        continue;
      }
      logger.info({ jobId: job.id, ...spec, interruptions: job.interruptions, hostsDone: job.results.length }, "resuming a saved job");
      jobs.push(job);
    }
    return { jobs, saved: all.length };
  }

  /** Tells the requesters of each restored job that it is taken up again. */
  announce(entries: ReadonlyArray<{ job: Job; position: number }>): void {
    for (const { job, position } of entries) {
      this.options.responder.toJob(job, { type: "resumed", jobId: job.id, position, interruptions: job.interruptions });
    }
  }

  /** The builder is stopping for a restart (the queue suspended, the running job stopped): save everything, then tell every requester. */
  async interrupt(running: Job | null, queued: readonly Job[], why: string): Promise<void> {
    const jobs = [...(running ? [running] : []), ...queued];
    try {
      await this.options.queue.save();
    } catch (err) {
      // Without the saved queue nothing resumes: answer as a plain stop would.
      this.options.logger.error({ err }, "cannot save the job queue; cancelling its jobs instead");
      for (const job of jobs) {
        job.interrupted = false;
        this.options.responder.toJob(job, completedMessage(job, endedEarly(job, { status: "cancelled", error: `${why}, and the job queue could not be saved`, since: job.enqueuedAt })));
      }
      return;
    }
    const reason = `${why}; the job is saved and resumes when the builder is back`;
    for (const job of jobs) this.options.responder.toJob(job, { type: "interrupted", jobId: job.id, resumes: true, reason });
    this.options.logger.info({ jobs: jobs.length, file: this.options.queue.file }, "saved the job queue for the next start");
  }

  private fail(job: Job, error: string): void {
    this.options.responder.toJob(job, completedMessage(job, endedEarly(job, { status: "failure", error, since: job.enqueuedAt })));
    this.options.logger.warn({ jobId: job.id, ...job.spec, error }, "saved job completed as a failure");
  }
}

function firstUnfinished(job: Job): string | undefined {
  const done = new Set(job.results.map((r) => r.host));
  return job.checkpoint?.hosts.find((host) => !done.has(host));
}
