/**
 * The MCP server: the read-only tools always, the build tools only with
 * `--enable-builds` (without it they are neither listed nor callable).
 */
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { VERSION } from "../version.js";
import { registerBuildTools } from "./build-tools.js";
import type { ToolContext } from "./context.js";
import { registerReadTools } from "./read-tools.js";

export interface McpServerOptions extends ToolContext {
  enableBuilds: boolean;
}

export function createMcpServer(options: McpServerOptions): McpServer {
  const { enableBuilds, ...context } = options;
  const server = new McpServer(
    { name: "homelab-deploy", version: VERSION },
    {
      instructions: enableBuilds
        ? "Builds NixOS hosts of the homelab on its Nix build service (over NATS). list_build_targets says what can be built, build builds it, build_status shows the running job and the queue, cancel_build stops a job."
        : "Shows what the homelab's Nix build service can build (list_build_targets) and what it is doing (build_status). Building is not enabled on this server.",
    },
  );
  registerReadTools(server, context);
  if (enableBuilds) registerBuildTools(server, context);
  return server;
}
