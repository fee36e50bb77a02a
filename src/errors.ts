/**
 * The error classes of homelab-deploy. Each carries the exit code the CLI
 * should use and a message written for the operator who has to fix it.
 * Build failures are not errors: they are results (see protocol.ts).
 */

export const ExitCode = {
  ok: 0,
  buildFailed: 1,
  /** The builder daemon met a problem it cannot wait out, e.g. Vault refused its AppRole. */
  daemonFailed: 1,
  /** Usage, configuration or connection problem: nothing was built. */
  usage: 2,
} as const;

export class HomelabDeployError extends Error {
  readonly exitCode: number = ExitCode.usage;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Wrong or missing command-line arguments. */
export class UsageError extends HomelabDeployError {}

/** The config file is unreadable or does not match the schema. */
export class ConfigError extends HomelabDeployError {
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
    options?: { cause?: unknown },
  ) {
    super(`invalid config ${file}:\n  ${problems.join("\n  ")}`, options);
  }
}

/** A state file's path holds something that is not a regular file (a FIFO, a directory, a device). */
export class StateFileError extends HomelabDeployError {}

/** An NKey seed could not be read or is not a NATS user seed. Never carries the seed. */
export class CredentialsError extends HomelabDeployError {}

/**
 * Getting the NKey seed from Vault failed. `retriable` problems (Vault
 * unreachable, TLS, timeouts, 5xx) may go away by themselves; the others
 * need an operator. The message names what to fix and never carries the
 * token, the secret-id or the seed.
 */
export class VaultError extends CredentialsError {
  constructor(
    message: string,
    readonly retriable: boolean,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** NATS could not be reached, refused us, or closed the connection for good. */
export class ConnectionError extends HomelabDeployError {
  constructor(
    message: string,
    readonly reason: "refused" | "unreachable" | "closed",
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The client published a request and no builder answered it. */
export class NoBuilderError extends HomelabDeployError {}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof HomelabDeployError) return err.exitCode;
  return ExitCode.usage;
}
