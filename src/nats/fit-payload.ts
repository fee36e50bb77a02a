/**
 * Every message must fit the connected NATS server's max_payload: a
 * publish above it is refused, and a lost final message leaves its
 * requesters waiting until their idle timeout. What can be cut depends on
 * the message, so each protocol supplies its own `CutSteps`: versions of a
 * message, least loss first, the last one small enough to always fit (a
 * final message is never dropped, at worst it goes out without its details,
 * saying so). The build protocol's steps are in src/builder/fit-payload.ts.
 */

const encoder = new TextEncoder();

/** The versions of `message` to try, least loss first; [] when nothing can be cut. */
export type CutSteps<M> = (message: M) => readonly M[];

export function payloadBytes(message: unknown): number {
  return encoder.encode(JSON.stringify(message)).length;
}

/** `text` cut to `max` characters, saying so; undefined stays undefined. */
export function cutText(text: string | undefined, max: number): string | undefined {
  return text === undefined || text.length <= max ? text : `${text.slice(0, max)}… (cut to fit the NATS server's max_payload)`;
}

/** The message as it is if it fits `maxBytes` (undefined: not known), else the first step that does, else the last step. */
export function fitPayload<M>(message: M, maxBytes: number | undefined, steps: CutSteps<M>): M {
  if (maxBytes === undefined || payloadBytes(message) <= maxBytes) return message;
  const cuts = steps(message);
  for (const step of cuts) if (payloadBytes(step) <= maxBytes) return step;
  return cuts.at(-1) ?? message;
}
