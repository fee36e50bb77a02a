/**
 * The NKey seed from Vault: AppRole login with the role-id and secret-id
 * files the provisioning puts on each host, then a KV version 2 read of
 * `<kvMount>/data/<secretPath>`, field `secretField`. Talks to Vault through
 * node-vault. The client token lives for one fetch: it is revoked and
 * dropped as soon as the secret is read. Neither the token, the secret-id
 * nor the seed is ever put into a log line or an error message.
 */
import { readFile } from "node:fs/promises";
import type NodeVault from "node-vault";
import { z } from "zod";
import { Backoff, delay } from "../util/backoff.js";
import type { VaultConfig } from "../config.js";
import { parseUserSeed, publicKeyOf, type SeedSource } from "./credentials.js";
import { formatDuration } from "../util/duration.js";
import { CredentialsError, VaultError, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";

/** What each setting is called where the operator sets it, so messages say what to change. */
export type VaultSettingNames = Record<
  "address" | "caCertFile" | "roleIdFile" | "secretIdFile" | "kvMount" | "secretPath" | "secretField" | "timeout",
  string
>;

export const CONFIG_KEY_NAMES: VaultSettingNames = {
  address: "vault.address",
  caCertFile: "vault.caCertFile",
  roleIdFile: "vault.roleIdFile",
  secretIdFile: "vault.secretIdFile",
  kvMount: "vault.kvMount",
  secretPath: "vault.secretPath",
  secretField: "vault.secretField",
  timeout: "vault.timeout",
};

export interface VaultSourceOptions {
  settings: VaultConfig;
  names: VaultSettingNames;
  logger: Logger;
  /** Daemon: wait out retriable problems with backoff. Client: fail at once. */
  wait: boolean;
}

export function vaultSeedSource(options: VaultSourceOptions): SeedSource {
  const { settings } = options;
  return {
    description: `Vault ${settings.address} ${secretLocation(settings)}`,
    load: () => fetchWithRetry(options),
  };
}

async function fetchWithRetry({ settings, names, logger, wait }: VaultSourceOptions): Promise<Uint8Array> {
  const backoff = new Backoff({ initialMs: settings.retry.initialDelay, maxMs: settings.retry.maxDelay });
  for (let attempt = 1; ; attempt++) {
    try {
      const { seed, version } = await fetchSeed(settings, names);
      logger.info(
        { vault: settings.address, secretPath: secretLocation(settings), version, user: publicKeyOf(seed), attempt },
        "fetched the NKey seed from Vault",
      );
      return seed;
    } catch (err) {
      if (!wait || !(err instanceof VaultError) || !err.retriable) throw err;
      const retryInMs = backoff.next();
      logger.warn({ vault: settings.address, status: err.status, attempt, retryInMs }, `${err.message}; retrying in ${formatDuration(retryInMs)}`);
      await delay(retryInMs);
    }
  }
}

function secretLocation(settings: Pick<VaultConfig, "kvMount" | "secretPath" | "secretField">): string {
  return `${settings.kvMount}/data/${settings.secretPath}#${settings.secretField}`;
}

const LoginResponseSchema = z.object({ auth: z.object({ client_token: z.string().min(1) }) });

const KvReadResponseSchema = z.object({
  data: z.object({
    data: z.record(z.string(), z.unknown()),
    metadata: z.object({ version: z.number().optional() }).nullish(),
  }),
});

type VaultClient = ReturnType<typeof NodeVault>;

/** One attempt: login, read, revoke. Every failure comes out as a VaultError. */
async function fetchSeed(settings: VaultConfig, names: VaultSettingNames): Promise<{ seed: Uint8Array; version?: number }> {
  const ca = settings.caCertFile ? await readSettingFile(settings.caCertFile, names.caCertFile) : undefined;
  const roleId = await readSettingFile(settings.roleIdFile, names.roleIdFile);
  const secretId = await readSettingFile(settings.secretIdFile, names.secretIdFile);
  const client = await vaultClient(settings, ca);
  const failure = (step: Step) => (err: unknown) => {
    throw classify(err, step, settings, names);
  };
  try {
    const login: unknown = await client.approleLogin({ role_id: roleId, secret_id: secretId }).catch(failure("login"));
    if (!LoginResponseSchema.safeParse(login).success) {
      throw new VaultError(`Vault at ${settings.address} answered the AppRole login without a client token: check ${names.address}`, false);
    }
    const read: unknown = await client.read(`${settings.kvMount}/data/${settings.secretPath}`).catch(failure("read"));
    return seedFrom(read, settings, names);
  } finally {
    await revokeToken(client);
  }
}

async function vaultClient(settings: VaultConfig, ca: string | undefined): Promise<VaultClient> {
  // Loaded on first use: a builder with a seed file never pays for node-vault and axios.
  const { default: createClient } = await import("node-vault");
  const client = createClient({
    endpoint: settings.address,
    // node-vault's debug output would include the login body (the secret-id).
    debug: () => undefined,
    // strictSSL: node-vault would let VAULT_SKIP_VERIFY turn certificate checks off unseen.
    requestOptions: { timeout: settings.timeout, strictSSL: true, ...(ca ? { ca } : {}) },
  });
  // node-vault falls back to VAULT_TOKEN and VAULT_PREFIX: an operator's own
  // token must not ride along on our requests, and paths are exactly ours.
  client.token = "";
  (client as { pathPrefix?: string }).pathPrefix = "";
  return client;
}

/** Best effort: the token is useless to anyone once revoked, and expires anyway if this fails. */
async function revokeToken(client: VaultClient): Promise<void> {
  if (!client.token) return;
  try {
    await client.tokenRevokeSelf();
  } catch {
    // Nothing to fix here: Vault expires the token at the end of its TTL.
  } finally {
    client.token = "";
  }
}

function seedFrom(read: unknown, settings: VaultConfig, names: VaultSettingNames): { seed: Uint8Array; version?: number } {
  const where = `${settings.kvMount}/data/${settings.secretPath}`;
  const parsed = KvReadResponseSchema.safeParse(read);
  if (!parsed.success) {
    throw new VaultError(`Vault secret ${where} is not a KV version 2 secret: check ${names.kvMount} (the mount must be KV version 2)`, false);
  }
  const { data, metadata } = parsed.data.data;
  const value = Object.hasOwn(data, settings.secretField) ? data[settings.secretField] : undefined;
  if (value === undefined) {
    const fields = Object.keys(data).join(", ") || "none";
    throw new VaultError(
      `Vault secret ${where} has no field "${settings.secretField}" (its fields: ${fields}): check ${names.secretField}`,
      false,
    );
  }
  if (typeof value !== "string") {
    throw new VaultError(`Vault secret ${where} field "${settings.secretField}" is not a string: store the NATS user seed (SU…) there`, false);
  }
  try {
    return { seed: parseUserSeed(value, `Vault secret ${where} field "${settings.secretField}"`), version: metadata?.version };
  } catch (err) {
    if (!(err instanceof CredentialsError)) throw err;
    throw new VaultError(`${err.message}: store the NATS user seed (SU…, from nk -gen user) there`, false, undefined, { cause: err });
  }
}

async function readSettingFile(path: string, name: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new VaultError(`cannot read ${name} ${path}: ${errorMessage(err)}`, false, undefined, { cause: err });
  }
  const value = text.trim();
  if (!value) throw new VaultError(`${name} ${path} is empty`, false);
  return value;
}

