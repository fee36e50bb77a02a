/**
 * What a job is: the spec a request asked for, its requesters and how far
 * it has got. Shared vocabulary, so the event stream (and everyone who
 * observes it) can name a job without importing the builder.
 */
import { randomBytes } from "node:crypto";
import type { BuildProgress, EvaluationCounts, HostResult } from "./protocol.js";

export interface JobSpec {
  repo: string;
  target: string;
  ref: string | null;
}

/** How far a job had got when it was saved: what a resumed run starts from. */
export interface JobCheckpoint {
  lockedUrl: string;
  revision: string | null;
  hosts: string[];
}

/** A job as a restarted builder takes it up from the saved queue. */
export interface RestoredJob {
  id: string;
  enqueuedAt: number;
  requesters: readonly string[];
  seq: number;
  interruptions: number;
  checkpoint: JobCheckpoint | null;
  results: readonly HostResult[];
}

export class Job {
  readonly id: string;
  readonly requesters = new Set<string>();
  readonly enqueuedAt: number;
  readonly abort = new AbortController();
  /** The last message number sent to the job's requesters (protocol `seq`). */
  seq = 0;
  /** Times a stop or crash cut the job short. */
  interruptions = 0;
  /** Set when the builder stops for a restart: the job is saved, not finished. */
  interrupted = false;
  /** The revision and hosts the job was planned with, once known. */
  checkpoint: JobCheckpoint | null = null;
  /** Hosts finished so far, in order; a resumed job skips them. */
  readonly results: HostResult[] = [];
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

  constructor(
    readonly spec: JobSpec,
    restored?: RestoredJob,
  ) {
    this.id = restored?.id ?? `j${randomBytes(5).toString("hex")}`;
    this.enqueuedAt = restored?.enqueuedAt ?? Date.now();
    if (restored) {
      for (const reply of restored.requesters) this.requesters.add(reply);
      this.seq = restored.seq;
      this.interruptions = restored.interruptions;
      this.checkpoint = restored.checkpoint;
      this.results.push(...restored.results);
    }
  }

  get cancelled(): boolean {
    return this.abort.signal.aborted;
  }

  cancel(reason: string): void {
    if (!this.abort.signal.aborted) this.abort.abort(reason);
  }
}

