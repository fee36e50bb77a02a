/** `homelab-deploy cancel <job>`: remove a queued job or stop the running one. */
import { Option, type Command } from "commander";
import { requestControl } from "../client.js";
import { ExitCode, UsageError } from "../errors.js";
import { isValidJobId } from "../protocol.js";
import { describeCancel } from "../report.js";
import { addConnectionOptions, durationFlag, withClient, type ConnectionFlags } from "./connection.js";

interface CancelFlags extends ConnectionFlags {
  json?: boolean;
  ackTimeout: string;
}

export function registerCancel(program: Command): void {
  const command = program
    .command("cancel")
    .description("cancel a job by id (from `build` or `status`): a queued job is removed, a running one stopped; its requesters get completed/cancelled")
    .argument("<job>", "job id, e.g. j3fa2c1d9e0")
    .option("--json", "print the builder's answer as JSON")
    .addOption(new Option("--ack-timeout <duration>", "give up when no builder answers within this long").env("HOMELAB_DEPLOY_ACK_TIMEOUT").default("10s"));
  addConnectionOptions(command).action(async (job: string, flags: CancelFlags) => {
    process.exitCode = await runCancel(job, flags);
  });
}

async function runCancel(jobId: string, flags: CancelFlags): Promise<number> {
  if (!isValidJobId(jobId)) throw new UsageError(`invalid job id ${JSON.stringify(jobId)}: expected one like j3fa2c1d9e0`);
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  return withClient(flags, async (nc, signal) => {
    const answer = await requestControl(nc, "cancel", { jobId }, { ackTimeoutMs, signal });
    if (flags.json) process.stdout.write(`${JSON.stringify(answer)}\n`);
    if (answer.type === "rejected") {
      if (!flags.json) process.stderr.write(`rejected: ${answer.error}\n`);
      return ExitCode.usage;
    }
    if (answer.type !== "cancel") throw new UsageError(`unexpected answer ${answer.type} to build.cancel`);
    if (!flags.json) process.stdout.write(`${describeCancel(answer)}\n`);
    return ExitCode.ok;
  });
}
