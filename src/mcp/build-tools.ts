/**
 * The tools that change what the builder does, offered only with
 * `--enable-builds`: `build` (request a build through NATS exactly as the
 * CLI does, with MCP progress notifications) and `cancel_build`.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { ServerNotification, ServerRequest } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { RequestAbortedError, type BuildTarget } from "../client/client.js";
import { requestBuildWaiting } from "../client/wait-for-builder.js";
import { errorMessage } from "../errors.js";
import { ALL_HOSTS, CancelRequestSchema, CancelResponseSchema, HostNameSchema, RefSchema, RepoNameSchema, type BuildResponse, type CancelResponse, type HostFinished } from "../protocol.js";
import { describeCancel } from "../client/report.js";
import { BuildToolOutputSchema, buildToolResult } from "./build-result.js";
import { askBuilders, type ToolContext } from "./context.js";
import { BuildProgress, type ProgressUpdate } from "./progress.js";
import { guarded, toolError, toolResult } from "./tool-result.js";

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

const BuildInputSchema = z.strictObject({
  repo: RepoNameSchema.describe("repo name from the builder's config, e.g. nixos-servers (see list_build_targets)"),
  target: HostNameSchema.describe(`a host of the repo, or "${ALL_HOSTS}" for every host (built one after another from one revision)`),
  ref: RefSchema.optional().describe("a branch, tag or full commit id to build instead of the repo's default branch"),
});

const CancelOutputSchema = CancelResponseSchema.omit({ type: true });

export function registerBuildTools(server: McpServer, context: ToolContext): void {
  server.registerTool(
    "build",
    {
      title: "Build NixOS hosts",
      description: [
        "Build the system closure of one host (or all hosts) of a repo on the homelab builder, which pushes it to the binary cache, and wait for the result.",
        `Builds run one job at a time; a request identical to a queued one joins it. Takes seconds to many minutes; progress is reported when the call has a progress token.`,
        "The result lists each host's status (success, failure, timeout, cancelled, eval_error) and duration, the store path of what was built, the end of the nix log for a failed host and nix's message with file and line for an evaluation error.",
        "isError is set when not every host built or the builder refused the request. Cancelling the call stops waiting only: the build goes on (see build_status, cancel_build).",
      ].join(" "),
      inputSchema: BuildInputSchema,
      outputSchema: BuildToolOutputSchema,
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    },
    (args, extra) => guarded("build", context.logger, () => runBuild(context, args, extra)),
  );

  server.registerTool(
    "cancel_build",
    {
      title: "Cancel a build job",
      description:
        "Cancel a job by id (from build or build_status): a queued job is removed, the running one stopped (its nix process tree killed). Everyone waiting on it gets the result cancelled, whoever requested it.",
      inputSchema: z.strictObject({ jobId: CancelRequestSchema.shape.jobId.describe("job id, e.g. j3fa2c1d9e0") }),
      outputSchema: CancelOutputSchema,
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ jobId }, extra) =>
      guarded("cancel_build", context.logger, async () => {
        const [answer] = (await askBuilders(context, "cancel", { jobId }, { signal: extra.signal })) as [CancelResponse];
        const { type: _type, ...outcome } = answer;
        return toolResult([describeCancel(answer)], outcome);
      }),
  );
}

async function runBuild(context: ToolContext, request: BuildTarget, extra: Extra) {
  const { logger } = context;
  const { notify, waiting } = progressNotifier(request, extra, logger);
  const finished = new Map<string, HostFinished>();
  logger.info({ ...request }, "build requested over MCP");
  // As the CLI does: while NATS cannot be reached yet or no builder is
  // listening (it restarts), ask again for --wait-for-builder.
  const until = Date.now() + context.waitForBuilderMs;
  const wait = {
    until,
    onWaiting: (err: Error) => {
      logger.info({ ...request, err: err.message }, "no builder is listening yet; asking again");
      waiting();
    },
  };
  const signal = AbortSignal.any([extra.signal, context.shutdown]);
  const nc = await context.link.connection({ retryForMs: context.waitForBuilderMs, signal, onRetry: () => waiting() });
  try {
    const final = await requestBuildWaiting(nc, request, {
      ackTimeoutMs: context.ackTimeoutMs,
      idleTimeoutMs: context.idleTimeoutMs,
      signal,
      onMessage: (message) => {
        if (message.type === "host_finished") finished.set(message.host, message);
        notify(message);
      },
      onInvalid: (raw) => logger.warn({ raw }, "ignoring a message that is not part of the protocol"),
      onGap: (missing) => logger.warn({ missing }, "some of the builder's messages never arrived (the final result is complete)"),
    }, wait);
    const { output, lines } = buildToolResult(request, final, finished);
    logger.info({ ...request, outcome: output.outcome, jobId: output.jobId }, "build finished");
    return toolResult(lines, output, output.outcome !== "success");
  } catch (err) {
    if (!(err instanceof RequestAbortedError)) throw err;
    // The client cancelled the call (or the server is stopping): the job stays with the builder and its other requesters.
    logger.info({ ...request }, "stopped waiting for the build: the call was cancelled; the build goes on");
    return toolError("stopped waiting for the build (the call was cancelled); the build itself goes on: see build_status");
  }
}

/**
 * Sends a progress notification per builder message when the caller asked
 * for progress (gave a token). Never throws into the NATS callback: a
 * notification that cannot be sent is logged and the build is followed on.
 */
function progressNotifier(
  request: BuildTarget,
  extra: Extra,
  logger: ToolContext["logger"],
): { notify: (message: BuildResponse) => void; waiting: () => void } {
  const progressToken = extra._meta?.progressToken;
  if (progressToken === undefined) return { notify: () => undefined, waiting: () => undefined };
  const progress = new BuildProgress(request.target);
  const send = (update: ProgressUpdate) =>
    extra
      .sendNotification({ method: "notifications/progress", params: { progressToken, ...update } })
      .catch((err: unknown) => logger.debug({ err: errorMessage(err) }, "could not send a progress notification"));
  return {
    notify: (message) => {
      try {
        const update = progress.update(message);
        if (update) void send(update);
      } catch (err) {
        logger.warn({ err: errorMessage(err) }, "could not make a progress notification");
      }
    },
    waiting: () => {
      const update = progress.waiting();
      if (update) void send(update);
    },
  };
}
