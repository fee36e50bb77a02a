/**
 * The deploy tools, offered only with `--enable-deploy`: `list_hosts` (the
 * fleet at a glance, as `deploy --list`) and `deploy` (exactly what
 * `homelab-deploy deploy` does, src/client/deploy.ts). Which tiers can be
 * deployed is the NATS identity's business: a refused publish comes back
 * as the server's refusal, not as something this server decides.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { ServerNotification, ServerRequest } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { RequestAbortedError } from "../client/client.js";
import { checkTier, deployFleet, listFleet, parseTarget, succeeded, type DeploySink, type HostOutcome } from "../client/deploy.js";
import { describeDeployMessage, describeOutcome, describePlan, deploySummaryTable, fleetTable } from "../client/deploy-report.js";
import { DeployActionSchema, DeployErrorSchema, DeployStatusSchema, TierSchema, type DeployPhase } from "../deploy-protocol.js";
import { RefSchema } from "../protocol.js";
import { errorMessage } from "../errors.js";
import type { ToolContext } from "./context.js";
import { guarded, toolError, toolResult } from "./tool-result.js";

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

const DeployInputSchema = z.strictObject({
  tier: TierSchema.describe("the hosts' tier, e.g. test or prod (see list_hosts)"),
  target: z.string().describe('a host name, "all" for every host of the tier, or "role:NAME" for the hosts with that role'),
  action: DeployActionSchema.default("switch").describe("switch (activate now and at boot), boot (at next boot), test (now, not at boot), dry-activate (show what would change)"),
  ref: RefSchema.optional().describe("deploy the builder's newest build of this branch, tag or commit instead of the default branch's"),
  build: z.boolean().default(false).describe("build the hosts first and deploy each as soon as it is built"),
  prebuilt: z
    .boolean()
    .default(true)
    .describe("false: every host evaluates and builds its own system (slow, memory-hungry) instead of fetching the builder's"),
});

const HostResultSchema = z.object({
  host: z.string(),
  /** The deploy's status, or why there is none: rejected, not_built, no_answer. */
  status: z.union([DeployStatusSchema, z.enum(["rejected", "not_built", "no_answer"])]),
  action: DeployActionSchema.nullable(),
  toplevel: z.string().nullable(),
  previous: z.string().nullable(),
  generation: z.number().int().nullable(),
  rebootRequired: z.boolean().nullable(),
  durationMs: z.number().int().nullable(),
  error: DeployErrorSchema.extend({ code: z.string() }).nullable(),
});

const DeployOutputSchema = z.object({
  outcome: z.enum(["success", "failure"]),
  tier: z.string(),
  target: z.string(),
  hosts: z.array(HostResultSchema),
});

const FleetRowSchema = z.object({
  host: z.string(),
  tier: z.string(),
  roles: z.array(z.string()),
  current: z.string().nullable(),
  booted: z.string().nullable(),
  built: z.string().nullable(),
  behind: z.boolean().nullable(),
  rebootRequired: z.boolean(),
  busy: z.string().nullable(),
});

export function registerDeployTools(server: McpServer, context: ToolContext): void {
  server.registerTool(
    "list_hosts",
    {
      title: "List the deployed hosts",
      description:
        "Every host that runs the deploy listener (or those of one tier): its tier and roles, the system it runs and booted, the builder's newest build of it and whether the host is behind it, whether it needs a reboot, and whether a deploy is running on it.",
      inputSchema: z.strictObject({ tier: TierSchema.optional().describe("only this tier") }),
      outputSchema: z.object({ hosts: z.array(FleetRowSchema), warning: z.string().optional() }),
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ tier }, extra) =>
      guarded("list_hosts", context.logger, async () => {
        const nc = await context.link.connection();
        const signal = AbortSignal.any([extra.signal, context.shutdown]);
        const { rows, noBuilder } = await listFleet(nc, tier === undefined ? undefined : checkTier(tier), { ackTimeoutMs: context.ackTimeoutMs, signal });
        const lines = [...fleetTable(rows), ...(noBuilder ? ["", `warning: ${noBuilder}; BUILT and STATE are unknown`] : [])];
        return toolResult(lines, { hosts: rows, ...(noBuilder ? { warning: noBuilder } : {}) });
      }),
  );

  server.registerTool(
    "deploy",
    {
      title: "Deploy NixOS hosts",
      description: [
        "Switch hosts of a tier (one host, all, or role:NAME) to the system the builder built for each (fetched from the binary cache, no evaluation on the host) and wait for every host's result.",
        "Each host checks its health afterwards and rolls back by itself when the switch or a health check fails. The result lists each host's status (success, failure, rolled_back, rejected, not_built, no_answer), the system it runs now, whether it needs a reboot, and the error with its cause.",
        "isError is set when not every host succeeded. The NATS identity decides which tiers may be deployed; a refused tier is reported as such. Cancelling the call stops waiting only: the hosts finish their deploys.",
      ].join(" "),
      inputSchema: DeployInputSchema,
      outputSchema: DeployOutputSchema,
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    (args, extra) => guarded("deploy", context.logger, () => runDeploy(context, args, extra)),
  );
}

