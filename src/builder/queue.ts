/**
 * The job queue: FIFO, one job at a time, identical queued requests joined,
 * bounded, and durable: it owns <stateDir>/jobs.json (job-store.ts), so
 * that "accepted means saved" lives in one place. A request is enqueued,
 * the queue saved (one write for every request that arrived meanwhile: a
 * group commit, written in place with the flush off the event loop), and only then
 * acknowledged and made a requester of its job; a job is handed out to run
 * only once every requester it waits for was acknowledged, so nobody hears
 * of a job before its `accepted`. Running nix and talking to requesters is
 * the builder's business.
 */
import { Job, type JobSpec } from "../job.js";
import type { Logger } from "../logger.js";
import { JobStore, savedJob, type SavedJob } from "./job-store.js";

export type EnqueueResult =
  | { accepted: true; job: Job; position: number; joined: boolean }
  | { accepted: false; reason: "queue_full" | "too_many_requesters" | "closed" }
  /** The job could not be saved: nothing was queued for this requester. */
  | { accepted: false; reason: "unsaved"; error: unknown };

/** Sends `accepted` (or whatever acknowledges the request): called once the job is saved, before anything else of it is sent. */
export type Acknowledge = (job: Job, position: number, joined: boolean) => void;

export function sameSpec(a: JobSpec, b: JobSpec): boolean {
  return a.repo === b.repo && a.target === b.target && a.ref === b.ref;
}

export interface JobQueueOptions {
  maxQueue: number;
  maxRequestersPerJob?: number;
  /** Where jobs.json goes; without it the queue lives in memory only. */
  stateDir?: string;
  logger?: Logger;
  /** Told after every write of jobs.json: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
}

export class JobQueue {
  private readonly pending: Job[] = [];
  private runningJob: Job | null = null;
  private waiter: (() => void) | null = null;
  private closed = false;
  /** Requesters saved with their job but not yet acknowledged: they hear nothing of it until then. */
  private readonly accepting = new Map<Job, Set<string>>();
  private readonly store: JobStore | undefined;
  private readonly maxRequestersPerJob: number;

  constructor(private readonly options: JobQueueOptions) {
    this.maxRequestersPerJob = options.maxRequestersPerJob ?? 1024;
    this.store =
      options.stateDir === undefined
        ? undefined
        : new JobStore({ stateDir: options.stateDir, maxJobs: options.maxQueue + 1, logger: options.logger, snapshot: () => this.snapshot(), onSaved: options.onSaved });
  }

  get file(): string | undefined {
    return this.store?.file;
  }

  get running(): Job | null {
    return this.runningJob;
  }

  get queued(): readonly Job[] {
    return this.pending;
  }

  get depth(): number {
    return this.pending.length;
  }

  /** Jobs that run before the queued job at `index`. */
  positionOf(index: number): number {
    return index + (this.runningJob ? 1 : 0);
  }

  /**
   * Queues the request (or joins an identical queued job), saves the
   * queue, then calls `acknowledge` and makes `requester` one of the job's.
   * Resolves once that is done, or with why it was not.
   */
  async enqueue(spec: JobSpec, requester: string, acknowledge: Acknowledge = () => undefined): Promise<EnqueueResult> {
    if (this.closed) return { accepted: false, reason: "closed" };
    const index = this.pending.findIndex((job) => sameSpec(job.spec, spec));
    let job = this.pending[index];
    const joined = job !== undefined;
    if (job) {
      const waiting = job.requesters.size + (this.accepting.get(job)?.size ?? 0);
      if (waiting >= this.maxRequestersPerJob && !job.requesters.has(requester)) return { accepted: false, reason: "too_many_requesters" };
    } else {
      if (this.pending.length >= this.options.maxQueue) return { accepted: false, reason: "queue_full" };
      job = new Job(spec);
      this.pending.push(job);
    }
    const position = this.positionOf(joined ? index : this.pending.length - 1);
    const accepting = this.accepting.get(job) ?? new Set<string>();
    accepting.add(requester);
    this.accepting.set(job, accepting);
    if (!joined) this.wake();
    try {
      await this.store?.save();
    } catch (error) {
      this.settle(job, requester);
      // Refused means not built: a job nobody else waits for is dropped,
      // and one the idle builder already took up is stopped.
      if (!joined && job.requesters.size === 0) {
        const at = this.pending.indexOf(job);
        if (at !== -1) this.pending.splice(at, 1);
        else if (this.runningJob === job) job.cancel("the builder cannot save its job queue");
      }
      return { accepted: false, reason: "unsaved", error };
    }
    acknowledge(job, position, joined);
    job.requesters.add(requester);
    this.settle(job, requester);
    return { accepted: true, job, position, joined };
  }

  /** Puts a job from the saved queue at the end (saved jobs are restored before any request is taken). */
  restore(job: Job): void {
    this.pending.push(job);
    this.wake();
  }

  /** Waits for the next job whose requesters were all told `accepted`, and marks it running; null once the queue is closed. */
  async take(): Promise<Job | null> {
    if (this.closed) return null;
    if (this.runningJob) throw new Error("take() called while a job is still running");
    for (;;) {
      const job = this.closed ? undefined : this.pending.shift();
      if (job) {
        job.startedAt = Date.now();
        this.runningJob = job;
        while (this.accepting.has(job)) await new Promise<void>((resolve) => (this.waiter = resolve));
        return job;
      }
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  /** The job is done; the queue is saved soon. A job stopped for a restart stays in the saved queue. */
  finish(job: Job): void {
    if (this.runningJob === job && !job.interrupted) this.runningJob = null;
    this.saveSoon();
  }

  /** Takes a queued job out (cancel); the running job is not touched here. */
  remove(jobId: string): Job | undefined {
    const index = this.pending.findIndex((job) => job.id === jobId);
    if (index === -1) return undefined;
    const [job] = this.pending.splice(index, 1);
    this.saveSoon();
    return job;
  }

  /** No more jobs; returns the ones still queued so they can be answered, and forgets them. */
  close(): Job[] {
    this.closed = true;
    const dropped = this.pending.splice(0);
    this.wake();
    return dropped;
  }

  /** No more jobs, for a restart: the queued ones stay in the saved queue, and are returned. */
  suspend(): Job[] {
    this.closed = true;
    this.wake();
    return [...this.pending];
  }

  /** Loads the saved queue (running job first); see JobStore.load. */
  async load(): Promise<SavedJob[]> {
    return this.store ? await this.store.load() : [];
  }

  /** Saves the queue now; resolves once it is on disk, rejects if writing failed. */
  save(): Promise<void> {
    return this.store?.save() ?? Promise.resolve();
  }

  /** Saves the queue soon (a checkpoint, a job done); a failure is logged. */
  saveSoon(): void {
    this.save().catch((err: unknown) => this.options.logger?.error({ err }, "cannot save the job queue"));
  }

  /** Waits for writes in flight. */
  async flush(): Promise<void> {
    await this.store?.flush();
  }

  private snapshot(): SavedJob[] {
    const of = (job: Job) => this.accepting.get(job) ?? [];
    const running = this.runningJob ? [savedJob(this.runningJob, true, of(this.runningJob))] : [];
    return [...running, ...this.pending.map((job) => savedJob(job, false, of(job)))];
  }

  private settle(job: Job, requester: string): void {
    const accepting = this.accepting.get(job);
    accepting?.delete(requester);
    if (accepting?.size === 0) {
      this.accepting.delete(job);
      if (this.runningJob === job) this.wake();
    }
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}