type Step = "login" | "read";

/** node-vault's API errors carry `response.statusCode`; network errors carry a Node/axios `code`. */
const ApiErrorSchema = z.object({ response: z.object({ statusCode: z.number(), body: z.unknown() }) });
const VaultErrorBodySchema = z.object({ errors: z.array(z.string()) });

function classify(err: unknown, step: Step, settings: VaultConfig, names: VaultSettingNames): VaultError {
  const api = ApiErrorSchema.safeParse(err);
  if (api.success) return classifyAnswer(api.data.response.statusCode, api.data.response.body, step, settings, names);
  return classifyNetworkError(err, settings, names);
}

function classifyAnswer(status: number, body: unknown, step: Step, settings: VaultConfig, names: VaultSettingNames): VaultError {
  const at = `Vault at ${settings.address}`;
  const vaultBody = VaultErrorBodySchema.safeParse(body);
  const said = vaultBody.success && vaultBody.data.errors.length > 0 ? `${status}: ${vaultBody.data.errors.join("; ")}` : String(status);
  if (status >= 500 || status === 429 || status === 412) return new VaultError(`${at} is unavailable (${said})`, true, status);
  if (!vaultBody.success) {
    return new VaultError(`the server at ${settings.address} did not answer like Vault (${status}): check ${names.address} (http:// or https://, host and port)`, false, status);
  }
  const where = `${settings.kvMount}/data/${settings.secretPath}`;
  if (step === "login" && (status === 400 || status === 403)) {
    return new VaultError(`${at} refused the AppRole login (${said}): check ${names.roleIdFile} and ${names.secretIdFile}`, false, status);
  }
  if (step === "read" && status === 403) {
    return new VaultError(`${at} denied reading ${where} (${said}): the AppRole's policy needs "read" on ${where}`, false, status);
  }
  if (step === "read" && status === 404) {
    return new VaultError(
      `${at} has no secret at ${where} (${said}): check ${names.kvMount} and ${names.secretPath} (a KV version 2 mount), or store the seed there with vault kv put`,
      false,
      status,
    );
  }
  return new VaultError(`${at} answered the ${step === "login" ? "AppRole login" : `read of ${where}`} with ${said}`, false, status);
}

