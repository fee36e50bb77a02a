/**
 * Request bodies: empty means `{}`, anything else must be a small JSON
 * object matching the request's schema. Failures become `rejected`
 * answers, never exceptions.
 */
import type { z } from "zod";
import type { RejectCode, Rejected } from "../protocol.js";

export const MAX_REQUEST_BYTES = 4096;
const decoder = new TextDecoder();

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
  if (data.length > MAX_REQUEST_BYTES) {
    return rejection("malformed_payload", `request body too large (${data.length} bytes, at most ${MAX_REQUEST_BYTES})`);
  }
  const text = decoder.decode(data).trim();
  let json: unknown = {};
  if (text.length > 0) {
    try {
      json = JSON.parse(text);
    } catch {
      return rejection("malformed_payload", `request body is not JSON; send ${expected}`);
    }
  }
  const parsed = schema.safeParse(json);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0];
  const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
  const code = issue ? codeFor(issue) : undefined;
  if (code) return rejection(code, `invalid ${where}${issue?.message ?? "invalid"}`);
  return rejection("malformed_payload", `malformed request body: ${where}${issue?.message ?? "invalid"}; expected ${expected}`);
}
