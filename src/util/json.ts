import type { z } from "zod";
import { errorMessage } from "../errors.js";

/**
 * Text that must be JSON of a known shape (nix's --json output, a cache
 * file, a NATS payload): the typed value, or undefined when it is not.
 */
export function parseJsonAs<T>(text: string, schema: z.ZodType<T>): T | undefined {
  const checked = checkJson(text, schema);
  return checked.ok ? checked.value : undefined;
}

/** The same with why it is not: "not JSON: …" or "<key path>: <problem>" (for a file an operator may have to look at). */
export function checkJson<T>(text: string, schema: z.ZodType<T>): { ok: true; value: T } | { ok: false; problem: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, problem: `not JSON: ${errorMessage(err)}` };
  }
  const parsed = schema.safeParse(json);
  return parsed.success ? { ok: true, value: parsed.data } : { ok: false, problem: describeIssue(parsed.error.issues[0]) };
}

/** "<key path>: <problem>" of a schema's first complaint. */
function describeIssue(issue: z.core.$ZodIssue | undefined): string {
  return `${issue?.path.length ? `${issue.path.map(String).join(".")}: ` : ""}${issue?.message ?? "invalid"}`;
}

/** Request bodies are small: a larger one is refused before it is parsed. */
export const MAX_REQUEST_BYTES = 4096;
const decoder = new TextDecoder();

export type RequestBody<T> =
  | { ok: true; value: T }
  /** `invalid` ("<key path>: <problem>") and `issue` are set when the JSON did not match the schema. */
  | { ok: false; error: string; invalid?: string; issue?: z.core.$ZodIssue };

/**
 * A NATS request's body: empty means `{}`, anything else must be a small
 * JSON object matching `schema` (`expected` describes it for the error).
 */
export function parseRequestBody<T>(data: Uint8Array, schema: z.ZodType<T>, expected: string): RequestBody<T> {
  if (data.length > MAX_REQUEST_BYTES) return { ok: false, error: `request body too large (${data.length} bytes, at most ${MAX_REQUEST_BYTES})` };
  const text = decoder.decode(data).trim();
  let json: unknown = {};
  if (text.length > 0) {
    try {
      json = JSON.parse(text);
    } catch {
      return { ok: false, error: `request body is not JSON; send ${expected}` };
    }
  }
  const parsed = schema.safeParse(json);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0];
  const invalid = describeIssue(issue);
  return { ok: false, error: `malformed request body: ${invalid}; expected ${expected}`, invalid, ...(issue ? { issue } : {}) };
}
