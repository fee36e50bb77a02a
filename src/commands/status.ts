/** `homelab-deploy status`: what the builder is building and what waits. */
import { Option, type Command } from "commander";
import { requestControl } from "../client.js";
import { ExitCode, UsageError } from "../errors.js";
import { describeStatus } from "../report.js";
import { addConnectionOptions, durationFlag, withClient, type ConnectionFlags } from "./connection.js";

interface StatusFlags extends ConnectionFlags {
  json?: boolean;
  ackTimeout: string;
}

export function registerStatus(program: Command): void {
  const command = program
    .command("status")
    .description("show the running job (host, progress) and the queued jobs with their ids")
    .option("--json", "print the builder's answer as JSON")
    .addOption(new Option("--ack-timeout <duration>", "give up when no builder answers within this long").env("HOMELAB_DEPLOY_ACK_TIMEOUT").default("10s"));
  addConnectionOptions(command).action(async (flags: StatusFlags) => {
    process.exitCode = await runStatus(flags);
  });
}

async function runStatus(flags: StatusFlags): Promise<number> {
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  return withClient(flags, async (nc, signal) => {
    const answer = await requestControl(nc, "status", undefined, { ackTimeoutMs, signal });
    if (flags.json) process.stdout.write(`${JSON.stringify(answer)}\n`);
    if (answer.type === "rejected") {
      if (!flags.json) process.stderr.write(`rejected: ${answer.error}\n`);
      return ExitCode.usage;
    }
    if (answer.type !== "status") throw new UsageError(`unexpected answer ${answer.type} to build.status`);
    if (!flags.json) for (const line of describeStatus(answer)) process.stdout.write(`${line}\n`);
    return ExitCode.ok;
  });
}
