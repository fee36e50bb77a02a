/**
 * `homelab-deploy mcp [--enable-builds] [--enable-deploy]`: the MCP server for AI assistants,
 * over stdio. stdout carries only the MCP protocol; logs go to stderr.
 * NATS is connected on the first tool call that needs it (see
 * mcp/nats-link.ts), so the server starts and keeps answering whatever the
 * state of NATS and the builder. It exits when the client closes stdin or
 * on SIGTERM/SIGINT, closing the NATS connection first.
 */
import type { Command } from "commander";
import {
  addAckTimeoutOption,
  addConnectionOptions,
  addIdleTimeoutOption,
  addWaitForBuilderOption,
  durationFlag,
  type ConnectionFlags,
} from "./connection.js";

interface McpFlags extends ConnectionFlags {
  enableBuilds?: boolean;
  enableDeploy?: boolean;
  ackTimeout: string;
  idleTimeout: string;
  waitForBuilder: string;
}

export function registerMcp(program: Command): void {
  const command = program
    .command("mcp")
    .description("run an MCP server on stdio for AI assistants: list build targets and the builder's status; with --enable-builds also build and cancel")
    .option("--enable-builds", "offer the build and cancel_build tools (without it the server is read-only)")
    .option("--enable-deploy", "offer the deploy and list_hosts tools (which tiers can be deployed is up to the NATS user's permissions)");
  addAckTimeoutOption(command, "a tool call gives up when no builder answers within this long");
  addIdleTimeoutOption(command);
  addWaitForBuilderOption(command);
  addConnectionOptions(command).action(async (flags: McpFlags) => {
    const { enableBuilds, enableDeploy, ackTimeout, idleTimeout, waitForBuilder, ...settings } = flags;
    const options = {
      settings,
      enableBuilds: enableBuilds === true,
      enableDeploy: enableDeploy === true,
      ackTimeoutMs: durationFlag("--ack-timeout", ackTimeout),
      idleTimeoutMs: durationFlag("--idle-timeout", idleTimeout, true),
      waitForBuilderMs: durationFlag("--wait-for-builder", waitForBuilder, true),
    };
    // Loaded only when asked for: the builder daemon never needs the MCP SDK in memory.
    const { runMcp } = await import("../mcp/run.js");
    process.exitCode = await runMcp(options);
  });
}

