/**
 * The command-line flags every client command shares (NATS URL, seed file
 * or Vault, timeouts), with environment variables as fallbacks so a
 * systemd unit or CI job can set them once. What they mean — choosing the
 * seed source, connecting — is src/client/connection.ts's.
 */
import { Option, type Command } from "commander";
import { parseDuration } from "../util/duration.js";
import { askEveryBuilder, type GatherOptions } from "../client/gather.js";
import { withClient, type ClientSettings } from "../client/connection.js";
import { ExitCode, UsageError } from "../errors.js";
import type { AnswerTo, ControlName } from "../protocol.js";

export type ConnectionFlags = ClientSettings;

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

export function durationFlag(name: string, value: string, allowZero = false): number {
  const ms = parseDuration(value);
  if (ms === undefined || (ms === 0 && !allowZero)) throw new UsageError(`invalid ${name} ${JSON.stringify(value)}: expected a duration like 10s or 2m`);
  return ms;
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

/** --wait-for-builder: how long a build keeps asking while no builder is listening (restarting, reconnecting) or NATS cannot be reached. */
export function addWaitForBuilderOption(command: Command): Command {
  return command.addOption(
    new Option(
      "--wait-for-builder <duration>",
      "keep asking this long while no builder is listening (it restarts or reconnects) or NATS cannot be reached; 0 gives up at once",
    )
      .env("HOMELAB_DEPLOY_WAIT_FOR_BUILDER")
      .default("30s"),
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
    return printCombined(flags, combined, show);
  });
}

/** Prints gathered answers as runControl does; shared with `build --list`. */
export function printCombined<T>(
  flags: { json?: boolean },
  combined: { ok: true; answers: T[] } | { ok: false; rejected: { error: string } },
  show: (answers: T[]) => number,
): number {
  if (!combined.ok) {
    if (flags.json) process.stdout.write(`${JSON.stringify(combined.rejected)}\n`);
    else process.stderr.write(`rejected: ${combined.rejected.error}\n`);
    return ExitCode.usage;
  }
  if (flags.json) for (const answer of combined.answers) process.stdout.write(`${JSON.stringify(answer)}\n`);
  return show(combined.answers);
}
