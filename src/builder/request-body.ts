/**
 * Request bodies: empty means `{}`, anything else must be a small JSON
 * object matching the request's schema. Failures become `rejected`
 * answers, never exceptions.
 */
import type { z } from "zod";
import type { RejectCode, Rejected } from "../protocol.js";
import { parseRequestBody } from "../util/json.js";

export type ParsedBody<T> = { ok: true; value: T } | { ok: false; rejection: Rejected };

export function rejection(code: RejectCode, error: string, known?: string[]): { ok: false; rejection: Rejected } {
  return { ok: false, rejection: { type: "rejected", code, error, ...(known ? { known } : {}) } };
}

/**
 * `codeFor` may give a schema problem its own code (an invalid ref is an
 * invalid name, not a malformed body); by default it is malformed_payload.
 */
export function parseBody<T>(
  data: Uint8Array,
  schema: z.ZodType<T>,
  expected: string,
  codeFor: (issue: z.core.$ZodIssue) => RejectCode | undefined = () => undefined,
): ParsedBody<T> {
  const parsed = parseRequestBody(data, schema, expected);
  if (parsed.ok) return parsed;
  const code = parsed.issue ? codeFor(parsed.issue) : undefined;
  if (code) return rejection(code, `invalid ${parsed.invalid}`);
  return rejection("malformed_payload", parsed.error);
}
