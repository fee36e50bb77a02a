/** `homelab-deploy status`: what the builder is building and what waits. */
import type { Command } from "commander";
import { ExitCode } from "../errors.js";
import { describeStatus } from "../client/report.js";
import { addAckTimeoutOption, addConnectionOptions, runControl, type ControlFlags } from "./connection.js";

export function registerStatus(program: Command): void {
  const command = program
    .command("status")
    .description("show the running job (host, progress) and the queued jobs with their ids")
    .option("--json", "print the builder's answer as JSON");
  addConnectionOptions(addAckTimeoutOption(command)).action(async (flags: ControlFlags) => {
    process.exitCode = await runControl(flags, "status", undefined, (status) => {
      if (!flags.json) for (const line of describeStatus(status)) process.stdout.write(`${line}\n`);
      return ExitCode.ok;
    });
  });
}
