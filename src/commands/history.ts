/** `homelab-deploy history <repo> [<host>]`: the builder's last results per host, newest first. */
import type { Command } from "commander";
import { ExitCode, UsageError } from "../errors.js";
import { isValidHostName, isValidRepoName } from "../protocol.js";
import { describeHistory } from "../client/report.js";
import { addAckTimeoutOption, addConnectionOptions, runControl, type ControlFlags } from "./connection.js";

export function registerHistory(program: Command): void {
  const command = program
    .command("history")
    .description("show the builder's last results for a repo or one of its hosts (newest first): status, duration, revision, store path")
    .argument("<repo>", "repo name, e.g. nixos-servers")
    .argument("[host]", "only this host")
    .option("--json", "print the builder's answer as JSON");
  addConnectionOptions(addAckTimeoutOption(command)).action(async (repo: string, host: string | undefined, flags: ControlFlags) => {
    if (!isValidRepoName(repo)) throw new UsageError(`invalid repo name ${JSON.stringify(repo)}`);
    if (host !== undefined && !isValidHostName(host)) throw new UsageError(`invalid host name ${JSON.stringify(host)}`);
    process.exitCode = await runControl(flags, "history", host === undefined ? { repo } : { repo, host }, ([answer]) => {
      if (!flags.json && answer) for (const line of describeHistory(answer)) process.stdout.write(`${line}\n`);
      return ExitCode.ok;
    });
  });
}
