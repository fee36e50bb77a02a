/**
 * NATS connection options shared by every client command (build, and the
 * commands that come after it): flags, with environment variables as
 * fallbacks so a systemd unit or CI job can set them once.
 */
import { Option, type Command } from "commander";
import type { NatsConnection } from "nats";
import { parseDuration } from "../duration.js";
import { fileSeedSource, type SeedSource } from "../credentials.js";
import { UsageError } from "../errors.js";
import { createLogger, type Logger } from "../logger.js";
import { NatsTransport } from "../transport.js";
import { VERSION } from "../version.js";

export interface ConnectionFlags {
  natsUrl: string;
  nkeySeedFile?: string;
  logLevel: string;
}

export function addConnectionOptions(command: Command): Command {
  return command
    .addOption(
      new Option("--nats-url <url>", "NATS server URL (comma-separated for several)")
        .env("HOMELAB_DEPLOY_NATS_URL")
        .default("nats://127.0.0.1:4222"),
    )
    .addOption(new Option("--nkey-seed-file <file>", "file holding this client's NATS user NKey seed").env("HOMELAB_DEPLOY_NKEY_SEED_FILE"))
    .addOption(
      new Option("--log-level <level>", "log level for messages on stderr")
        .choices(["trace", "debug", "info", "warn", "error", "silent"])
        .env("HOMELAB_DEPLOY_LOG_LEVEL")
        .default("warn"),
    );
}

export function clientLogger(flags: ConnectionFlags): Logger {
  return createLogger({ level: flags.logLevel as "warn", fd: 2 });
}

export function seedSourceFrom(flags: ConnectionFlags): SeedSource {
  if (!flags.nkeySeedFile) {
    throw new UsageError("no NATS credentials: pass --nkey-seed-file FILE or set HOMELAB_DEPLOY_NKEY_SEED_FILE");
  }
  return fileSeedSource(flags.nkeySeedFile);
}

export function durationFlag(name: string, value: string, allowZero = false): number {
  const ms = parseDuration(value);
  if (ms === undefined || (ms === 0 && !allowZero)) throw new UsageError(`invalid ${name} ${JSON.stringify(value)}: expected a duration like 10s or 2m`);
  return ms;
}

/**
 * Connects, runs `work` with an AbortSignal that fires on Ctrl-C/SIGTERM,
 * and always closes the connection afterwards.
 */
export async function withClient<T>(
  flags: ConnectionFlags,
  work: (nc: NatsConnection, signal: AbortSignal, logger: Logger) => Promise<T>,
): Promise<T> {
  const logger = clientLogger(flags);
  const transport = await connectClient(flags, logger);
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await work(transport.connection, abort.signal, logger);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await transport.stop();
  }
}

/** Connects once; a client says so and exits rather than waiting for NATS. */
export async function connectClient(flags: ConnectionFlags, logger: Logger): Promise<NatsTransport> {
  const transport = new NatsTransport({
    servers: flags.natsUrl.split(",").map((s) => s.trim()).filter(Boolean),
    name: `homelab-deploy-client/${VERSION}`,
    seed: seedSourceFrom(flags),
    logger,
    waitForServer: false,
  });
  await transport.start();
  return transport;
}
