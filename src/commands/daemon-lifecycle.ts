/** How a daemon command (builder, listener) runs: start, stop gracefully on a signal, exit with the daemon's code. */
import type { Daemon } from "../daemon/daemon.js";
import { ExitCode, VaultError } from "../errors.js";
import type { Logger } from "../logger.js";

/** systemd's default TimeoutStopSec is 90 s; we promise far less. */
const STOP_DEADLINE_MS = 9_500;

export async function runDaemon(logger: Logger, what: string, start: () => Promise<Daemon>): Promise<number> {
  // A bug in one request's handling must not take the service and every
  // waiting requester down with it: log it loudly and keep serving.
  process.on("unhandledRejection", (reason) => logger.error({ err: reason }, `unhandled rejection (a bug); the ${what} keeps running`));
  let daemon: Daemon;
  try {
    daemon = await start();
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
    void daemon.stop(`the ${what} is shutting down (it received ${signal})`);
  };
  // SIGHUP too (a closed terminal, `kill -HUP`): there is no config to
  // reload, and dying of it would leave requesters without a final answer.
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  process.once("SIGHUP", onSignal);
  return daemon.done;
}
