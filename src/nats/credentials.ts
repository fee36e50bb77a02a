/**
 * Where a NATS NKey seed comes from. The seed lives in memory only and is
 * never put into a log line or an error message.
 */
import { readFile } from "node:fs/promises";
import { fromSeed } from "nkeys.js";
import { CredentialsError, errorMessage } from "../errors.js";

/** Loaded at start, and asked once more when NATS refuses the key (it may have been rotated). */
export interface SeedSource {
  /** Human-readable origin for log lines, e.g. "file /run/keys/builder.nkey". */
  readonly description: string;
  load(): Promise<Uint8Array>;
}

/**
 * Checks that `text` holds a NATS *user* seed and returns its bytes. Seeds
 * copied from files or Vault often end in a newline, so surrounding
 * whitespace is dropped first.
 */
export function parseUserSeed(text: string, origin: string): Uint8Array {
  const seed = text.trim();
  if (!seed.startsWith("SU")) {
    const problem = seed.startsWith("S") ? "holds an NKey seed, but not a user seed (it must start with SU)" : "does not hold an NKey seed";
    throw new CredentialsError(`${origin} ${problem}`);
  }
  const bytes = new TextEncoder().encode(seed);
  try {
    fromSeed(bytes);
  } catch {
    // nkeys.js errors are safe, but say nothing about the content on purpose.
    throw new CredentialsError(`${origin} holds a malformed NKey seed (bad encoding or checksum)`);
  }
  return bytes;
}

/** The public key ("U…") for log lines: it identifies the user without revealing the seed. */
export function publicKeyOf(seed: Uint8Array): string {
  return fromSeed(seed).getPublicKey();
}

export function fileSeedSource(path: string): SeedSource {
  const description = `seed file ${path}`;
  return {
    description,
    async load() {
      let text: string;
      try {
        text = await readFile(path, "utf8");
      } catch (err) {
        throw new CredentialsError(`cannot read NKey ${description}: ${errorMessage(err)}`, { cause: err });
      }
      return parseUserSeed(text, description);
    },
  };
}
