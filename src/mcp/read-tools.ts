/**
/**
 * The read-only tools, always offered: `list_build_targets` (build.discover),
 * `build_status` (build.status) and `build_history` (build.history), asked
 * of every builder.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import { DiscoverResponseSchema, HistoryResponseSchema, type HistoryResponse, HostNameSchema, RepoNameSchema, StatusResponseSchema } from "../protocol.js";
import { describeHistory } from "../client/report.js";
import { describeDiscovers, describeStatuses, reposOf } from "../client/report-builders.js";
import { discoverEveryBuilder } from "../client/gather.js";
import { BuilderRefusedError, askBuilders, type ToolContext } from "./context.js";
import { guarded, toolError, toolResult } from "./tool-result.js";

const ListInputSchema = z.strictObject({
  repo: RepoNameSchema.optional().describe("only this repo (a name from the builder's config, e.g. nixos-servers)"),
  refresh: z
    .boolean()
    .optional()
    .describe("fetch every repo again and re-list its hosts (slow: as long as the fetches) instead of the builder's cached lists"),
});
const OneListSchema = DiscoverResponseSchema.omit({ type: true });
/** One builder's answer, as before; with several builders (one queue group) `builders` holds each one's. */
const ListOutputSchema = OneListSchema.extend({ builders: z.array(OneListSchema).optional() });

const OneStatusSchema = StatusResponseSchema.omit({ type: true });
const StatusOutputSchema = OneStatusSchema.extend({ builders: z.array(OneStatusSchema).optional() });

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
        "List the repos the homelab builder can build and each repo's hosts (NixOS configurations), from the builder itself (with several builders in one queue group: from each, in `builders`). Use a repo and host from here with the build tool; `all` builds every host of a repo.",
      inputSchema: ListInputSchema,
      outputSchema: ListOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ repo, refresh }, extra) =>
      guarded("list_build_targets", context.logger, async () => {
        // Builders answer at once and fetch in the background: ask again
        // while the repo(s) asked about are still loading, as the CLI does.
        const nc = await context.link.connection();
        const combined = await discoverEveryBuilder(nc, {
          refresh: refresh === true,
          repo,
          ackTimeoutMs: context.ackTimeoutMs,
          signal: AbortSignal.any([extra.signal, context.shutdown]),
        });
        if (!combined.ok) throw new BuilderRefusedError(`the builder refused build.discover: ${combined.rejected.error}`);
        const answers = combined.answers;
        const known = reposOf(answers);
        if (repo !== undefined && !known.includes(repo)) {
          const who = answers.length === 1 ? "this builder builds" : "these builders build";
          return toolError(`unknown repo ${repo}; ${who} ${known.join(", ")}`);
        }
        const each = answers.map(({ type: _type, ...rest }) => ({ ...rest, repos: rest.repos.filter((r) => repo === undefined || r.name === repo) }));
        const [first] = each as [z.infer<typeof OneListSchema>];
        return toolResult(describeDiscovers(answers, repo), each.length > 1 ? { ...first, builders: each } : first);
      }),
  );

  server.registerTool(
    "build_status",
    {
      title: "Build status",
      description:
        "What the homelab builder is doing: the running job (repo, target, current host, nix progress, start time) and the queued jobs with their ids and positions (with several builders in one queue group: each one's, in `builders`).",
      inputSchema: z.strictObject({}),
      outputSchema: StatusOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (_args, extra) =>
      guarded("build_status", context.logger, async () => {
        const answers = await askBuilders(context, "status", undefined, { signal: extra.signal });
        const each = answers.map(({ type: _type, ...status }) => status);
        const [first] = each as [z.infer<typeof OneStatusSchema>];
        return toolResult(describeStatuses(answers), each.length > 1 ? { ...first, builders: each } : first);
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
        const [answer] = (await askBuilders(context, "history", host === undefined ? { repo } : { repo, host }, { signal: extra.signal })) as [HistoryResponse];
        const { type: _type, ...history } = answer;
        return toolResult(describeHistory(answer), history);
      }),
  );
}
