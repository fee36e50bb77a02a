/**
 * What can be cut from the build protocol's messages to fit the NATS
 * server's max_payload (the mechanism is src/nats/fit-payload.ts): what a
 * message repeats. A `completed` repeats every host's error and closure
 * changes, which its requesters already got in full in that host's
 * `host_finished`; a `host_finished`'s log tail loses its oldest lines
 * first. A `completed` always goes out, at worst without its per-host
 * results, saying so.
 */
import { keepPackages, type BuildResponse, type Completed, type ControlResponse, type HostFinished, type HostResult } from "../protocol.js";
import { cutText as cut, fitPayload } from "../nats/fit-payload.js";

/** A result without its log tail, its error cut to `errorMax` (0: left out), its changed packages kept or only counted. */
function slim(result: HostResult, errorMax: number, packages: boolean): HostResult {
  const { logTail: _logTail, error, changes, ...rest } = result;
  const slimmed: HostResult = { ...rest };
  if (error !== undefined && errorMax > 0) slimmed.error = cut(error, errorMax) as string;
  if (changes !== undefined) {
    slimmed.changes = changes === null || packages ? changes : keepPackages(changes, 0);
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

/** The cut versions of a build or control message, least loss first (src/nats/fit-payload.ts's CutSteps). */
export function buildCutSteps<M extends BuildResponse | ControlResponse>(message: M): M[] {
  if (message.type === "completed") return completedSteps(message) as M[];
  if (message.type === "host_finished") return hostFinishedSteps(message) as M[];
  return [];
}

/** The message as it is if it fits `maxBytes` (undefined: not known), else the least cut version that does. */
export function fitBuildPayload<M extends BuildResponse | ControlResponse>(message: M, maxBytes: number | undefined): M {
  return fitPayload(message, maxBytes, buildCutSteps);
}
