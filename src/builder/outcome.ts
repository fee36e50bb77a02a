/**
 * How a job ends, in one place: every `completed` message is made here,
 * whether the job ran its hosts (the job runner passes their results) or
 * ended before them: it failed to lock or plan, was cancelled while queued,
 * crashed, or a restarted builder gives up on it (recovery.ts).
 */
import type { Job } from "../job.js";
import { ALL_HOSTS, type Completed, type HostResult, type SourceLocation } from "../protocol.js";
import { boundedText } from "../util/log-tail.js";

export type JobOutcome = Pick<Completed, "status" | "revision" | "results" | "durationMs" | "error" | "location">;

/** What a failed nix call said beyond its message: the flake did not evaluate, and where. */
export type FailureDetail = { evalError?: boolean; location?: SourceLocation };

export interface EndedEarly {
  status: "failure" | "cancelled";
  error: string;
  /** Where the job's duration counts from. */
  since: number;
  /** The revision the job was locked at, when known (else its checkpoint's). */
  revision?: string | null;
  detail?: FailureDetail;
}

/**
 * A job that ends without building (the rest of) its hosts: the hosts
 * already done keep their results, every other host of its plan (or the
 * one host it asked for) gets `error`; an `all` job with no plan yet has no
 * host results, only the job's error.
 */
export function endedEarly(job: Job, ended: EndedEarly): JobOutcome {
  const { status, detail = {} } = ended;
  const hostStatus = status === "cancelled" ? "cancelled" : detail.evalError ? "eval_error" : "failure";
  const error = boundedText(ended.error);
  const location = status === "cancelled" ? undefined : detail.location;
  const done = new Map(job.results.map((r) => [r.host, r]));
  const hosts = job.checkpoint?.hosts ?? (job.spec.target === ALL_HOSTS ? [] : [job.spec.target]);
  const results: HostResult[] = hosts.map(
    (host) => done.get(host) ?? { host, status: hostStatus, durationMs: 0, error, ...(location ? { location } : {}) },
  );
  const revision = ended.revision ?? job.checkpoint?.revision ?? null;
  return { status, revision, results, durationMs: Date.now() - ended.since, error, ...(location ? { location } : {}) };
}

export function completedMessage(job: Job, outcome: JobOutcome): Completed {
  const message: Completed = { type: "completed", jobId: job.id, ...job.spec, ...outcome };
  if (message.error === undefined) delete message.error;
  if (message.location === undefined) delete message.location;
  return message;
}
