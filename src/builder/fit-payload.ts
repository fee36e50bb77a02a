/**
 * Every message must fit the connected NATS server's max_payload: a
 * publish above it is refused, and a lost `completed` leaves its requesters
 * waiting until their idle timeout. What can be cut is what a message
 * repeats: a `completed` repeats every host's error and closure changes,
 * which its requesters already got in full in that host's `host_finished`; a `host_finished`'s
 * log tail loses its oldest lines first. Cutting goes step by step, least
 * loss first, and a final message always goes out (at worst without its
 * per-host results, saying so).
 */
import type { BuildResponse, Completed, ControlResponse, HostFinished, HostResult } from "../protocol.js";

const encoder = new TextEncoder();

export function payloadBytes(message: unknown): number {
  return encoder.encode(JSON.stringify(message)).length;
}

const cut = (text: string | undefined, max: number): string | undefined =>
  text === undefined || text.length <= max ? text : `${text.slice(0, max)}… (cut to fit the NATS server's max_payload)`;

/** A result without its log tail, its error cut to `errorMax` (0: left out), its changed packages kept or only counted. */
function slim(result: HostResult, errorMax: number, packages: boolean): HostResult {
  const { logTail: _logTail, error, changes, ...rest } = result;
  const slimmed: HostResult = { ...rest };
  if (error !== undefined && errorMax > 0) slimmed.error = cut(error, errorMax) as string;
  if (changes !== undefined) {
    slimmed.changes =
      changes === null || packages
        ? changes
        : { ...changes, packages: [], omittedPackages: (changes.omittedPackages ?? 0) + changes.packages.length };
  }
  return slimmed;
}

function completedSteps(message: Completed): Completed[] {
  const withResults = (errorMax: number, packages: boolean): Completed => ({
    ...message,
    results: message.results.map((r) => slim(r, errorMax, packages)),
  });
  const trimmedError = message.error === undefined ? {} : { error: cut(message.error, 1_000) as string };
  return [
    withResults(1_000, true),
    withResults(200, false),
    { ...withResults(0, false), ...trimmedError },
    {
      ...message,
      results: [],
      error: `${cut(message.error, 1_000) ?? message.status}; the ${message.results.length} host results did not fit the NATS server's max_payload: each host_finished has its own`,
    },
  ];
}

function hostFinishedSteps(message: HostFinished): HostFinished[] {
  const steps: HostFinished[] = [];
  const tail = message.logTail ?? [];
  for (let keep = Math.floor(tail.length / 2); keep > 0; keep = Math.floor(keep / 2)) {
    steps.push({ ...message, logTail: tail.slice(-keep).map((line) => cut(line, 500) as string) });
  }
  const { logTail: _logTail, ...noTail } = message;
  steps.push(noTail, { ...noTail, ...(noTail.error !== undefined ? { error: cut(noTail.error, 1_000) as string } : {}) });
  return steps;
}

/** The message as it is if it fits `maxBytes` (undefined: not known), else the least cut version that does. */
export function fitPayload<M extends BuildResponse | ControlResponse>(message: M, maxBytes: number | undefined): M {
  if (maxBytes === undefined || payloadBytes(message) <= maxBytes) return message;
  const steps: unknown[] =
    message.type === "completed" ? completedSteps(message) : message.type === "host_finished" ? hostFinishedSteps(message) : [];
  for (const step of steps) if (payloadBytes(step) <= maxBytes) return step as M;
  return (steps.at(-1) as M | undefined) ?? message;
}
