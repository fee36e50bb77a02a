/**
 * One request, answered by every daemon that serves its subject, and the
 * answers gathered: the first must come within the ack timeout, the rest
 * until nothing more arrives for a quiet period (bounded by a maximum
 * after the first), or until the caller says it has all it expects. Used
 * for the builders' control requests (`build.discover`, `build.status`,
 * `build.cancel`, `build.history`: builders of one queue group share build
 * requests, but each answers these) and by any requester that asks many
 * daemons at once (e.g. deploy listeners on `deploy.discover`, replies
 * under `deploy.responses.`).
 *
 * Hand-written rather than nats.js 2.x's `nc.requestMany`, which was tried
 * against nats-server with the plan's permissions. With the connect option
 * `inboxPrefix: "build.responses"` it does work (its muxed inbox
 * `build.responses.<id>.*` is allowed, the jitter strategy honours
 * `jitter`, and stopping its iterator aborts it), but:
 * - the reply prefix belongs to the connection, not to the request, and a
 *   responder may publish only under its own prefix (builders
 *   `build.responses.>`, deploy listeners `deploy.responses.>`): a
 *   deployer that asks both on its one connection gets nothing from one
 *   family (the server refuses their answers; the request just times out);
 * - `maxWait` bounds only the wait for the first answer: after it, each
 *   answer restarts the jitter timer, so a daemon that keeps answering
 *   holds the request open without limit (no maximum after the first);
 * - without mux (`noMux`) the jitter is fixed at 300 ms whatever is asked.
 */
import type { NatsConnection, Subscription } from "nats";
import type { z } from "zod";
import { parseJsonAs } from "../util/json.js";
import {
  ControlResponseSchema,
  RESPONSE_PREFIX,
  type AnswerTo,
  type ControlName,
  type ControlResponse,
  type HistoryResponse,
  type Rejected,
} from "../protocol.js";
import {
  RequestAbortedError,
  isNoResponders,
  newReplySubject,
  noBuilderAnswered,
  noBuilderListening,
  refusedRequest,
  requestPayload,
  watchRefusals,
} from "./client.js";

export interface GatherOptions<T = ControlResponse> {
  /** No answer at all within this long means nobody serves the subject. */
  ackTimeoutMs: number;
  /** Stop this long after the last answer. */
  quietMs?: number;
  /** Stop at the latest this long after the first answer. */
  maxAfterFirstMs?: number;
  signal?: AbortSignal;
  onInvalid?: (raw: string) => void;
  /** Every valid answer as it arrives (e.g. to show progress, or to put a stream in order). */
  onAnswer?: (answer: T) => void;
  /** True once every answer expected is in: stop without waiting for the quiet period. */
  complete?: (answers: readonly T[]) => boolean;
  /** Stops the wait with the answers so far (unlike `signal`, which rejects): the caller decided it has them all. */
  stop?: AbortSignal;
}

export interface GatherRequest<T> {
  subject: string;
  body?: Record<string, unknown> | undefined;
  /**
   * Where the answers come back: a fresh subject under this prefix
   * ("build.responses.", "deploy.responses."). The responders may publish
   * only there, and the requester may subscribe only there.
   */
  replyPrefix: string;
  /** What every answer must look like; anything else goes to onInvalid. */
  schema: z.ZodType<T>;
  /** What the daemons are called in errors ("builder", "listener"). */
  responders?: string;
}

/** Long enough for builders on one NATS server to answer a cheap question; short enough not to be noticed. */
export const DEFAULT_QUIET_MS = 300;
export const DEFAULT_MAX_AFTER_FIRST_MS = 3_000;

const decoder = new TextDecoder();

/**
 * Every answer that arrived, in arrival order. Rejects with NoBuilderError
 * when none does (no responders, or nothing within the ack timeout), with
 * ConnectionError (refused) when NATS refuses the request or the reply
 * subject to this user, and with RequestAbortedError on `signal`.
 */
