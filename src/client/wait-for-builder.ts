/**
 * A request that arrives while no builder is listening — it restarts (an
 * upgrade, a crash) or reconnects after a NATS outage — is asked again with
 * backoff for a bounded time instead of failing at once: NATS's "no
 * responders" means nobody received it, so asking again cannot start a
 * second build. Anything else (a refused key or request, a rejection, a
 * builder that took the request and went silent) ends the wait at once.
 * Used by the CLI's `build` and the MCP server's `build` tool alike.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { NatsConnection } from "nats";
import { Backoff } from "../util/backoff.js";
import type { BuildResponse, FinalResponse } from "../protocol.js";
import { NoRespondersError, RequestAbortedError, requestBuild, type BuildTarget, type ExchangeOptions } from "./client.js";

export interface WaitForBuilder {
  /** Give up when no builder listens by this time (epoch ms). */
  until: number;
  signal?: AbortSignal | undefined;
  /** Told each time no builder was listening, before asking again. */
  onWaiting?: (err: NoRespondersError, retryInMs: number) => void;
}

/** First retries soon (a restart takes seconds), then no more than every 2 s. */
const ASK_AGAIN = { initialMs: 250, maxMs: 2_000 };

/** Runs `ask`, again after a pause for as long as it fails with no responders and time is left. */
export async function untilBuilderListens<T>(ask: () => Promise<T>, wait: WaitForBuilder): Promise<T> {
  const backoff = new Backoff(ASK_AGAIN);
  for (;;) {
    try {
      return await ask();
    } catch (err) {
      if (!(err instanceof NoRespondersError)) throw err;
      const pause = Math.min(backoff.next(), wait.until - Date.now());
      if (pause <= 0) throw err;
      wait.onWaiting?.(err, pause);
      try {
        await sleep(pause, undefined, { signal: wait.signal });
      } catch {
        throw new RequestAbortedError("stopped waiting for a builder");
      }
    }
  }
}

/** requestBuild (client.ts), asked again while no builder is listening. */
export function requestBuildWaiting(
  nc: NatsConnection,
  target: BuildTarget,
  options: ExchangeOptions<BuildResponse>,
  wait: Omit<WaitForBuilder, "signal">,
): Promise<FinalResponse> {
  return untilBuilderListens(() => requestBuild(nc, target, options), { ...wait, signal: options.signal });
}
