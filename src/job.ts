/**
 * What a job is: the spec a request asked for, its requesters and how far
 * it has got. Shared vocabulary, so the event stream (and everyone who
 * observes it) can name a job without importing the builder.
 */
import { randomBytes } from "node:crypto";
import type { BuildProgress, EvaluationCounts } from "./protocol.js";

export interface JobSpec {
  repo: string;
  target: string;
  ref: string | null;
}

export class Job {
  readonly id = `j${randomBytes(5).toString("hex")}`;
  readonly requesters = new Set<string>();
  readonly enqueuedAt = Date.now();
  readonly abort = new AbortController();
  startedAt: number | undefined;
  /** What is being built now, for status replies and heartbeats. */
  currentHost: string | null = null;
  hostIndex = 0;
  totalHosts = 0;
  hostStartedAt: number | undefined;
  progress: BuildProgress | null = null;
  /** `all`: how far evaluating the hosts has got, while it runs (null: no evaluation). */
  evaluation: EvaluationCounts | null = null;
  /** How long the current host is expected to take, from its history. */
  expectedMs: number | null = null;

  constructor(readonly spec: JobSpec) {}

  get cancelled(): boolean {
    return this.abort.signal.aborted;
  }

  cancel(reason: string): void {
    if (!this.abort.signal.aborted) this.abort.abort(reason);
  }
}

