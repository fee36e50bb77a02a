/**
 * The builder's event stream. Everything that happens to a job is emitted
 * here once; requesters' messages, metrics and logs are all fed from it, so
 * observers never reach into the build code.
 */
import type { Job } from "./job.js";
import type { BuildResponse, Rejected } from "./protocol.js";

export type BuilderEvent =
  /** A protocol message was sent to the requesters of `job`. */
  | { type: "response"; job: Job; message: BuildResponse }
  /** A request was answered with `rejected` and never became a job. */
  | { type: "rejected"; subject: string; message: Rejected }
  /** The queue changed: a job was added, started, finished or removed. */
  | { type: "queue"; depth: number; running: Job | null }
  /**
   * An `all` job's evaluation pool ended (every host evaluated, or the job
   * stopped): how many worker processes it started, how many of those were
   * replaced past build.evalMaxMemory or died under a host (OOM killer,
   * crash, timeout), and the highest worker RSS seen.
   */
  | { type: "evaluation"; job: Job; processes: number; replacedForMemory: number; lost: number; peakRssBytes: number };

export type BuilderEventListener = (event: BuilderEvent) => void;

export class EventBus {
  private readonly listeners: BuilderEventListener[] = [];

  constructor(private readonly onListenerError: (err: unknown) => void = () => undefined) {}

  on(listener: BuilderEventListener): () => void {
    this.listeners.push(listener);
    return () => {
      const index = this.listeners.indexOf(listener);
      if (index !== -1) this.listeners.splice(index, 1);
    };
  }

  /** A throwing observer is reported and skipped; it never breaks a build. */
  emit(event: BuilderEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}
