/**
 * What every tool returns: text for the assistant to read, structured
 * content matching the tool's outputSchema, and `isError` when the call did
 * not do what was asked. Failures of any kind become such a result, so a
 * tool call can never take the server down.
 */
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { HomelabDeployError, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";

export function toolResult(lines: readonly string[], structured: Record<string, unknown>, isError = false): CallToolResult {
  return {
    content: [{ type: "text", text: lines.join("\n") }],
    structuredContent: structured,
    ...(isError ? { isError: true } : {}),
  };
}

/** An error result: text only (outputSchema does not apply to errors). */
export function toolError(message: string): CallToolResult {
  return { content: [{ type: "text", text: message }], isError: true };
}

/**
 * Runs a tool body. Our own errors (no NATS, no builder, refused key, a
 * builder that went silent…) carry messages written for the operator and
 * are passed on as they are; anything else is a bug, logged with its stack
 * and reported as one.
 */
export async function guarded(tool: string, logger: Logger, body: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof HomelabDeployError) {
      logger.warn({ tool, err: err.message }, "tool call failed");
      return toolError(err.message);
    }
    logger.error({ tool, err }, "unexpected error in a tool call");
    return toolError(`${tool} failed unexpectedly: ${errorMessage(err)}`);
  }
}
