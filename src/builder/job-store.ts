/**
 * The durable queue: every accepted job (spec, requesters' reply subjects,
 * plan, per-host results so far, message number, interruptions) in
 * <stateDir>/jobs.json, so that a restart or a crash loses nothing that was
 * accepted. Written atomically; writes are serialised and coalesced (the
 * latest snapshot wins), and `save` resolves once a snapshot at least as
 * new as the caller's is on disk — the builder awaits it before it sends
 * `accepted`.
 */
import { rename } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { Job, RestoredJob, JobSpec } from "../job.js";
import type { Logger } from "../logger.js";
import { HostResultSchema } from "../protocol.js";
import { writeFileAtomicSync } from "../util/atomic-file.js";
import { readStateFile } from "../util/regular-file.js";

const SavedJobSchema = z.object({
  id: z.string().regex(/^j[0-9a-f]{10}$/),
  repo: z.string(),
  target: z.string(),
  ref: z.string().nullable(),
  enqueuedAt: z.number(),
  /** Whether it was running when saved: a job saved running was cut short. */
  running: z.boolean(),
  requesters: z.array(z.string()),
  seq: z.number().int().nonnegative(),
  interruptions: z.number().int().nonnegative(),
  checkpoint: z.object({ lockedUrl: z.string(), revision: z.string().nullable(), hosts: z.array(z.string()) }).nullable(),
  results: z.array(HostResultSchema),
});
export type SavedJob = z.infer<typeof SavedJobSchema>;

const JobsFileSchema = z.object({ version: z.literal(1), jobs: z.array(SavedJobSchema) });

/** `accepting`: requesters whose `accepted` waits for this very save. */
export function savedJob(job: Job, running: boolean, accepting: Iterable<string> = []): SavedJob {
  return {
    id: job.id,
    ...job.spec,
    enqueuedAt: job.enqueuedAt,
    running,
    requesters: [...new Set([...job.requesters, ...accepting])],
    seq: job.seq,
    interruptions: job.interruptions,
    checkpoint: job.checkpoint,
    results: [...job.results],
  };
}

export function restoredJob(saved: SavedJob): { spec: JobSpec; restored: RestoredJob } {
  const { repo, target, ref, ...rest } = saved;
  return { spec: { repo, target, ref }, restored: rest };
}

export interface JobStoreOptions {
  stateDir: string;
  logger: Logger;
  /** At most this many jobs are written (the queue's bound plus the running job). */
  maxJobs: number;
}

export class JobStore {
  readonly file: string;
  private latest: SavedJob[] | undefined;
  private writing: Promise<void> = Promise.resolve();
  private written = 0;
  private requested = 0;

  constructor(private readonly options: JobStoreOptions) {
    this.file = join(options.stateDir, "jobs.json");
  }

  /** The saved jobs in queue order (running job first). A damaged file is set aside, not fatal. */
  async load(): Promise<SavedJob[]> {
    const read = await readStateFile(this.file, JobsFileSchema);
    if (read.status === "missing") return [];
    // Unlike the other state files, not a fresh start: these are jobs someone asked for.
    if (read.status === "unreadable") throw read.error;
    if (read.status === "corrupt") {
      // Kept for the operator rather than overwritten by the next save.
      const aside = `${this.file}.damaged-${Date.now()}`;
      await rename(this.file, aside).catch(() => undefined);
      this.options.logger.error({ file: this.file, keptAs: aside }, "the saved job queue is unreadable; starting with an empty queue");
      return [];
    }
    return read.value.jobs;
  }

  /** Resolves once this snapshot (or a newer one) is on disk; rejects if writing failed. */
  save(jobs: SavedJob[]): Promise<void> {
    this.latest = jobs.slice(0, this.options.maxJobs);
    const ticket = ++this.requested;
    const next = this.writing.then(async () => {
      if (this.written >= ticket) return;
      const snapshot = this.latest;
      const upTo = this.requested;
      // Blocking: every `accepted` waits for this write, and on a busy event
      // loop (a build printing a flood of log) the async version's dozen
      // steps each wait their turn (request → accepted p99 36 ms against
      // 16 ms, docs/performance.md).
      writeFileAtomicSync(this.file, `${JSON.stringify({ version: 1, jobs: snapshot })}\n`, 0o600);
      this.written = upTo;
    });
    this.writing = next.catch(() => undefined);
    return next;
  }

  /** Waits for writes in flight. */
  async flush(): Promise<void> {
    await this.writing;
  }
}
