/**
 * `homelab-deploy mcp [--enable-builds]`: the MCP server for AI assistants,
 * over stdio. stdout carries only the MCP protocol; logs go to stderr.
 * NATS is connected on the first tool call that needs it (see
 * mcp/nats-link.ts), so the server starts and keeps answering whatever the
 * state of NATS and the builder. It exits when the client closes stdin or
 * on SIGTERM/SIGINT, closing the NATS connection first.
 */
import { Option, type Command } from "commander";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { ExitCode, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { NatsLink } from "../mcp/nats-link.js";
import { createMcpServer } from "../mcp/server.js";
import { addConnectionOptions, clientLogger, connectClient, durationFlag, type ConnectionFlags } from "./connection.js";

interface McpFlags extends ConnectionFlags {
  enableBuilds?: boolean;
  ackTimeout: string;
  idleTimeout: string;
}

export function registerMcp(program: Command): void {
  const command = program
    .command("mcp")
    .description("run an MCP server on stdio for AI assistants: list build targets and the builder's status; with --enable-builds also build and cancel")
    .option("--enable-builds", "offer the build and cancel_build tools (without it the server is read-only)")
    .addOption(
      new Option("--ack-timeout <duration>", "a tool call gives up when no builder answers within this long")
        .env("HOMELAB_DEPLOY_ACK_TIMEOUT")
        .default("10s"),
    )
    .addOption(
      new Option("--idle-timeout <duration>", "a build call gives up when an accepted build sends nothing (not even a heartbeat) for this long; 0 waits forever")
        .env("HOMELAB_DEPLOY_IDLE_TIMEOUT")
        .default("2m"),
    );
  addConnectionOptions(command).action(async (flags: McpFlags) => {
    process.exitCode = await runMcp(flags);
  });
}

export async function runMcp(flags: McpFlags): Promise<number> {
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  const idleTimeoutMs = durationFlag("--idle-timeout", flags.idleTimeout, true);
  const logger = clientLogger(flags);
  keepServing(logger);
  const link = new NatsLink(() => connectClient(flags, logger), flags.natsUrl, logger);
  const shutdown = new AbortController();
  const enableBuilds = flags.enableBuilds === true;
  const server = createMcpServer({ enableBuilds, link, logger, ackTimeoutMs, idleTimeoutMs, shutdown: shutdown.signal });
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
  logger.info({ builds: enableBuilds, nats: flags.natsUrl }, "MCP server ready on stdio");
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
