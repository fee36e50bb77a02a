/**
 * A requester's connection to NATS, shared by the CLI's client commands and
 * the MCP server: which NKey source its settings choose (a seed file or
 * Vault, never both), connecting (retried within a window when the server
 * is only slow or away, never when it refuses the key), and one unit of
 * work on a connection that is always closed afterwards.
 *
 * The settings are named as the command line names them (`--vault-addr`,
 * …): the CLI and the MCP server take the same flags, and an error must
 * tell the operator which one to fix.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { NatsConnection } from "nats";
import { VaultSchema, issueMessage, vaultEnvDefaults, type VaultConfig } from "../config.js";
import { ConnectionError, UsageError } from "../errors.js";
import { createLogger, type Logger } from "../logger.js";
import { fileSeedSource, type SeedSource } from "../nats/credentials.js";
import { NatsTransport } from "../nats/transport.js";
import { vaultSeedSource, type VaultSettingNames } from "../nats/vault.js";
import { Backoff } from "../util/backoff.js";
import { VERSION } from "../version.js";

/** Where NATS is and who the requester is: the client commands' connection flags, parsed. */
export interface ClientSettings {
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

/** How each Vault setting is named to the operator (the flags that set it). */
export const VAULT_SETTING_NAMES: VaultSettingNames = {
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

export function clientLogger(settings: Pick<ClientSettings, "logLevel">): Logger {
  return createLogger({ level: settings.logLevel as "warn", fd: 2 });
}

/** The NKey source the settings name: a seed file, or Vault (never both). */
export function seedSourceFrom(settings: ClientSettings, logger: Logger, env: NodeJS.ProcessEnv = process.env): SeedSource {
  const vaultChosen = Boolean(settings.vaultRoleIdFile || settings.vaultSecretIdFile);
  if (settings.nkeySeedFile && vaultChosen) {
    throw new UsageError("two NKey sources: pass --nkey-seed-file or the --vault-* options, not both");
  }
  if (settings.nkeySeedFile) return fileSeedSource(settings.nkeySeedFile);
  if (!vaultChosen) throw new UsageError(NO_CREDENTIALS);
  return vaultSeedSource({ settings: vaultSettingsFrom(settings, env), names: VAULT_SETTING_NAMES, logger, wait: false });
}

function vaultSettingsFrom(settings: ClientSettings, env: NodeJS.ProcessEnv): VaultConfig {
  const names = VAULT_SETTING_NAMES;
  // The builder's own secret path is the config's default; a client must name its own.
  if (!settings.vaultSecretPath) throw new UsageError(`${names.secretPath}: required: the path of this client's NKey seed in Vault`);
  const given = {
    address: settings.vaultAddr || undefined,
    caCertFile: settings.vaultCacert || undefined,
    roleIdFile: settings.vaultRoleIdFile || undefined,
    secretIdFile: settings.vaultSecretIdFile || undefined,
    kvMount: settings.vaultKvMount,
    secretPath: settings.vaultSecretPath,
    secretField: settings.vaultSecretField,
    timeout: settings.vaultTimeout,
  };
  const result = VaultSchema.safeParse(vaultEnvDefaults(given, env));
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const key = issue.path[0] as keyof VaultSettingNames;
    return `${names[key] ?? issue.path.join(".")}: ${issueMessage(issue)}`;
  });
  throw new UsageError(problems.join("; "));
}

export interface ConnectOptions {
  /**
   * Keep trying this long when NATS cannot be reached (absent, or too slow
   * to answer: a connection attempt that times out on a loaded machine).
   * 0: one attempt. A refused key or bad credentials end it at once.
   */
  retryForMs?: number;
  signal?: AbortSignal;
  /** Told before each new attempt. */
  onRetry?: (err: ConnectionError, retryInMs: number) => void;
}

const CONNECT_BACKOFF = { initialMs: 250, maxMs: 2_000 };

/**
 * Connects as a requester: the transport fails at once rather than
 * waiting for NATS (a client must say so and exit), and is tried again
 * here only within `retryForMs`.
 */
export async function connectClient(settings: ClientSettings, logger: Logger, options: ConnectOptions = {}): Promise<NatsTransport> {
  const seed = seedSourceFrom(settings, logger);
  const deadline = Date.now() + (options.retryForMs ?? 0);
  const backoff = new Backoff(CONNECT_BACKOFF);
  // Each attempt starts from the seed already read (no second Vault login
  // per retry); a refusal within an attempt still reads it afresh.
  let loaded: Uint8Array | undefined;
  for (;;) {
    let served = false;
    const attemptSeed: SeedSource = {
      description: seed.description,
      load: async () => {
        if (!loaded || served) loaded = await seed.load();
        served = true;
        return loaded;
      },
    };
    const transport = new NatsTransport({
      servers: settings.natsUrl.split(",").map((s) => s.trim()).filter(Boolean),
      name: `homelab-deploy-client/${VERSION}`,
      seed: attemptSeed,
      logger,
      waitForServer: false,
    });
    try {
      await transport.start();
      return transport;
    } catch (err) {
      const wait = backoff.next();
      const retriable = err instanceof ConnectionError && err.reason === "unreachable";
      if (!retriable || Date.now() + wait >= deadline || options.signal?.aborted) throw err;
      options.onRetry?.(err, wait);
      logger.info({ err: err.message, retryInMs: wait }, "NATS not reachable; trying again");
      await sleep(wait, undefined, { signal: options.signal }).catch(() => undefined);
      if (options.signal?.aborted) throw err;
    }
  }
}

/**
 * Connects, runs `work` with an AbortSignal that fires on Ctrl-C/SIGTERM,
 * and always closes the connection afterwards.
 */
export async function withClient<T>(
  settings: ClientSettings,
  work: (nc: NatsConnection, signal: AbortSignal, logger: Logger) => Promise<T>,
  connect: Omit<ConnectOptions, "signal"> = {},
): Promise<T> {
  const logger = clientLogger(settings);
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const transport = await connectClient(settings, logger, { ...connect, signal: abort.signal });
    try {
      return await work(transport.connection, abort.signal, logger);
    } finally {
      await transport.stop();
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
