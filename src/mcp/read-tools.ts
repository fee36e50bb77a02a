/**
 * The read-only tools, always offered: `list_build_targets` (build.discover),
 * `build_status` (build.status) and `build_history` (build.history).
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import { DiscoverResponseSchema, HistoryResponseSchema, HostNameSchema, RepoNameSchema, StatusResponseSchema } from "../protocol.js";
import { describeDiscover, describeHistory, describeStatus } from "../client/report.js";
import { askBuilder, type ToolContext } from "./context.js";
import { guarded, toolError, toolResult } from "./tool-result.js";

/** A refresh fetches and evaluates every repo: allow it the time that takes (as `build --list --refresh` does). */
const REFRESH_TIMEOUT_MS = 600_000;

const ListInputSchema = z.strictObject({
  repo: RepoNameSchema.optional().describe("only this repo (a name from the builder's config, e.g. nixos-servers)"),
  refresh: z
    .boolean()
    .optional()
    .describe("fetch every repo again and re-list its hosts (slow: as long as the fetches) instead of the builder's cached lists"),
});
const ListOutputSchema = DiscoverResponseSchema.omit({ type: true });

const StatusOutputSchema = StatusResponseSchema.omit({ type: true });

const HistoryInputSchema = z.strictObject({
  repo: RepoNameSchema.describe("a repo from list_build_targets, e.g. nixos-servers"),
  host: HostNameSchema.optional().describe("only this host; without it, the repo's newest results across hosts"),
});
const HistoryOutputSchema = HistoryResponseSchema.omit({ type: true });

export function registerReadTools(server: McpServer, context: ToolContext): void {
  server.registerTool(
    "list_build_targets",
    {
      title: "List build targets",
      description:
        "List the repos the homelab builder can build and each repo's hosts (NixOS configurations), from the builder itself. Use a repo and host from here with the build tool; `all` builds every host of a repo.",
      inputSchema: ListInputSchema,
      outputSchema: ListOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ repo, refresh }, extra) =>
      guarded("list_build_targets", context.logger, async () => {
        const answer = await askBuilder(context, "discover", refresh ? { refresh: true } : undefined, {
          signal: extra.signal,
          ...(refresh ? { ackTimeoutMs: Math.max(context.ackTimeoutMs, REFRESH_TIMEOUT_MS) } : {}),
        });
        const repos = answer.repos.filter((r) => repo === undefined || r.name === repo);
        if (repo !== undefined && repos.length === 0) {
          return toolError(`unknown repo ${repo}; this builder builds ${answer.repos.map((r) => r.name).join(", ")}`);
        }
        const { type: _type, ...rest } = answer;
        return toolResult(describeDiscover(answer, repo), { ...rest, repos });
      }),
  );

  server.registerTool(
    "build_status",
    {
      title: "Build status",
      description:
        "What the homelab builder is doing: the running job (repo, target, current host, nix progress, start time) and the queued jobs with their ids and positions.",
      inputSchema: z.strictObject({}),
      outputSchema: StatusOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (_args, extra) =>
      guarded("build_status", context.logger, async () => {
        const answer = await askBuilder(context, "status", undefined, { signal: extra.signal });
        const { type: _type, ...status } = answer;
        return toolResult(describeStatus(answer), status);
      }),
  );

  server.registerTool(
    "build_history",
    {
      title: "Build history",
      description:
        "The homelab builder's last results for a repo or one host, newest first: status, duration, git revision, ref, store path on success, error on failure, finish time. Use it to see when a host last built, or whether a failure is new.",
      inputSchema: HistoryInputSchema,
      outputSchema: HistoryOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ repo, host }, extra) =>
      guarded("build_history", context.logger, async () => {
        const answer = await askBuilder(context, "history", host === undefined ? { repo } : { repo, host }, { signal: extra.signal });
        const { type: _type, ...history } = answer;
        return toolResult(describeHistory(answer), history);
      }),
  );
}
