/**
 * Running `homelab-deploy mcp`: the MCP server on stdio, its NATS link, and
 * a clean exit when the client goes away.
 */
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { clientLogger, connectClient, type ClientSettings } from "../client/connection.js";
import { ExitCode, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { NatsLink } from "./nats-link.js";
import { createMcpServer } from "./server.js";

export interface McpOptions {
  /** Where NATS is and who we are (the client's connection settings). */
  settings: ClientSettings;
  enableBuilds: boolean;
  /** Offer the deploy tools (list_hosts, deploy). */
  enableDeploy?: boolean;
  ackTimeoutMs: number;
  idleTimeoutMs: number;
  /** How long a `build` call keeps asking while no builder is listening. */
  waitForBuilderMs: number;
}

export async function runMcp(options: McpOptions): Promise<number> {
  const { settings, enableBuilds, ackTimeoutMs, idleTimeoutMs, waitForBuilderMs } = options;
  const enableDeploy = options.enableDeploy === true;
  const logger = clientLogger(settings);
  keepServing(logger);
  const link = new NatsLink((connect) => connectClient(settings, logger, connect), settings.natsUrl, logger);
  const shutdown = new AbortController();
  const server = createMcpServer({ enableBuilds, enableDeploy, link, logger, ackTimeoutMs, idleTimeoutMs, waitForBuilderMs, shutdown: shutdown.signal });
  const transport = new StdioServerTransport();

  let resolveDone: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => (resolveDone = resolve));
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ why }, "stopping the MCP server");
    shutdown.abort();
    await server.close().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, "closing the MCP transport failed"));
    await link.close().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, "closing the NATS connection failed"));
    resolveDone(ExitCode.ok);
  };
  // The client ends the session by closing our stdin (then SIGTERM, then SIGKILL).
  process.stdin.once("end", () => void stop("stdin closed"));
  process.stdout.once("error", (err) => void stop(`stdout failed: ${errorMessage(err)}`));
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));

  server.server.onclose = () => void stop("the MCP transport closed");
  await server.connect(transport);
  logger.info({ builds: enableBuilds, deploy: enableDeploy, nats: settings.natsUrl }, "MCP server ready on stdio");
  return done;
}

/**
 * Tool handlers never throw (see mcp/tool-result.ts), but a stray error in
 * a callback must not end the server either: an assistant would lose every
 * tool for the rest of its session. It is logged and the server goes on.
 */
function keepServing(logger: Logger): void {
  process.on("unhandledRejection", (reason) => logger.error({ err: reason }, "unhandled rejection; the MCP server keeps running"));
  process.on("uncaughtException", (err) => logger.error({ err }, "uncaught exception; the MCP server keeps running"));
}
