/**
 * Capped exponential backoff with jitter, for everything that waits for a
 * server to come back (NATS at start-up and on reconnect, Vault).
 */

export interface BackoffBounds {
  initialMs: number;
  maxMs: number;
}

export class Backoff {
  private attempt = 0;
  constructor(private readonly bounds: BackoffBounds) {}

  /**
   * Next delay: doubling up to the cap, with up to 50 % jitter taken off so
   * that many clients restarted together do not retry in lockstep.
   */
  next(): number {
    const ceiling = Math.min(this.bounds.maxMs, this.bounds.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling * (0.5 + Math.random() * 0.5));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * The wait between two tries: Node's own promise timer, under the name the
 * retry loops use. `delay(ms, undefined, { signal })` rejects with an
 * AbortError (and clears its timer) when the signal aborts.
 */
export { setTimeout as delay } from "node:timers/promises";
