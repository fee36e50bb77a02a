/**
 * `homelab-deploy deploy <tier> <host|all|role:NAME>`: switch hosts to what
 * the builder built (or, with --no-prebuilt, to what they evaluate
 * themselves) and follow every listener to its final answer
 * (src/client/deploy.ts). `homelab-deploy deploy --list [tier]`: the fleet
 * at a glance. Exit 0 when every host succeeded, 1 when any did not
 * (failed, rolled back, rejected, not built, no answer), 2 when nothing
 * could be deployed (bad arguments, no listener, NATS refused the request,
 * no connection).
 */
import { Option, type Command } from "commander";
import { ALL_TARGET, DeployActionSchema, ROLE_TOKEN, type DeployAction } from "../deploy-protocol.js";
import { isValidRef } from "../protocol.js";
import { CLIENT_IDLE_TIMEOUT_MS } from "../config.js";
import { ExitCode, UsageError } from "../errors.js";
import { formatSetting } from "../util/duration.js";
import { checkTier, deployFleet, listFleet, parseTarget, succeeded, type DeployRun } from "../client/deploy.js";
import { createDeployReporter, fleetTable } from "../client/deploy-report.js";
import { painter, tableWidth } from "../client/report.js";
import { withClient } from "../client/connection.js";
import { addAckTimeoutOption, addConnectionOptions, durationFlag, type ConnectionFlags } from "./connection.js";

interface DeployFlags extends ConnectionFlags {
  action: string;
  ref?: string;
  json?: boolean;
  list?: boolean;
  build?: boolean;
  prebuilt: boolean;
  changes?: boolean;
  ackTimeout: string;
  idleTimeout: string;
}

export function registerDeploy(program: Command): void {
  const command = program
    .command("deploy")
    .description("deploy what the builder built to the hosts of a tier (a host, all, or role:NAME) and follow every listener; or --list the fleet")
    .argument("[tier]", "the hosts' tier, e.g. test or prod (with --list: only this tier)")
    .argument("[target]", `a host name, "${ALL_TARGET}" for every host of the tier, or ${ROLE_TOKEN}:NAME for the hosts with that role`)
    .addOption(new Option("--action <action>", "what the listeners do with the new system").choices(DeployActionSchema.options).default("switch"))
    .option("--ref <ref>", "deploy the builder's newest build of this branch, tag or commit (with --no-prebuilt: the hosts build it)")
    .option("--build", "build the hosts first, and deploy each one as soon as the builder has built it")
    .option("--no-prebuilt", "let every host evaluate and build its own system instead of fetching the builder's")
    .option("--list", "show every host: what it runs and booted, the builder's newest build, whether it is behind, whether it needs a reboot")
    .option("--changes", "list every package that changed in each host's closure, not just the first few")
    .option("--json", "print every message as one JSON line (with --list: one object per host)");
  addAckTimeoutOption(command, "give up when no listener (or builder) answers within this long");
  // Listeners send a heartbeat every 30 s while a deploy runs, so silence this
  // long means a dead listener, as it does for a builder: the same default.
  command.addOption(
    new Option("--idle-timeout <duration>", "stop waiting for a listener that sends nothing (not even a heartbeat) for this long during a deploy; 0 waits forever")
      .env("HOMELAB_DEPLOY_DEPLOY_IDLE_TIMEOUT")
      .default(formatSetting(CLIENT_IDLE_TIMEOUT_MS)),
  );
  addConnectionOptions(command).action(async (tier: string | undefined, target: string | undefined, flags: DeployFlags) => {
    process.exitCode = flags.list ? await runList(tier, target, flags) : await runDeploy(tier, target, flags);
  });
}

export async function runDeploy(tierArg: string | undefined, targetArg: string | undefined, flags: DeployFlags): Promise<number> {
  if (tierArg === undefined || targetArg === undefined) throw new UsageError("deploy needs <tier> and <target> (a host, all, or role:NAME); or use --list");
  const tier = checkTier(tierArg);
  const target = parseTarget(targetArg);
  if (flags.ref !== undefined && !isValidRef(flags.ref)) throw new UsageError(`invalid ref ${JSON.stringify(flags.ref)}`);
  if (flags.build && !flags.prebuilt) throw new UsageError("--build deploys what the builder builds; it cannot be combined with --no-prebuilt");
  const run: DeployRun = {
    tier,
    target,
    spec: { tier, action: DeployActionSchema.parse(flags.action) as DeployAction, ref: flags.ref },
    build: flags.build === true,
    prebuilt: flags.prebuilt,
    ackTimeoutMs: durationFlag("--ack-timeout", flags.ackTimeout),
    idleTimeoutMs: durationFlag("--idle-timeout", flags.idleTimeout, true),
    buildIdleTimeoutMs: CLIENT_IDLE_TIMEOUT_MS,
  };
  const reporter = createDeployReporter({ json: flags.json === true, out: process.stdout, allChanges: flags.changes === true });
  try {
    return await withClient(flags, async (nc, signal, logger) => {
      const onInvalid = (raw: string) => logger.warn({ raw }, "ignoring a message that is not part of the protocol");
      const outcomes = await deployFleet(nc, run, reporter, signal, onInvalid);
      reporter.finish(outcomes);
      return outcomes.every(succeeded) ? ExitCode.ok : ExitCode.buildFailed;
    });
  } finally {
    reporter.close();
  }
}

async function runList(tierArg: string | undefined, extra: string | undefined, flags: DeployFlags): Promise<number> {
  if (extra !== undefined) throw new UsageError("--list takes at most one argument: the tier");
  const tier = tierArg === undefined ? undefined : checkTier(tierArg);
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  return withClient(flags, async (nc, signal, logger) => {
    const { rows, noBuilder } = await listFleet(nc, tier, { ackTimeoutMs, signal });
    if (noBuilder !== undefined) {
      logger.warn({ err: noBuilder }, "no builder answered: the list cannot say which hosts are behind");
      if (!flags.json) process.stderr.write(`warning: ${noBuilder}; BUILT and STATE are unknown\n`);
    }
    if (flags.json) for (const row of rows) process.stdout.write(`${JSON.stringify(row)}\n`);
    else for (const line of fleetTable(rows, painter(process.stdout), tableWidth(process.stdout))) process.stdout.write(`${line}\n`);
    return ExitCode.ok;
  });
}
