/**
 * The requester side of the protocol, shared by the CLI, the scheduler and
 * the MCP server. A requester may not receive on `_INBOX` under the plan's
 * permissions, so it listens on its own `build.responses.<unique id>`,
 * subscribes *before* publishing, and stops listening at the final message.
 */
import { ErrorCode, NatsError, nuid, type Msg, type NatsConnection, type Subscription } from "nats";
import type { z } from "zod";
import { ConnectionError, NoBuilderError, HomelabDeployError } from "../errors.js";
import { parseJsonAs } from "../util/json.js";
import { GAP_WAIT_MS, GapWait, SeqOrder } from "./sequence.js";
import {
  BuildResponseSchema,
  RESPONSE_PREFIX,
  buildSubject,
  isFinal,
  type BuildResponse,
  type FinalResponse,
} from "../protocol.js";

export interface BuildTarget {
  repo: string;
  target: string;
  ref?: string | undefined;
}

export interface ExchangeOptions<T> {
  /** No acknowledgement within this long means nobody is serving the subject. */
  ackTimeoutMs: number;
  /**
   * After the acknowledgement, silence for this long means the builder is
   * gone (it sends heartbeats to everyone waiting). 0 waits forever.
   */
  idleTimeoutMs?: number;
  signal?: AbortSignal;
  /** Every valid message, in order. */
  onMessage?: (message: T) => void;
  /** A message that did not match the protocol (reported, then ignored). */
  onInvalid?: (raw: string) => void;
  /** Numbered messages that never arrived although later ones did (after waiting `gapWaitMs` for resends). */
  onGap?: (missing: number[]) => void;
  /**
   * How long messages after a gap wait for the missing ones before they
   * are handed on without them (the builder resends for half a minute
   * after a NATS outage).
   */
  gapWaitMs?: number;
}

/** The caller gave up waiting (MCP cancel, Ctrl-C). The build goes on for its other requesters. */
export class RequestAbortedError extends HomelabDeployError {}

/** The builder acknowledged the request and then went silent (restarted, or lost its connection for good). */
export class BuilderSilentError extends HomelabDeployError {}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A fresh reply subject under `prefix` (the responders' own: "build.responses." for builders). */
export function newReplySubject(prefix: string = RESPONSE_PREFIX): string {
  return `${prefix}${nuid.next()}`;
}

/** NATS said nobody subscribes to the request's subject: nobody got it, so asking again is safe. */
export class NoRespondersError extends NoBuilderError {}

interface Exchange<T> {
  subject: string;
  payload: Uint8Array;
  /** What every answer must look like; anything else is reported and ignored. */
  schema: z.ZodType<T>;
  /** First message that proves a builder took the request. */
  isAck: (message: T) => boolean;
  isFinal: (message: T) => boolean;
  /** Puts messages in `seq` order, dropping duplicates (see SeqOrder). */
  sequence?: SeqOrder<T>;
  /** What to say when the builder goes silent, if more is known than silence. */
  describeSilence?: (seconds: number) => string | undefined;
  /** Reply subjects are made under this prefix (default the builders' "build.responses."). */
  replyPrefix?: string;
}

/**
 * Publishes one request and follows its answers until the final one.
 * Rejects with NoBuilderError when NATS reports no responders or nothing
 * acknowledges the request in time.
 */
export async function exchange<T>(nc: NatsConnection, request: Exchange<T>, options: ExchangeOptions<T>): Promise<T> {
  const reply = newReplySubject(request.replyPrefix);
  let subscription: Subscription | undefined;
  let ackTimer: NodeJS.Timeout | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  let gaps: GapWait<T> | undefined;
  let onAbort: (() => void) | undefined;
  const cleanup = () => {
    clearTimeout(ackTimer);
    clearTimeout(idleTimer);
    gaps?.stop();
    if (onAbort) options.signal?.removeEventListener("abort", onAbort);
    subscription?.unsubscribe();
  };
  const result = new Promise<T>((resolve, reject) => {
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    onAbort = () => fail(new RequestAbortedError("stopped waiting for the builder's answer"));
    let acknowledged = false;
    const watchSilence = () => {
      const idle = options.idleTimeoutMs ?? 0;
      if (!acknowledged || idle <= 0) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        const seconds = Math.round(idle / 1000);
        fail(
          new BuilderSilentError(
            request.describeSilence?.(seconds) ??
              `the builder accepted the request on ${request.subject} and then sent nothing for ${seconds}s; it may have restarted (the job may still be queued or running: check \`homelab-deploy status\`)`,
          ),
        );
      }, idle);
    };
    let done = false;
    const deliver = (message: T) => {
      if (done) return;
      options.onMessage?.(message);
      if (request.isFinal(message)) {
        done = true;
        cleanup();
        resolve(message);
      }
    };
    // Messages held behind a gap wait this long for the resend that fills it.
    gaps =
      request.sequence &&
      new GapWait(request.sequence, options.gapWaitMs ?? GAP_WAIT_MS, ({ messages, missing }) => {
        if (missing.length > 0) options.onGap?.(missing);
        for (const message of messages) deliver(message);
      });
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    subscription = nc.subscribe(reply, {
      callback: (err, msg) => {
        if (err) return fail(refusedRequest(err, request.subject));
        if (isNoResponders(msg)) {
          return fail(noBuilderListening(request.subject));
        }
        const message = parseJsonAs(decoder.decode(msg.data), request.schema);
        if (message === undefined) return options.onInvalid?.(decoder.decode(msg.data));
        if (request.isAck(message)) {
          clearTimeout(ackTimer);
          acknowledged = true;
        }
        watchSilence();
        const ready = request.sequence ? request.sequence.push(message) : [message];
        for (const each of ready) deliver(each);
        if (!done) gaps?.check();
      },
    });
    watchRefusals(subscription, request.subject);
    ackTimer = setTimeout(() => {
      fail(noBuilderAnswered(request.subject, options.ackTimeoutMs));
    }, options.ackTimeoutMs);
  });
  // NATS can refuse the reply subscription (a permissions violation) while
  // the flush below is still waiting for its PONG: the promise is then
  // rejected before anyone awaits it, and Node would end the process as an
  // unhandled rejection (exit 1) instead of the caller reporting the refusal
  // (exit 2). The caller still gets the rejection from the returned promise.
  result.catch(() => undefined);
  try {
    // The subscription must be known to the server before anyone can answer.
    await nc.flush();
    // A caller that gave up meanwhile must not leave a build nobody follows.
    if (options.signal?.aborted) return await result;
    nc.publish(request.subject, request.payload, { reply });
  } catch (err) {
    cleanup();
    throw err;
  }
  return result;
}

