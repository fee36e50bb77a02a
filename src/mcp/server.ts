/**
 * The MCP server: the read-only tools always, the build tools only with
 * `--enable-builds`, the deploy tools only with `--enable-deploy` (without
 * the flag they are neither listed nor callable).
 */
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { VERSION } from "../version.js";
import { registerBuildTools } from "./build-tools.js";
import { registerDeployTools } from "./deploy-tools.js";
import type { ToolContext } from "./context.js";
import { registerReadTools } from "./read-tools.js";

export interface McpServerOptions extends ToolContext {
  enableBuilds: boolean;
  enableDeploy?: boolean;
}

export function createMcpServer(options: McpServerOptions): McpServer {
  const { enableBuilds, enableDeploy = false, ...context } = options;
  const server = new McpServer(
    { name: "homelab-deploy", version: VERSION },
    {
      instructions:
        (enableBuilds
          ? "Builds NixOS hosts of the homelab on its Nix build service (over NATS). list_build_targets says what can be built, build builds it, build_status shows the running job and the queue, cancel_build stops a job."
          : "Shows what the homelab's Nix build service can build (list_build_targets) and what it is doing (build_status). Building is not enabled on this server.") +
        (enableDeploy
          ? " list_hosts shows every deployed host (what it runs, whether it is behind the builder's newest build, pending reboots); deploy switches hosts of a tier to what the builder built."
          : ""),
    },
  );
  registerReadTools(server, context);
  if (enableBuilds) registerBuildTools(server, context);
  if (enableDeploy) registerDeployTools(server, context);
  return server;
}
