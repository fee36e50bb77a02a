/**
 * What every tool works with: the lazily made NATS connection, the
 * client's timeouts, the logger (stderr), a signal that fires when the
 * server shuts down, and one question to the builder on build.discover,
 * build.status or build.cancel.
 */
import { requestControl } from "../client/client.js";
import { HomelabDeployError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { AnswerTo, ControlName, ControlResponse } from "../protocol.js";
import type { NatsLink } from "./nats-link.js";

export interface ToolContext {
  link: NatsLink;
  logger: Logger;
  /** No answer (or acceptance) within this long: nobody serves the subject. */
  ackTimeoutMs: number;
  /** An accepted build that sends nothing, not even a heartbeat, for this long is given up on (0: never). */
  idleTimeoutMs: number;
  /** Fires when the server stops: every wait ends. */
  shutdown: AbortSignal;
}

/** The builder answered a control request with `rejected`. */
export class BuilderRefusedError extends HomelabDeployError {}


/** Asks the builder one question and returns its answer, or throws an error that says why there is none. */
export async function askBuilder<N extends ControlName>(
  context: ToolContext,
  name: N,
  body: Record<string, unknown> | undefined,
  options: { signal: AbortSignal; ackTimeoutMs?: number },
): Promise<AnswerTo<N>> {
  const nc = await context.link.connection();
  const answer: ControlResponse = await requestControl(nc, name, body, {
    ackTimeoutMs: options.ackTimeoutMs ?? context.ackTimeoutMs,
    signal: AbortSignal.any([options.signal, context.shutdown]),
  });
  if (answer.type === "rejected") throw new BuilderRefusedError(`the builder refused build.${name}: ${answer.error}`);
  return answer as AnswerTo<N>;
}
