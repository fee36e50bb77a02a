/**
 * `homelab-deploy build <repo> <target>`: request a build and follow it.
 * Exit 0 when every host built, 1 when any did not, 2 when nothing could be
 * built (bad arguments, rejected, no builder, no NATS).
 */
import { Option, type Command } from "commander";
import { requestBuild } from "../client.js";
import { parseDuration } from "../duration.js";
import { ExitCode, UsageError } from "../errors.js";
import { ALL_HOSTS, isValidHostName, isValidRef, isValidRepoName, type BuildResponse, type FinalResponse } from "../protocol.js";
import { describeMessage, summaryTable } from "../report.js";
import { addConnectionOptions, clientLogger, connectClient, type ConnectionFlags } from "./connection.js";

interface BuildFlags extends ConnectionFlags {
  ref?: string;
  json?: boolean;
  ackTimeout: string;
}

export function registerBuild(program: Command): void {
  const command = program
    .command("build")
    .description("ask the builder to build a host (or all hosts) of a repo, and follow the build")
    .argument("<repo>", "repo name from the builder's config, e.g. nixos-servers")
    .argument("<target>", `host name, or "${ALL_HOSTS}" for every host of the repo`)
    .option("--ref <ref>", "build this branch, tag or full commit id instead of the default branch")
    .option("--json", "print every message from the builder as one JSON line")
    .addOption(
      new Option("--ack-timeout <duration>", "give up when no builder accepts the request within this long")
        .env("HOMELAB_DEPLOY_ACK_TIMEOUT")
        .default("10s"),
    );
  addConnectionOptions(command).action(async (repo: string, target: string, flags: BuildFlags) => {
    process.exitCode = await runBuild(repo, target, flags);
  });
}

function checkArguments(repo: string, target: string, flags: BuildFlags): number {
  if (!isValidRepoName(repo)) throw new UsageError(`invalid repo name ${JSON.stringify(repo)}`);
  if (target !== ALL_HOSTS && !isValidHostName(target)) throw new UsageError(`invalid host name ${JSON.stringify(target)}`);
  if (flags.ref !== undefined && !isValidRef(flags.ref)) throw new UsageError(`invalid ref ${JSON.stringify(flags.ref)}`);
  const ackTimeoutMs = parseDuration(flags.ackTimeout);
  if (ackTimeoutMs === undefined || ackTimeoutMs <= 0) throw new UsageError(`invalid --ack-timeout ${JSON.stringify(flags.ackTimeout)}`);
  return ackTimeoutMs;
}

export async function runBuild(repo: string, target: string, flags: BuildFlags): Promise<number> {
  const ackTimeoutMs = checkArguments(repo, target, flags);
  const logger = clientLogger(flags);
  const print = (line: string) => process.stdout.write(`${line}\n`);
  const show = flags.json
    ? (message: BuildResponse) => print(JSON.stringify(message))
    : (message: BuildResponse) => describeMessage(message).forEach(print);
  const transport = await connectClient(flags, logger);
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const final = await requestBuild(
      transport.connection,
      { repo, target, ref: flags.ref },
      { ackTimeoutMs, signal: abort.signal, onMessage: show, onInvalid: (raw) => logger.warn({ raw }, "ignoring a message that is not part of the protocol") },
    );
    if (!flags.json) printSummary(final, print);
    return exitCodeFor(final);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await transport.stop();
  }
}

function printSummary(final: FinalResponse, print: (line: string) => void): void {
  const table = summaryTable(final);
  if (table.length === 0) return;
  print("");
  table.forEach(print);
}

export function exitCodeFor(final: FinalResponse): number {
  if (final.type === "rejected") return ExitCode.usage;
  return final.status === "success" ? ExitCode.ok : ExitCode.buildFailed;
}
