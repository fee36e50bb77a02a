/** `homelab-deploy builder --config FILE`: the long-running build service. */
import { Option, type Command } from "commander";
import { loadConfig } from "../config.js";
import { startDaemon, type Daemon } from "../daemon/daemon.js";
import { ExitCode, VaultError } from "../errors.js";
import { createLogger } from "../logger.js";

/** systemd's default TimeoutStopSec is 90 s; we promise far less. */
const STOP_DEADLINE_MS = 9_500;

export function registerBuilder(program: Command): void {
  program
    .command("builder")
    .description("run the build service: take build requests from NATS and build them with nix, one host at a time")
    .addOption(new Option("-c, --config <file>", "config file (YAML, or JSON)").env("HOMELAB_DEPLOY_CONFIG").makeOptionMandatory())
    .action(async (flags: { config: string }) => {
      process.exitCode = await runBuilder(flags.config);
    });
}

export async function runBuilder(configFile: string): Promise<number> {
  const config = await loadConfig(configFile);
  const logger = createLogger({ level: config.log.level, fd: 1 });
  // A bug in one request's handling must not take the queue and every
  // waiting requester down with it: log it loudly and keep serving.
  process.on("unhandledRejection", (reason) => logger.error({ err: reason }, "unhandled rejection (a bug); the builder keeps running"));
  let daemon: Daemon;
  try {
    daemon = await startDaemon(config, logger);
  } catch (err) {
    if (!(err instanceof VaultError)) throw err;
    // Only an operator can fix this (a retriable problem is waited out): one
    // line in the journal with the rest of the log, and exit 1 so systemd
    // shows the unit failed instead of restarting it into the same wall.
    logger.fatal({ status: err.status }, err.message);
    return ExitCode.daemonFailed;
  }
  const onSignal = (signal: NodeJS.Signals) => {
    logger.info({ signal }, "received signal");
    setTimeout(() => {
      logger.error({ deadlineMs: STOP_DEADLINE_MS }, "graceful stop took too long; exiting now");
      process.exit(ExitCode.buildFailed);
    }, STOP_DEADLINE_MS).unref();
    void daemon.stop(`the builder is shutting down (it received ${signal})`);
  };
  // SIGHUP too (a closed terminal, `kill -HUP`): the builder has no config
  // to reload, and dying of it would leave requesters without a final.
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  process.once("SIGHUP", onSignal);
  return daemon.done;
}
