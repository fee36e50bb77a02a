/** `homelab-deploy status`: what the builder is building and what waits. */
import type { Command } from "commander";
import { ExitCode } from "../errors.js";
import { describeStatuses } from "../client/report-builders.js";
import { addAckTimeoutOption, addConnectionOptions, runControl, type ControlFlags } from "./connection.js";

export function registerStatus(program: Command): void {
  const command = program
    .command("status")
    .description("show each builder's running job (host, progress) and queued jobs with their ids")
    .option("--json", "print each builder's answer as one JSON line");
  addConnectionOptions(addAckTimeoutOption(command)).action(async (flags: ControlFlags) => {
    process.exitCode = await runControl(flags, "status", undefined, (statuses) => {
      if (!flags.json) for (const line of describeStatuses(statuses)) process.stdout.write(`${line}\n`);
      return ExitCode.ok;
    });
  });
}
