/**
 * NATS connection options shared by every client command (build, and the
 * commands that come after it): flags, with environment variables as
 * fallbacks so a systemd unit or CI job can set them once.
 */
import { Option, type Command } from "commander";
import type { NatsConnection } from "nats";
import { parseDuration } from "../util/duration.js";
import { VaultSchema, issueMessage, vaultEnvDefaults, type VaultConfig } from "../config.js";
import { fileSeedSource, type SeedSource } from "../nats/credentials.js";
import { askEveryBuilder, type GatherOptions } from "../client/gather.js";
import { ExitCode, UsageError } from "../errors.js";
import type { AnswerTo, ControlName } from "../protocol.js";
import { createLogger, type Logger } from "../logger.js";
import { NatsTransport } from "../nats/transport.js";
import { vaultSeedSource, type VaultSettingNames } from "../nats/vault.js";
import { VERSION } from "../version.js";

export interface ConnectionFlags {
  natsUrl: string;
  nkeySeedFile?: string;
  vaultAddr?: string;
  vaultCacert?: string;
  vaultRoleIdFile?: string;
  vaultSecretIdFile?: string;
  vaultKvMount?: string;
  vaultSecretPath?: string;
  vaultSecretField?: string;
  vaultTimeout?: string;
  logLevel: string;
}

const FLAG_NAMES: VaultSettingNames = {
  address: "--vault-addr",
  caCertFile: "--vault-cacert",
  roleIdFile: "--vault-role-id-file",
  secretIdFile: "--vault-secret-id-file",
  kvMount: "--vault-kv-mount",
  secretPath: "--vault-secret-path",
  secretField: "--vault-secret-field",
  timeout: "--vault-timeout",
};

const NO_CREDENTIALS =
  "no NATS credentials: pass --nkey-seed-file FILE (HOMELAB_DEPLOY_NKEY_SEED_FILE), or get the seed from Vault with " +
  "--vault-role-id-file FILE --vault-secret-id-file FILE --vault-secret-path PATH (HOMELAB_DEPLOY_VAULT_ROLE_ID_FILE, …)";

function vaultOptions(): Option[] {
  const option = (flags: string, description: string, env: string) => new Option(flags, description).env(`HOMELAB_DEPLOY_${env}`);
  return [
    option("--vault-addr <url>", "Vault address, e.g. https://vault.example.org:8200; falls back to $VAULT_ADDR", "VAULT_ADDR"),
    option("--vault-cacert <file>", "CA certificate that signed Vault's TLS certificate; falls back to $VAULT_CACERT", "VAULT_CACERT"),
    option("--vault-role-id-file <file>", "file holding this client's AppRole role-id (selects Vault as the NKey source)", "VAULT_ROLE_ID_FILE"),
    option("--vault-secret-id-file <file>", "file holding this client's AppRole secret-id", "VAULT_SECRET_ID_FILE"),
    option("--vault-kv-mount <mount>", "KV version 2 mount holding the seed", "VAULT_KV_MOUNT").default("secret"),
    option("--vault-secret-path <path>", "path of this client's NKey seed in the mount, e.g. shared/homelab-deploy/scheduler-nkey", "VAULT_SECRET_PATH"),
    option("--vault-secret-field <field>", "field of the secret holding the seed", "VAULT_SECRET_FIELD").default("nkey"),
    option("--vault-timeout <duration>", "give up on a Vault request after this long", "VAULT_TIMEOUT").default("10s"),
  ];
}

export function addConnectionOptions(command: Command): Command {
  command
    .addOption(
      new Option("--nats-url <url>", "NATS server URL (comma-separated for several)")
        .env("HOMELAB_DEPLOY_NATS_URL")
        .default("nats://127.0.0.1:4222"),
    )
    .addOption(new Option("--nkey-seed-file <file>", "file holding this client's NATS user NKey seed").env("HOMELAB_DEPLOY_NKEY_SEED_FILE"));
  for (const option of vaultOptions()) command.addOption(option);
  return command.addOption(
    new Option("--log-level <level>", "log level for messages on stderr")
      .choices(["trace", "debug", "info", "warn", "error", "silent"])
      .env("HOMELAB_DEPLOY_LOG_LEVEL")
      .default("warn"),
  );
}

export function clientLogger(flags: ConnectionFlags): Logger {
  return createLogger({ level: flags.logLevel as "warn", fd: 2 });
}