export function noBuilderAnswered(subject: string, ackTimeoutMs: number, responder = "builder"): NoBuilderError {
  const seconds = Math.round(ackTimeoutMs / 1000);
  return new NoBuilderError(`no ${responder} answered on ${subject} within ${seconds}s; is the ${responder} running and connected to this NATS server?`);
}

/** NATS answered the request itself: nobody subscribes to `subject`. */
export function noBuilderListening(subject: string, responder = "builder"): NoRespondersError {
  return new NoRespondersError(`no ${responder} is listening on ${subject} (NATS reported no responders); is the ${responder} running?`);
}

/**
 * Has nats.js hand this subscription the server's refusal to publish the
 * request on `subject`, as its own requests do: without it a refused
 * request is silently dropped and the requester waits out its ack
 * timeout. (`requestSubject` is how nats.js matches a publish permission
 * error to a subscription; it is not in the public typings.)
 */
export function watchRefusals(subscription: Subscription, subject: string): void {
  (subscription as Subscription & { requestSubject?: string }).requestSubject = subject;
}

/** A subscription error, as the error to report: a permission refusal says so (and is not worth retrying). */
export function refusedRequest(err: Error, subject: string): Error {
  if (!(err instanceof NatsError) || err.code !== ErrorCode.PermissionsViolation) return err;
  // nats.js quotes the server's -ERR text.
  const said = err.message.replace(/^'(.*)'$/, "$1");
  return new ConnectionError(
    `NATS refused the request on ${subject} (${said}): this user's permissions do not allow it (see docs/nats-permissions.md)`,
    "refused",
    { cause: err },
  );
}

export function isNoResponders(msg: Msg): boolean {
  return msg.data.length === 0 && msg.headers?.code === 503;
}

export function requestPayload(body: Record<string, unknown> | undefined): Uint8Array {
  if (!body || Object.keys(body).length === 0) return new Uint8Array();
  return encoder.encode(JSON.stringify(body));
}

/** Requests a build and follows it to `completed` or `rejected`. */
export function requestBuild(
  nc: NatsConnection,
  target: BuildTarget,
  options: ExchangeOptions<BuildResponse>,
): Promise<FinalResponse> {
  // Waiting through a builder restart: `interrupted` until `resumed`.
  let interrupted: { jobId: string } | undefined;
  const onMessage = (message: BuildResponse) => {
    if (message.type === "interrupted") interrupted = message;
    if (message.type === "resumed") interrupted = undefined;
    options.onMessage?.(message);
  };
  return exchange<BuildResponse>(
    nc,
    {
      subject: buildSubject(target.repo, target.target),
      payload: requestPayload(target.ref ? { ref: target.ref } : undefined),
      schema: BuildResponseSchema,
      isAck: (m) => m.type === "accepted" || m.type === "rejected",
      isFinal,
      sequence: new SeqOrder<BuildResponse>(),
      describeSilence: (seconds) =>
        interrupted
          ? `the builder stopped for a restart and has not come back within ${seconds}s; job ${interrupted.jobId} is saved and will run when the builder returns (\`homelab-deploy status\` shows it then)`
          : undefined,
    },
    { ...options, onMessage },
  ) as Promise<FinalResponse>;
}