export async function gather<T>(nc: NatsConnection, request: GatherRequest<T>, options: GatherOptions<T>): Promise<T[]> {
  const { subject, responders = "builder" } = request;
  const reply = newReplySubject(request.replyPrefix);
  const quietMs = options.quietMs ?? DEFAULT_QUIET_MS;
  const maxAfterFirstMs = options.maxAfterFirstMs ?? DEFAULT_MAX_AFTER_FIRST_MS;
  const answers: T[] = [];
  let subscription: Subscription | undefined;
  let ackTimer: NodeJS.Timeout | undefined;
  let maxTimer: NodeJS.Timeout | undefined;
  let quietTimer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  let onStop: (() => void) | undefined;
  const cleanup = () => {
    clearTimeout(ackTimer);
    clearTimeout(maxTimer);
    clearTimeout(quietTimer);
    if (onAbort) options.signal?.removeEventListener("abort", onAbort);
    if (onStop) options.stop?.removeEventListener("abort", onStop);
    subscription?.unsubscribe();
  };
  const result = new Promise<T[]>((resolve, reject) => {
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const done = () => {
      cleanup();
      resolve(answers);
    };
    onAbort = () => fail(new RequestAbortedError(`stopped waiting for the ${responders}s' answers`));
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    onStop = done;
    options.stop?.addEventListener("abort", onStop, { once: true });
    subscription = nc.subscribe(reply, {
      callback: (err, msg) => {
        if (err) return fail(refusedRequest(err, subject));
        if (isNoResponders(msg)) {
          if (answers.length > 0) return done();
          return fail(noBuilderListening(subject, responders));
        }
        const answer = parseJsonAs(decoder.decode(msg.data), request.schema);
        if (answer === undefined) return options.onInvalid?.(decoder.decode(msg.data));
        if (answers.length === 0) {
          clearTimeout(ackTimer);
          maxTimer = setTimeout(done, maxAfterFirstMs);
        }
        answers.push(answer);
        options.onAnswer?.(answer);
        if (options.complete?.(answers)) return done();
        clearTimeout(quietTimer);
        quietTimer = setTimeout(done, quietMs);
      },
    });
    watchRefusals(subscription, subject);
    ackTimer = setTimeout(() => fail(noBuilderAnswered(subject, options.ackTimeoutMs, responders)), options.ackTimeoutMs);
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
    if (options.signal?.aborted) return await result;
    nc.publish(subject, requestPayload(request.body), { reply });
  } catch (err) {
    cleanup();
    throw err;
  }
  return result;
}

/** Every builder's answer to one control request, in arrival order. */
export function gatherControl(
  nc: NatsConnection,
  name: ControlName,
  body: Record<string, unknown> | undefined,
  options: GatherOptions,
): Promise<ControlResponse[]> {
  // A builder answers with its own type or `rejected`; anything else is not an answer to this question.
  const schema = ControlResponseSchema.refine((answer) => answer.type === "rejected" || answer.type === name);
  return gather(nc, { subject: `build.${name}`, body, replyPrefix: RESPONSE_PREFIX, schema }, options);
}

/**
 * What the gathered answers say together. The typed answers when there are
 * any, one per builder (a builder that answered twice counts once), sorted
 * by builder name; for `cancel`, the holder's answer — the others' `unknown_job`
 * only means they do not have the job. Otherwise the refusal: every builder
 * refused (a bad request is refused alike by all), or no builder has the job.
 */
export type Combined<N extends ControlName> = { ok: true; answers: Array<AnswerTo<N>>; builders: number } | { ok: false; rejected: Rejected; builders: number };

export function combineAnswers<N extends ControlName>(name: N, gathered: readonly ControlResponse[]): Combined<N> {
  const typed = gathered.filter((a): a is AnswerTo<N> => a.type === name);
  const rejected = gathered.filter((a): a is Rejected => a.type === "rejected");
  if (typed.length > 0) {
    const answers = name === "cancel" ? typed.slice(0, 1) : name === "history" ? mergeHistories(typed) : uniqueByBuilder(typed);
    return { ok: true, answers, builders: gathered.length };
  }
  const first = rejected.find((r) => r.code !== "unknown_job") ?? (rejected[0] as Rejected);
  if (first.code === "unknown_job" && rejected.length > 1) {
    return { ok: false, rejected: { ...first, error: `${first.error}; none of the ${rejected.length} builders that answered has it` }, builders: gathered.length };
  }
  return { ok: false, rejected: first, builders: gathered.length };
}

/**
 * Builders of one group each keep the history of what they built: one
 * answer with every builder's entries, newest first (as a single builder's).
 */
function mergeHistories<T>(answers: T[]): T[] {
  const histories = answers as unknown as HistoryResponse[];
  if (histories.length <= 1) return answers;
  const entries = histories.flatMap((h) => h.entries).sort((a, b) => b.finishedAt.localeCompare(a.finishedAt));
  return [{ ...(histories[0] as HistoryResponse), entries }] as unknown as T[];
}

function uniqueByBuilder<T>(answers: T[]): T[] {
  const byName = new Map<string, T>();
  for (const answer of answers) {
    const builder = (answer as { builder?: string }).builder ?? "";
    byName.set(builder, answer);
  }
  return [...byName.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, answer]) => answer);
}

