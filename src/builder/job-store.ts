/**
 * The durable queue's file: every accepted job (spec, requesters' reply
 * subjects, plan, per-host results so far, message number, interruptions)
 * in <stateDir>/jobs.json, so that a restart or a crash loses nothing that
 * was accepted. A StateFile (src/util/state-file.ts) written in place (two
 * slots in turn, each a header line and the queue's JSON: slot-file.ts),
 * by one coalescing writer, `save` resolving once a snapshot taken after
 * the call is on disk — the queue awaits it before a request is
 * acknowledged. A plain-JSON jobs.json (from before the slots) is read as
 * it is and replaced at the first write.
 */
import { rename } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { Job, RestoredJob, JobSpec } from "../job.js";
import type { Logger } from "../logger.js";
import { HostResultSchema } from "../protocol.js";
import { STATE_FILES } from "../state-files.js";
import { StateFile } from "../util/state-file.js";

/** The file's name under the state directory. */
export const JOBS_FILE = STATE_FILES.jobs;

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
  logger?: Logger | undefined;
  /** At most this many jobs are written (the queue's bound plus the running job). */
  maxJobs: number;
  /** The queue as it is now, running job first. */
  snapshot: () => SavedJob[];
  /** Told after every write: undefined when it worked, else why it failed. */
  onSaved?: ((error: string | undefined) => void) | undefined;
}

export class JobStore {
  readonly file: string;
  private readonly state: StateFile<z.infer<typeof JobsFileSchema>>;

  constructor(private readonly options: JobStoreOptions) {
    this.file = join(options.stateDir, JOBS_FILE);
    this.state = new StateFile({
      file: this.file,
      schema: JobsFileSchema,
      snapshot: () => ({ version: 1 as const, jobs: options.snapshot().slice(0, options.maxJobs) }),
      mode: 0o600,
      writer: "in-place",
      ...(options.onSaved ? { onSaved: options.onSaved } : {}),
    });
  }

  /** The saved jobs in queue order (running job first). A damaged file is set aside, not fatal. */
  async load(): Promise<SavedJob[]> {
    const read = await this.state.read();
    if (read.status === "missing") return [];
    // Unlike the other state files, not a fresh start: these are jobs someone asked for.
    if (read.status === "unreadable") throw read.error;
    if (read.status === "corrupt") {
      // Kept for the operator rather than overwritten by the next save.
      const aside = `${this.file}.damaged-${Date.now()}`;
      await rename(this.file, aside).catch(() => undefined);
      this.options.logger?.error({ file: this.file, keptAs: aside, problem: read.problem }, "the saved job queue is unreadable; starting with an empty queue");
      return [];
    }
    return read.value.jobs;
  }

  /** Resolves once the queue as it is at the write (at least as new as now) is on disk; rejects if writing failed. */
  save(): Promise<void> {
    return this.state.save();
  }

  /** Waits for writes in flight. */
  async flush(): Promise<void> {
    await this.state.flush();
  }
}
