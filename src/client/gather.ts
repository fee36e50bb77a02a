/**
 * Control requests to every builder at once. Builders in one queue group
 * share build requests, but `build.discover`, `build.status` and
 * `build.cancel` reach each of them, so a requester gathers the answers:
 * the first must come within the ack timeout, the rest until nothing more
 * arrives for a short quiet period (bounded by a maximum after the first).
 *
 * Hand-written rather than `nc.requestMany`: nats.js 2.x takes the reply
 * subject from the connection's inbox prefix (`_INBOX`, which the plan's
 * permissions forbid), fixes the quiet period at 300 ms, and cannot be
 * aborted — a requester here listens on its own `build.responses.<id>`
 * like every other exchange.
 */
import type { NatsConnection, Subscription } from "nats";
import { parseJsonAs } from "../util/json.js";
import {
  ControlResponseSchema,
  type AnswerTo,
  type ControlName,
  type ControlResponse,
  type HistoryResponse,
  type Rejected,
} from "../protocol.js";
import { RequestAbortedError, isNoResponders, newReplySubject, noBuilderAnswered, noBuilderListening, requestPayload } from "./client.js";

export interface GatherOptions {
  /** No answer at all within this long means nobody serves the subject. */
  ackTimeoutMs: number;
  /** Stop this long after the last answer. */
  quietMs?: number;
  /** Stop at the latest this long after the first answer. */
  maxAfterFirstMs?: number;
  signal?: AbortSignal;
  onInvalid?: (raw: string) => void;
}

/** Long enough for builders on one NATS server to answer a cheap question; short enough not to be noticed. */
export const DEFAULT_QUIET_MS = 300;
export const DEFAULT_MAX_AFTER_FIRST_MS = 3_000;

const decoder = new TextDecoder();

/** Every answer that arrived, in arrival order. Rejects like `exchange` when none does. */
export async function gatherControl(
  nc: NatsConnection,
  name: ControlName,
  body: Record<string, unknown> | undefined,
  options: GatherOptions,
): Promise<ControlResponse[]> {
  const subject = `build.${name}`;
  const reply = newReplySubject();
  const quietMs = options.quietMs ?? DEFAULT_QUIET_MS;
  const maxAfterFirstMs = options.maxAfterFirstMs ?? DEFAULT_MAX_AFTER_FIRST_MS;
  const answers: ControlResponse[] = [];
  let subscription: Subscription | undefined;
  const timers: NodeJS.Timeout[] = [];
  let quietTimer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const cleanup = () => {
    for (const timer of timers) clearTimeout(timer);
    clearTimeout(quietTimer);
    if (onAbort) options.signal?.removeEventListener("abort", onAbort);
    subscription?.unsubscribe();
  };
  const result = new Promise<ControlResponse[]>((resolve, reject) => {
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const done = () => {
      cleanup();
      resolve(answers);
    };
    onAbort = () => fail(new RequestAbortedError("stopped waiting for the builders' answers"));
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    subscription = nc.subscribe(reply, {
      callback: (err, msg) => {
        if (err) return fail(err);
        if (isNoResponders(msg)) {
          if (answers.length > 0) return done();
          return fail(noBuilderListening(subject));
        }
        const message = parseJsonAs(decoder.decode(msg.data), ControlResponseSchema);
        if (message === undefined || (message.type !== "rejected" && message.type !== name)) {
          return options.onInvalid?.(decoder.decode(msg.data));
        }
        if (answers.length === 0) {
          clearTimeout(timers[0]);
          timers.push(setTimeout(done, maxAfterFirstMs));
        }
        answers.push(message);
        clearTimeout(quietTimer);
        quietTimer = setTimeout(done, quietMs);
      },
    });
    timers.push(
      setTimeout(() => {
        fail(noBuilderAnswered(subject, options.ackTimeoutMs));
      }, options.ackTimeoutMs),
    );
  });
  try {
    // The subscription must be known to the server before anyone can answer.
    await nc.flush();
    if (options.signal?.aborted) return await result;
    nc.publish(subject, requestPayload(body), { reply });
  } catch (err) {
    cleanup();
    result.catch(() => undefined);
    throw err;
  }
  return result;
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

/**
 * A builder answers build.discover once its fetches are done or after 1.5 s
 * (src/builder/control.ts), whichever is first: wait that long for the
 * others after the first answer, or a builder still fetching is missed.
 */
export const DISCOVER_GATHER = { quietMs: 1_800, maxAfterFirstMs: 5_000 } as const;

export interface DiscoverOptions {
  refresh: boolean;
  /** Only this repo's loading matters (the others are shown as they are). */
  repo?: string | undefined;
  ackTimeoutMs: number;
  /** Longest to keep asking while a repo of interest is still loading. */
  settleMs: number;
  pollMs?: number;
  signal?: AbortSignal;
}

/**
 * `build.discover` to every builder, asked again (without refresh) while a
 * repo of interest is still `loading` at one of them: builders answer with
 * what they have and fetch in the background, so one hung repo never holds
 * up the answer.
 */
export async function discoverEveryBuilder(nc: NatsConnection, options: DiscoverOptions): Promise<Combined<"discover">> {
  const { ackTimeoutMs, signal, repo } = options;
  const pollMs = options.pollMs ?? 1_000;
  const deadline = Date.now() + options.settleMs;
  let body: Record<string, unknown> | undefined = options.refresh ? { refresh: true } : undefined;
  for (;;) {
    const combined = await askEveryBuilder(nc, "discover", body, { ackTimeoutMs, signal, ...DISCOVER_GATHER });
    if (!combined.ok) return combined;
    const pending = combined.answers.some((a) => a.repos.some((r) => r.loading === true && (repo === undefined || r.name === repo)));
    if (!pending || Date.now() + pollMs > deadline || signal?.aborted) return combined;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
    body = undefined;
  }
}