/** Asks every builder and combines their answers. */
export async function askEveryBuilder<N extends ControlName>(
  nc: NatsConnection,
  name: N,
  body: Record<string, unknown> | undefined,
  options: GatherOptions,
): Promise<Combined<N>> {
  return combineAnswers(name, await gatherControl(nc, name, body, options));
}

/** How often `discoverEveryBuilder` asks again while a repo it waits for is still loading. */
const DISCOVER_POLL_MS = 250;
/**
 * The whole list waits at most this long for repos still loading, then
 * shows them as still fetching: one repo whose git server hangs must not
 * hold up the list of all of them.
 */
export const LIST_ALL_SETTLE_MS = 1_000;
/** A refresh waits for the fetches it asked for (each builder bounds them by its build.fetchTimeout). */
export const REFRESH_SETTLE_MS = 600_000;

export interface DiscoverOptions {
  refresh: boolean;
  /** Only this repo's loading matters (the others are shown as they are). */
  repo?: string | undefined;
  ackTimeoutMs: number;
  /** Longest to keep asking while a repo of interest is still loading (default: discoverSettleMs). */
  settleMs?: number;
  pollMs?: number;
  signal?: AbortSignal;
}

/**
 * How long a list waits for repos still loading: a refresh for its
 * fetches; one repo asked for by name up to the ack timeout (that repo is
 * what the caller wants); the whole list only briefly.
 */
export function discoverSettleMs(options: Pick<DiscoverOptions, "refresh" | "repo" | "ackTimeoutMs">): number {
  if (options.refresh) return Math.max(options.ackTimeoutMs, REFRESH_SETTLE_MS);
  if (options.repo !== undefined) return options.ackTimeoutMs;
  return Math.min(options.ackTimeoutMs, LIST_ALL_SETTLE_MS);
}

/**
 * `build.discover` to every builder, asked again (without refresh) while a
 * repo of interest is still `loading` at one of them: builders answer at
 * once with what they have and fetch in the background, so one hung repo
 * never holds up the answer.
 */
export async function discoverEveryBuilder(nc: NatsConnection, options: DiscoverOptions): Promise<Combined<"discover">> {
  const { ackTimeoutMs, signal, repo } = options;
  const pollMs = options.pollMs ?? DISCOVER_POLL_MS;
  const deadline = Date.now() + (options.settleMs ?? discoverSettleMs(options));
  let body: Record<string, unknown> | undefined = options.refresh ? { refresh: true } : undefined;
  for (;;) {
    const combined = await askEveryBuilder(nc, "discover", body, { ackTimeoutMs, signal });
    if (!combined.ok) return combined;
    const pending = combined.answers.some((a) => a.repos.some((r) => r.loading === true && (repo === undefined || r.name === repo)));
    if (!pending || Date.now() + pollMs > deadline || signal?.aborted) return combined;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
    body = undefined;
  }
}
