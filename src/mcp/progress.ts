/**
 * Turns the builder's messages for one build into MCP progress
 * notifications: `progress` counts hosts, with the host being built worth
 * the fraction of its derivations nix has built (`total` is the job's host
 * count once known), and `message` is the line the CLI would print.
 *
 * MCP requires `progress` to grow with every notification, but nix's counts
 * can stand still (heartbeats, a phase change) or start over (a new
 * SetExpected): a value that would not grow is nudged a hundredth of the
 * way towards the end of the current host instead, so it grows without
 * ever claiming the host is done.
 */
import { ALL_HOSTS, type BuildResponse } from "../protocol.js";
import { describeMessage } from "../client/report.js";

export interface ProgressUpdate {
  progress: number;
  total?: number;
  message: string;
}

/** The host being built never counts as more than this much done before host_finished. */
const MAX_HOST_FRACTION = 0.99;
const NUDGE = 0.01;

export class BuildProgress {
  private total: number | undefined;
  private hostsDone = 0;
  private last = -1;

  constructor(target: string) {
    // One host is known to be one host before the builder says so.
    if (target !== ALL_HOSTS) this.total = 1;
  }

  /** The notification for `message`, or undefined when it has nothing to show. */
  update(message: BuildResponse): ProgressUpdate | undefined {
    const text = progressMessage(message);
    if (text === undefined) return undefined;
    const value = this.grow(this.valueFor(message));
    if (value === undefined) return undefined;
    return { progress: value, ...(this.total !== undefined ? { total: this.total } : {}), message: text };
  }

  /** No builder is listening yet and the request is asked again: nothing is done, but the wait is shown. */
  waiting(): ProgressUpdate | undefined {
    const value = this.grow(this.hostsDone);
    if (value === undefined) return undefined;
    return { progress: value, ...(this.total !== undefined ? { total: this.total } : {}), message: "waiting for a builder…" };
  }

  private valueFor(message: BuildResponse): number {
    switch (message.type) {
      case "job_started":
        this.total = message.hosts.length;
        return this.hostsDone;
      case "host_started":
        this.total = message.total;
        return message.index - 1;
      case "progress": {
        const { done, expected } = message.derivations;
        const fraction = expected > 0 ? Math.min(MAX_HOST_FRACTION, (MAX_HOST_FRACTION * done) / expected) : 0;
        return message.index - 1 + fraction;
      }
      case "host_finished":
        this.hostsDone = message.index;
        return message.index;
      default:
        return this.hostsDone;
    }
  }

  private grow(value: number): number | undefined {
    let next = value;
    if (next <= this.last) {
      const ceiling = this.hostsDone + MAX_HOST_FRACTION;
      next = this.last + Math.max(0, ceiling - this.last) * NUDGE;
      // Floating point eventually stops growing: say nothing rather than repeat a value.
      if (next <= this.last) return undefined;
    }
    this.last = next;
    return next;
  }
}

/** One line for the notification (a host_finished's head line only: its log tail belongs in the result). */
function progressMessage(message: BuildResponse): string | undefined {
  switch (message.type) {
    case "completed":
    case "rejected":
      // The tool's result says these.
      return undefined;
    case "heartbeat":
      // Heartbeats keep a client's request timeout from running out during a long quiet step.
      if (message.state === "queued") return describeMessage({ type: "queued", jobId: message.jobId, position: message.position })[0];
      return message.host ? `still building ${message.host}` : "still fetching the flake, listing or evaluating its hosts";
    default:
      return describeMessage(message)[0];
  }
}
