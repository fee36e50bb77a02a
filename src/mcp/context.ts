/**
 * What every tool works with: the lazily made NATS connection, the
 * client's timeouts, the logger (stderr), a signal that fires when the
 * server shuts down, and one question to every builder on build.discover,
 * build.status or build.cancel.
 */
import { askEveryBuilder, type GatherOptions } from "../client/gather.js";
import { HomelabDeployError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { AnswerTo, ControlName } from "../protocol.js";
import type { NatsLink } from "./nats-link.js";

export interface ToolContext {
  link: NatsLink;
  logger: Logger;
  /** No answer (or acceptance) within this long: nobody serves the subject. */
  ackTimeoutMs: number;
  /** An accepted build that sends nothing, not even a heartbeat, for this long is given up on (0: never). */
  idleTimeoutMs: number;
  /** A `build` keeps asking this long while no builder is listening (see client/wait-for-builder.ts). */
  waitForBuilderMs: number;
  /** Fires when the server stops: every wait ends. */
  shutdown: AbortSignal;
}

/** The builder answered a control request with `rejected`. */
export class BuilderRefusedError extends HomelabDeployError {}


/**
 * Asks every builder one question (src/client/gather.ts) and returns their
 * answers, one per builder (for cancel: the holder's), or throws an error
 * that says why there is none.
 */
export async function askBuilders<N extends ControlName>(
  context: ToolContext,
  name: N,
  body: Record<string, unknown> | undefined,
  options: { signal: AbortSignal; ackTimeoutMs?: number; gather?: Pick<GatherOptions, "quietMs" | "maxAfterFirstMs"> },
): Promise<Array<AnswerTo<N>>> {
  const nc = await context.link.connection();
  const combined = await askEveryBuilder(nc, name, body, {
    ackTimeoutMs: options.ackTimeoutMs ?? context.ackTimeoutMs,
    signal: AbortSignal.any([options.signal, context.shutdown]),
    ...options.gather,
  });
  if (!combined.ok) throw new BuilderRefusedError(`the builder refused build.${name}: ${combined.rejected.error}`);
  return combined.answers;
}
