/** `homelab-deploy cancel <job>`: remove a queued job or stop the running one. */
import type { Command } from "commander";
import { ExitCode, UsageError } from "../errors.js";
import { isValidJobId } from "../protocol.js";
import { describeCancel } from "../client/report.js";
import { addAckTimeoutOption, addConnectionOptions, runControl, type ControlFlags } from "./connection.js";

export function registerCancel(program: Command): void {
  const command = program
    .command("cancel")
    .description("cancel a job by id (from `build` or `status`): a queued job is removed, a running one stopped; its requesters get completed/cancelled")
    .argument("<job>", "job id, e.g. j3fa2c1d9e0")
    .option("--json", "print the builder's answer as JSON");
  addConnectionOptions(addAckTimeoutOption(command)).action(async (jobId: string, flags: ControlFlags) => {
    if (!isValidJobId(jobId)) throw new UsageError(`invalid job id ${JSON.stringify(jobId)}: expected one like j3fa2c1d9e0`);
    process.exitCode = await runControl(flags, "cancel", { jobId }, ([answer]) => {
      if (!flags.json && answer) process.stdout.write(`${describeCancel(answer)}\n`);
      return ExitCode.ok;
    });
  });
}