const TIMEOUT_CODES = new Set(["ECONNABORTED", "ETIMEDOUT", "ESOCKETTIMEDOUT"]);
const TLS_CODE = /CERT|SSL|TLS|EPROTO|UNABLE_TO_|SELF_SIGNED|HOSTNAME/;

function classifyNetworkError(err: unknown, settings: VaultConfig, names: VaultSettingNames): VaultError {
  const code = typeof (err as { code?: unknown })?.code === "string" ? (err as { code: string }).code : "";
  const reason = opensslReason(errorMessage(err));
  // Keep the cause small: axios errors hold the request, headers (the token) and body (the secret-id) included.
  const cause = Object.assign(new Error(reason), { code });
  const at = `Vault at ${settings.address}`;
  if (TIMEOUT_CODES.has(code)) {
    return new VaultError(`${at} did not answer within ${formatDuration(settings.timeout)} (${names.timeout})`, true, undefined, { cause });
  }
  if (TLS_CODE.test(code)) return new VaultError(`TLS/CA problem talking to ${at} (${code}: ${reason}): ${tlsAdvice(reason, settings, names)}`, true, undefined, { cause });
  return new VaultError(`${at} is unreachable (${reason})`, true, undefined, { cause });
}

function tlsAdvice(reason: string, settings: VaultConfig, names: VaultSettingNames): string {
  if (/wrong version number/i.test(reason)) return `the server does not speak TLS there: check ${names.address} (http:// or https://)`;
  const ca = settings.caCertFile
    ? `check that ${names.caCertFile} (${settings.caCertFile}) holds the CA that signed Vault's certificate`
    : `set ${names.caCertFile} (or VAULT_CACERT) to the CA that signed Vault's certificate`;
  return `${ca}, and that ${names.address} matches the name in the certificate`;
}

/** "write EPROTO 80…:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:…" → "wrong version number". */
function opensslReason(message: string): string {
  const openssl = /error:[0-9A-F]+:[^:]+:[^:]+:([^:]+)/.exec(message);
  return (openssl?.[1] ?? message).replace(/\s+/g, " ").trim();
}
