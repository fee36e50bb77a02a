import type { z } from "zod";

/**
 * Text that must be JSON of a known shape (nix's --json output, a cache
 * file, a NATS payload): the typed value, or undefined when it is not.
 */
export function parseJsonAs<T>(text: string, schema: z.ZodType<T>): T | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = schema.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}
