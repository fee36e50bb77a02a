/**
 * `homelab-deploy build <repo> <target>`: request a build and follow it.
 * `homelab-deploy build --list [repo]`: what the builder can build.
 * Exit 0 when every host built, 1 when any did not, 2 when nothing could be
 * built (bad arguments, rejected, no builder, no NATS).
 */
import type { Command } from "commander";
import { withClient } from "../client/connection.js";
import { requestBuildWaiting } from "../client/wait-for-builder.js";
import { ExitCode, UsageError } from "../errors.js";
import { ALL_HOSTS, isValidHostName, isValidRef, isValidRepoName, type FinalResponse } from "../protocol.js";
import { createReporter } from "../client/report.js";
import { describeDiscovers, reposOf } from "../client/report-builders.js";
import { discoverEveryBuilder } from "../client/gather.js";
import {
  addAckTimeoutOption,
  addConnectionOptions,
  addIdleTimeoutOption,
  addWaitForBuilderOption,
  durationFlag,
  printCombined,
  type ConnectionFlags,
} from "./connection.js";

interface BuildFlags extends ConnectionFlags {
  ref?: string;
  json?: boolean;
  changes?: boolean;
  list?: boolean;
  refresh?: boolean;
  ackTimeout: string;
  idleTimeout: string;
  waitForBuilder: string;
}

export function registerBuild(program: Command): void {
  const command = program
    .command("build")
    .description("ask the builder to build a host (or all hosts) of a repo and follow the build; or --list what it can build")
    .argument("[repo]", "repo name from the builder's config, e.g. nixos-servers")
    .argument("[target]", `host name, or "${ALL_HOSTS}" for every host of the repo`)
    .option("--ref <ref>", "build this branch, tag or full commit id instead of the default branch")
    .option("--list", "list the builder's repos and their hosts (of [repo] only, if given) instead of building")
    .option("--refresh", "with --list: fetch the repos again instead of using the builder's cached host lists")
    .option("--changes", "list every package that changed in each host's closure, not just the first few")
    .option("--json", "print every message from the builder as one JSON line");
  addAckTimeoutOption(command, "give up when no builder accepts the request within this long");
  addIdleTimeoutOption(command);
  addWaitForBuilderOption(command);
  addConnectionOptions(command).action(async (repo: string | undefined, target: string | undefined, flags: BuildFlags) => {
    process.exitCode = flags.list ? await runList(repo, target, flags) : await runBuild(repo, target, flags);
  });
}

function checkTarget(repo: string | undefined, target: string | undefined, flags: BuildFlags): { repo: string; target: string } {
  if (repo === undefined || target === undefined) throw new UsageError("build needs <repo> and <target> (a host, or all); or use --list");
  if (!isValidRepoName(repo)) throw new UsageError(`invalid repo name ${JSON.stringify(repo)}`);
  if (target !== ALL_HOSTS && !isValidHostName(target)) throw new UsageError(`invalid host name ${JSON.stringify(target)}`);
  if (flags.ref !== undefined && !isValidRef(flags.ref)) throw new UsageError(`invalid ref ${JSON.stringify(flags.ref)}`);
  return { repo, target };
}

export async function runBuild(repoArg: string | undefined, targetArg: string | undefined, flags: BuildFlags): Promise<number> {
  const { repo, target } = checkTarget(repoArg, targetArg, flags);
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  const idleTimeoutMs = durationFlag("--idle-timeout", flags.idleTimeout, true);
  const waitMs = durationFlag("--wait-for-builder", flags.waitForBuilder, true);
  // One window for both: NATS that cannot be reached yet (or is too slow to
  // answer a connection attempt) and no builder listening yet.
  const until = Date.now() + waitMs;
  const reporter = createReporter({ json: flags.json === true, out: process.stdout, allChanges: flags.changes === true });
  let saidWaiting = false;
  const connect = {
    retryForMs: waitMs,
    onRetry: (err: Error) => reporter.waiting(err.message, until),
  };
  try {
    return await withClient(
      flags,
      async (nc, signal, logger) => {
        const final = await requestBuildWaiting(
          nc,
          { repo, target, ref: flags.ref },
          {
            ackTimeoutMs,
            idleTimeoutMs,
            signal,
            onMessage: (message) => reporter.message(message),
            onInvalid: (raw) => logger.warn({ raw }, "ignoring a message that is not part of the protocol"),
            onGap: (missing) => logger.warn({ missing }, "some of the builder's messages never arrived (the final result below is complete)"),
          },
          {
            until,
            onWaiting: (err, retryInMs) => {
              reporter.waiting(err.message, until);
              if (!saidWaiting) logger.warn({ err: err.message, waitForBuilderMs: waitMs }, "no builder is listening yet; asking again");
              else logger.debug({ retryInMs }, "no builder is listening yet; asking again");
              saidWaiting = true;
            },
          },
        );
        reporter.finish(final);
        return exitCodeFor(final);
      },
      connect,
    );
  } finally {
    reporter.close();
  }
}

async function runList(repo: string | undefined, extra: string | undefined, flags: BuildFlags): Promise<number> {
  if (extra !== undefined) throw new UsageError("--list takes at most one argument: the repo");
  if (repo !== undefined && !isValidRepoName(repo)) throw new UsageError(`invalid repo name ${JSON.stringify(repo)}`);
  const ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout);
  return withClient(flags, async (nc, signal) => {
    // Builders answer at once and fetch in the background; how long to ask
    // again while a repo is still loading is discoverSettleMs's.
    const combined = await discoverEveryBuilder(nc, { refresh: flags.refresh === true, repo, ackTimeoutMs, signal });
    return printCombined(flags, combined, (discovers) => {
      const repos = reposOf(discovers);
      if (repo !== undefined && !repos.includes(repo)) {
        const who = discovers.length === 1 ? "this builder builds" : "these builders build";
        if (!flags.json) process.stderr.write(`unknown repo ${repo}; ${who} ${repos.join(", ")}\n`);
        return ExitCode.usage;
      }
      if (!flags.json) for (const line of describeDiscovers(discovers, repo)) process.stdout.write(`${line}\n`);
      return ExitCode.ok;
    });
  });
}

export function exitCodeFor(final: FinalResponse): number {
  if (final.type === "rejected") return ExitCode.usage;
  return final.status === "success" ? ExitCode.ok : ExitCode.buildFailed;
}