/** The NKey source the flags name: a seed file, or Vault (never both). */
export function seedSourceFrom(flags: ConnectionFlags, logger: Logger, env: NodeJS.ProcessEnv = process.env): SeedSource {
  const vaultChosen = Boolean(flags.vaultRoleIdFile || flags.vaultSecretIdFile);
  if (flags.nkeySeedFile && vaultChosen) {
    throw new UsageError("two NKey sources: pass --nkey-seed-file or the --vault-* options, not both");
  }
  if (flags.nkeySeedFile) return fileSeedSource(flags.nkeySeedFile);
  if (!vaultChosen) throw new UsageError(NO_CREDENTIALS);
  return vaultSeedSource({ settings: vaultSettingsFrom(flags, env), names: FLAG_NAMES, logger, wait: false });
}

function vaultSettingsFrom(flags: ConnectionFlags, env: NodeJS.ProcessEnv): VaultConfig {
  // The builder's own secret path is the config's default; a client must name its own.
  if (!flags.vaultSecretPath) throw new UsageError(`${FLAG_NAMES.secretPath}: required: the path of this client's NKey seed in Vault`);
  const fromFlags = {
    address: flags.vaultAddr || undefined,
    caCertFile: flags.vaultCacert || undefined,
    roleIdFile: flags.vaultRoleIdFile || undefined,
    secretIdFile: flags.vaultSecretIdFile || undefined,
    kvMount: flags.vaultKvMount,
    secretPath: flags.vaultSecretPath,
    secretField: flags.vaultSecretField,
    timeout: flags.vaultTimeout,
  };
  const result = VaultSchema.safeParse(vaultEnvDefaults(fromFlags, env));
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const key = issue.path[0] as keyof VaultSettingNames;
    return `${FLAG_NAMES[key] ?? issue.path.join(".")}: ${issueMessage(issue)}`;
  });
  throw new UsageError(problems.join("; "));
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

export interface TimeoutFlags {
  ackTimeout: string;
  idleTimeout: string;
}

/** --ack-timeout: how long a request waits for a builder to take it. */
export function addAckTimeoutOption(command: Command, description = "give up when no builder answers within this long"): Command {
  return command.addOption(new Option("--ack-timeout <duration>", description).env("HOMELAB_DEPLOY_ACK_TIMEOUT").default("10s"));
}

/** --idle-timeout: how long an accepted build may stay silent (the builder sends heartbeats). */
export function addIdleTimeoutOption(command: Command): Command {
  return command.addOption(
    new Option("--idle-timeout <duration>", "give up when an accepted build sends nothing (not even a heartbeat) for this long; 0 waits forever")
      .env("HOMELAB_DEPLOY_IDLE_TIMEOUT")
      .default("2m"),
  );
}

export interface ControlFlags extends ConnectionFlags {
  json?: boolean;
  ackTimeout: string;
}

/**
 * One control request from the command line to every builder: connect,
 * ask, gather the answers (src/client/gather.ts), print them as JSON lines
 * with --json (one per builder), report `rejected` (exit 2), else hand the
 * answers (one per builder, or for cancel the holder's) to `show`, which
 * prints them for people and says the exit code.
 */
export async function runControl<N extends ControlName>(
  flags: ControlFlags,
  name: N,
  body: Record<string, unknown> | undefined,
  show: (answers: Array<AnswerTo<N>>) => number,
  ackTimeoutMs = durationFlag("--ack-timeout", flags.ackTimeout),
  gather: Pick<GatherOptions, "quietMs" | "maxAfterFirstMs"> = {},
): Promise<number> {
  return withClient(flags, async (nc, signal) => {
    const combined = await askEveryBuilder(nc, name, body, { ackTimeoutMs, signal, ...gather });
    if (!combined.ok) {
      if (flags.json) process.stdout.write(`${JSON.stringify(combined.rejected)}\n`);
      else process.stderr.write(`rejected: ${combined.rejected.error}\n`);
      return ExitCode.usage;
    }
    if (flags.json) for (const answer of combined.answers) process.stdout.write(`${JSON.stringify(answer)}\n`);
    return show(combined.answers);
  });
}

/** Connects once; a client says so and exits rather than waiting for NATS. */
export async function connectClient(flags: ConnectionFlags, logger: Logger): Promise<NatsTransport> {
  const transport = new NatsTransport({
    servers: flags.natsUrl.split(",").map((s) => s.trim()).filter(Boolean),
    name: `homelab-deploy-client/${VERSION}`,
    seed: seedSourceFrom(flags, logger),
    logger,
    waitForServer: false,
  });
  await transport.start();
  return transport;
}
