/**
 * The job queue: FIFO, one job at a time, identical queued requests joined,
 * bounded. Pure bookkeeping: running nix and talking to requesters is the
 * builder's business.
 */
import { Job, type JobSpec } from "../job.js";

export { Job, type JobSpec };

export type EnqueueResult =
  | { accepted: true; job: Job; position: number; joined: boolean }
  | { accepted: false; reason: "queue_full" | "too_many_requesters" | "closed" };

export function sameSpec(a: JobSpec, b: JobSpec): boolean {
  return a.repo === b.repo && a.target === b.target && a.ref === b.ref;
}

export class JobQueue {
  private readonly pending: Job[] = [];
  private runningJob: Job | null = null;
  private waiter: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly maxQueue: number,
    private readonly maxRequestersPerJob = 1024,
  ) {}

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

  enqueue(spec: JobSpec, requester: string): EnqueueResult {
    if (this.closed) return { accepted: false, reason: "closed" };
    const index = this.pending.findIndex((job) => sameSpec(job.spec, spec));
    const existing = this.pending[index];
    if (existing) {
      if (existing.requesters.size >= this.maxRequestersPerJob && !existing.requesters.has(requester)) {
        return { accepted: false, reason: "too_many_requesters" };
      }
      existing.requesters.add(requester);
      return { accepted: true, job: existing, position: this.positionOf(index), joined: true };
    }
    if (this.pending.length >= this.maxQueue) return { accepted: false, reason: "queue_full" };
    const job = new Job(spec);
    job.requesters.add(requester);
    this.pending.push(job);
    const position = this.positionOf(this.pending.length - 1);
    this.wake();
    return { accepted: true, job, position, joined: false };
  }

  /** Puts a job from the saved queue at the end (saved jobs are restored before any request is taken). */
  restore(job: Job): void {
    this.pending.push(job);
    this.wake();
  }

  /** Waits for the next job and marks it running; null once the queue is closed. */
  async take(): Promise<Job | null> {
    if (this.runningJob) throw new Error("take() called while a job is still running");
    for (;;) {
      const job = this.pending.shift();
      if (job) {
        job.startedAt = Date.now();
        this.runningJob = job;
        return job;
      }
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  finish(job: Job): void {
    if (this.runningJob === job) this.runningJob = null;
  }

  /** Takes a queued job out (cancel); the running job is not touched here. */
  remove(jobId: string): Job | undefined {
    const index = this.pending.findIndex((job) => job.id === jobId);
    if (index === -1) return undefined;
    const [job] = this.pending.splice(index, 1);
    return job;
  }

  /** No more jobs; returns the ones still queued so they can be answered. */
  close(): Job[] {
    this.closed = true;
    const dropped = this.pending.splice(0);
    this.wake();
    return dropped;
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}