const HEARTBEAT_PHASE: Record<DeployPhase, string> = { preparing: "fetching or building the system", activating: "activating", checking: "checking health" };

async function runDeploy(context: ToolContext, args: z.infer<typeof DeployInputSchema>, extra: Extra) {
  const { logger } = context;
  const tier = checkTier(args.tier);
  const target = parseTarget(args.target);
  const nc = await context.link.connection();
  const lines: string[] = [];
  let total = 0;
  let finished = 0;
  const progressToken = extra._meta?.progressToken;
  const notify = (message: string) => {
    if (progressToken === undefined) return;
    extra
      .sendNotification({ method: "notifications/progress", params: { progressToken, progress: finished, total, message } })
      .catch((err: unknown) => logger.debug({ err: errorMessage(err) }, "could not send a progress notification"));
  };
  // The event lines a person would see, kept for the answer; each a progress notification too.
  const sink: DeploySink = {
    planned: (plan, planTier) => {
      total++;
      lines.push(describePlan(plan, planTier));
    },
    message: (message) => {
      if (message.type === "progress") return;
      if (message.type === "heartbeat") {
        // As a build's: keeps a client's request timeout from running out during a long quiet step; not a line of the answer.
        notify(`${message.host}: still ${HEARTBEAT_PHASE[message.phase]}`);
        return;
      }
      if (message.type === "completed" || message.type === "rejected") finished++;
      const described = describeDeployMessage(message);
      lines.push(...described);
      notify(described[0] ?? message.type);
    },
    build: () => undefined,
    outcome: (outcome) => lines.push(...describeOutcome(outcome)),
  };
  logger.info({ ...args }, "deploy requested over MCP");
  try {
    const outcomes = await deployFleet(
      nc,
      {
        tier,
        target,
        spec: { tier, action: args.action, ref: args.ref },
        build: args.build,
        prebuilt: args.prebuilt,
        ackTimeoutMs: context.ackTimeoutMs,
        idleTimeoutMs: context.idleTimeoutMs,
        buildIdleTimeoutMs: context.idleTimeoutMs,
      },
      sink,
      AbortSignal.any([extra.signal, context.shutdown]),
      (raw) => logger.warn({ raw }, "ignoring a message that is not part of the protocol"),
    );
    const ok = outcomes.every(succeeded);
    const output = { outcome: ok ? ("success" as const) : ("failure" as const), tier, target: args.target, hosts: outcomes.map(hostResult) };
    logger.info({ ...args, outcome: output.outcome }, "deploy finished");
    return toolResult([...lines, "", ...deploySummaryTable(outcomes)], output, !ok);
  } catch (err) {
    if (!(err instanceof RequestAbortedError)) throw err;
    logger.info({ ...args }, "stopped waiting for the deploy: the call was cancelled; the hosts go on");
    return toolError("stopped waiting for the deploy (the call was cancelled); the hosts finish their deploys: see list_hosts");
  }
}

function hostResult(outcome: HostOutcome): z.infer<typeof HostResultSchema> {
  const none = { action: null, toplevel: null, previous: null, generation: null, rebootRequired: null, durationMs: null };
  switch (outcome.kind) {
    case "completed": {
      const m = outcome.message;
      return {
        host: m.host,
        status: m.status,
        action: m.action,
        toplevel: m.toplevel,
        previous: m.previous,
        generation: m.generation,
        rebootRequired: m.rebootRequired,
        durationMs: m.durationMs,
        error: m.error ?? null,
      };
    }
    case "rejected":
      return { host: outcome.host, status: "rejected", ...none, error: { code: outcome.message.code, message: outcome.message.error } };
    case "not_built":
    case "no_answer":
      return { host: outcome.host, status: outcome.kind, ...none, error: { code: outcome.kind, message: outcome.error } };
  }
}
