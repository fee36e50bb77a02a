/**
 * The builder's config file: YAML (JSON is YAML too, which is what the NixOS
 * module renders). Every key is documented in config.example.yaml; the key
 * names are a contract with operators' configs, so renames need a migration.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { availableParallelism } from "node:os";
import { parseDuration } from "./util/duration.js";
import { parseSize } from "./util/size.js";
import { ConfigError, errorMessage } from "./errors.js";
import { RepoNameSchema } from "./protocol.js";

export const DurationSchema = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0) {
    ctx.addIssue({ code: "custom", message: `expected a duration like 30s, 10m or 1h, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

const SizeSchema = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined || bytes <= 0) {
    ctx.addIssue({ code: "custom", message: `expected a size like 512MiB or 2GiB, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return bytes;
});

/**
 * Half the CPUs, 1 to 4: each worker may hold one heavy NixOS host's
 * evaluation (1–4.5 GB) and keeps a core busy, while builds (one at a time,
 * but nix runs a derivation's build on many cores) need the rest; on a
 * build host with 8 cores and 16 GB that is 4 workers × (2 GiB + one host).
 */
export function defaultEvalWorkers(cpus = availableParallelism()): number {
  return Math.min(4, Math.max(1, Math.floor(cpus / 2)));
}

export const NatsUrlSchema = z
  .string()
  .regex(/^(nats|tls|ws|wss):\/\/[^\s/]+\/?$|^[A-Za-z0-9.-]+:\d+$/, {
    message: "expected a NATS server URL like nats://host:4222",
  });

// The flake reference types a builder can fetch; indirect ids ("nixpkgs")
// are refused because they depend on the machine's registry.
const FLAKE_URL_RE =
  /^(?:(?:git\+(?:https?|ssh|file)|hg\+(?:https?|ssh|file)|tarball\+https?|file\+https?|https?|file|path|github|gitlab|sourcehut):[^\s]+|\/[^\s]*)$/;

export const FlakeUrlSchema = z.string().refine((url) => FLAKE_URL_RE.test(url) && !url.includes("#"), {
  message: "expected a flake URL such as git+https://example.org/repo.git or github:owner/repo (no #fragment)",
});

// Nix store URLs build.copyTo may name: a local binary cache (file://),
// another machine's store (ssh://, ssh-ng://), an S3 or HTTP binary cache,
// or a local store (local, daemon, /path), each with optional ?settings. No
// whitespace, no "#", no leading "-" (nix would read a flag).
const STORE_URL_RE = /^(?:(?:file|ssh|ssh-ng|s3|https?):\/\/[^\s#]+|(?:local|daemon)(?:\?[^\s#]*)?|\/[^\s#]*)$/;

export function isValidStoreUrl(url: string): boolean {
  return STORE_URL_RE.test(url);
}

const SubjectTokenSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, {
  message: 'expected letters, digits, "-" or "_"',
});

// Path segments of a Vault mount or secret: no leading/trailing slash, no
// empty, "." or ".." segments, nothing that needs URL escaping.
export const VaultPathSchema = z.string().regex(/^(?!.*(?:^|\/)\.{1,2}(?:\/|$))[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/, {
  message: 'expected a Vault path like "secret" or "shared/homelab-deploy/builder-nkey" (no leading or trailing "/")',
});

const VaultAddressSchema = z
  .string({ error: (issue) => (issue.input === undefined ? "required: the Vault server URL (or set VAULT_ADDR)" : undefined) })
  .regex(/^https?:\/\/[^\s/?#]+\/?$/, {
  message: "expected a Vault address like https://vault.example.org:8200",
});

const VaultRetrySchema = z
  .strictObject({
    initialDelay: DurationSchema.default(1_000),
    maxDelay: DurationSchema.default(60_000),
  })
  .refine((retry) => retry.maxDelay >= retry.initialDelay, { path: ["maxDelay"], message: "must not be shorter than initialDelay" });

/**
 * Where to get the NKey seed from Vault: AppRole login, then a KV version 2
 * read of `<kvMount>/data/<secretPath>`, field `secretField`.
 */
export const VaultSchema = z.strictObject({
  address: VaultAddressSchema,
  caCertFile: z.string().min(1).optional(),
  roleIdFile: z.string().min(1),
  secretIdFile: z.string().min(1),
  kvMount: VaultPathSchema.default("secret"),
  secretPath: VaultPathSchema.default("shared/homelab-deploy/builder-nkey"),
  secretField: z.string().min(1).default("nkey"),
  timeout: DurationSchema.default(10_000),
  retry: VaultRetrySchema.default(VaultRetrySchema.parse({})),
});

export const NatsSchema = z.strictObject({
  // No default: a builder started against a NATS that is not there would
  // wait for it forever, saying only "not reachable yet".
  url: z.union([NatsUrlSchema, z.array(NatsUrlSchema).min(1)], {
    error: (issue) => (issue.input === undefined ? "required: the NATS server URL, like nats://nats.example.org:4222 (or a list of them)" : undefined),
  }),
  nkeySeedFile: z.string().min(1).optional(),
  queueGroup: SubjectTokenSchema.optional(),
  name: z.string().min(1).max(128).optional(),
});

const RepoSchema = z.strictObject({ url: FlakeUrlSchema });

/** The client's default --idle-timeout (src/commands/connection.ts; the deployer's too): silence that long and it gives up. */
export const CLIENT_IDLE_TIMEOUT_MS = 120_000;

/**
 * How often a daemon (builder, listener) tells its requesters it is still
 * at work. At most half the client's idle timeout, so one late heartbeat
 * does not make a quiet build or deploy look like a dead daemon.
 */
export const HeartbeatIntervalSchema = DurationSchema.default(30_000).refine((ms) => ms <= CLIENT_IDLE_TIMEOUT_MS / 2, {
  message: `must be at most 1m: clients give up after ${CLIENT_IDLE_TIMEOUT_MS / 60_000}m without a message (their default --idle-timeout), so a longer interval makes every quiet build or deploy look dead`,
});

const BuildSchema = z.strictObject({
  timeout: DurationSchema.default(3_600_000),
  /** Fetching a repo (nix flake metadata --refresh): a hung git server costs at most this. */
  fetchTimeout: DurationSchema.default(120_000),
  /** Listing a repo's hosts (`build --list`, and an `all` job's host list); each host's evaluation, like its build, is bounded by `timeout`. */
  resolveTimeout: DurationSchema.default(600_000),
  maxQueue: z.number().int().min(1).max(10_000).default(32),
  logTailLines: z.number().int().min(1).max(1_000).default(50),
  keepGoing: z.boolean().default(true),
  killGrace: DurationSchema.default(3_000),
  heartbeatInterval: HeartbeatIntervalSchema,
  nixBin: z.string().min(1).default("nix"),
  /** `all`: nix eval worker processes evaluating hosts side by side (see defaultEvalWorkers). */
  evalWorkers: z.number().int().min(1).max(64).default(defaultEvalWorkers),
  /** `all`: the most one evaluation worker may hold, enforced while a host evaluates (bytes; src/nix/eval-pool.ts). */
  evalMaxMemory: SizeSchema.default(2 * 1024 ** 3),
  /** `all`: a worker evaluates at most this many hosts, then a fresh one goes on (1: one process per host); unset, no limit. */
  evalHostsPerWorker: z.number().int().min(1).max(10_000).optional(),
  /** Distinct successful default-branch toplevels per host kept as GC roots. */
  keepGenerations: z.number().int().min(1).max(100).default(2),
  /** How long a ref build (and a host gone from the flake) stays a GC root after it was built. */
  keepRefBuilds: DurationSchema.default(7 * 86_400_000),
  /** Results kept per repo and host in `<stateDir>/history.json`. */
  historySize: z.number().int().min(1).max(1_000).default(50),
  /** A Nix store URL every built host's closure is copied to (`nix copy --to`); see src/nix/copy.ts. */
  copyTo: z
    .string()
    .refine(isValidStoreUrl, { message: "expected a Nix store URL such as file:///var/cache/nix, ssh-ng://cache01 or s3://bucket" })
    .optional(),
  copyTimeout: DurationSchema.default(1_800_000),
  /** On SIGTERM/SIGINT/SIGHUP, save the queue and resume it at the next start instead of cancelling it. */
  resume: z.boolean().default(true),
});

// host:port for the metrics HTTP server: an IPv4 address or host name, or
// an IPv6 address in brackets ("[::]:9973"); port 0 picks a free one (tests).
const LISTEN_RE = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/;

export interface ListenAddress {
  host: string;
  port: number;
}

export const ListenSchema = z.string().transform((value, ctx): ListenAddress => {
  const match = LISTEN_RE.exec(value);
  const port = Number(match?.[3]);
  if (!match || port > 65_535) {
    ctx.addIssue({ code: "custom", message: `expected host:port like 0.0.0.0:9973 or [::]:9973, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return { host: (match[1] ?? match[2]) as string, port };
});

// Loopback unless told otherwise: the NixOS module sets 0.0.0.0:9973 (and
// can open the firewall); a builder started by hand exposes nothing.
const MetricsSchema = z.strictObject({
  listen: ListenSchema.prefault("127.0.0.1:9973"),
});

const StateDirSchema = z
  .string({
    error: (issue) =>
      issue.input === undefined
        ? "required: the directory for the builder's state files (metrics.json, toplevels.json); the NixOS module sets /var/lib/homelab-deploy, and systemd's STATE_DIRECTORY is used when set"
        : undefined,
  })
  .refine(isAbsolute, { message: "expected an absolute directory path" });

export const LogSchema = z.strictObject({
  level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
});

export const ConfigSchema = z
  .strictObject({
    nats: NatsSchema,
    vault: VaultSchema.optional(),
    repos: z.record(RepoNameSchema, RepoSchema).refine((repos) => Object.keys(repos).length > 0, {
      message: "expected at least one repo",
    }),
    build: BuildSchema.default(BuildSchema.parse({})),
    log: LogSchema.default(LogSchema.parse({})),
    metrics: MetricsSchema.prefault({}),
    stateDir: StateDirSchema,
  })
  .superRefine(checkOneSeedSource);

/** Exactly one NKey source: nats.nkeySeedFile or a vault block (the builder's and the listener's configs). */
export function checkOneSeedSource(config: { nats: { nkeySeedFile?: string | undefined }; vault?: unknown }, ctx: z.RefinementCtx): void {
  const fromFile = config.nats.nkeySeedFile !== undefined;
  const fromVault = config.vault !== undefined;
  if (fromFile && fromVault) {
    ctx.addIssue({
      code: "custom",
      path: ["vault"],
      message: "give exactly one NKey source: nats.nkeySeedFile or vault, not both",
    });
  } else if (!fromFile && !fromVault) {
    ctx.addIssue({
      code: "custom",
      path: ["nats", "nkeySeedFile"],
      message: "required unless a vault block is given: exactly one NKey source (nats.nkeySeedFile, or vault) must be configured",
    });
  }
}

export type Config = z.infer<typeof ConfigSchema>;
export type RepoConfig = z.infer<typeof RepoSchema>;
export type BuildConfig = z.infer<typeof BuildSchema>;
export type VaultConfig = z.infer<typeof VaultSchema>;
export type MetricsConfig = z.infer<typeof MetricsSchema>;

/**
 * The repo of that name, if the config has one. Own keys only: a request
 * for repo "constructor" or "toString" must not find Object.prototype's.
 */
export function repoNamed(repos: Record<string, RepoConfig>, name: string): RepoConfig | undefined {
  return Object.hasOwn(repos, name) ? repos[name] : undefined;
}

export function natsServers(config: Pick<Config, "nats">): string[] {
  const { url } = config.nats;
  return Array.isArray(url) ? url : [url];
}

/** "repos.nixos-servers.url: expected a flake URL …" — one line per problem. */
export function formatIssues(error: z.ZodError): string[] {
  return error.issues.flatMap((issue) => {
    const path = issue.path.map(String).join(".");
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((key) => `${path ? `${path}.` : ""}${key}: unknown key`);
    }
    return [`${path || "(top level)"}: ${issueMessage(issue)}`];
  });
}

/** One issue's message, in the words formatIssues uses ("required (expected string)", …). */
export function issueMessage(issue: z.core.$ZodIssue): string {
  if (issue.code === "invalid_key") {
    const inner = issue.issues.map((i) => i.message).join("; ");
    return `invalid name: ${inner}`;
  }
  const missing = /^Invalid input: expected (\w+), received undefined$/.exec(issue.message);
  if (missing) return `required (expected ${missing[1]})`;
  return issue.message;
}

/**
 * Like the vault CLI, VAULT_ADDR and VAULT_CACERT stand in for an address
 * and CA file the config leaves out; the config wins when it has them.
 */
export function withVaultEnv(raw: unknown, env: NodeJS.ProcessEnv): unknown {
  if (!isPlainObject(raw) || !isPlainObject(raw["vault"])) return raw;
  return { ...raw, vault: vaultEnvDefaults(raw["vault"], env) };
}

/** A vault block (config or flags) with VAULT_ADDR / VAULT_CACERT where it has no address / CA file. */
export function vaultEnvDefaults(vault: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const filled = { ...vault };
  if (filled["address"] === undefined && env["VAULT_ADDR"]) filled["address"] = env["VAULT_ADDR"];
  if (filled["caCertFile"] === undefined && env["VAULT_CACERT"]) filled["caCertFile"] = env["VAULT_CACERT"];
  return filled;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** systemd's StateDirectory= (STATE_DIRECTORY, first entry) stands in for a missing stateDir. */
export function withStateDirEnv(raw: unknown, env: NodeJS.ProcessEnv): unknown {
  const fromSystemd = env["STATE_DIRECTORY"]?.split(":")[0];
  if (!isPlainObject(raw) || raw["stateDir"] !== undefined || !fromSystemd) return raw;
  return { ...raw, stateDir: fromSystemd };
}

export function parseConfig(raw: unknown, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  return parseConfigWith(ConfigSchema, raw, file, env);
}

/** Any daemon's config (builder, listener): the environment's defaults filled in, then the schema, errors with key paths. */
export function parseConfigWith<S extends z.ZodType>(schema: S, raw: unknown, file: string, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const result = schema.safeParse(withStateDirEnv(withVaultEnv(raw ?? {}, env), env));
  if (!result.success) throw new ConfigError(file, formatIssues(result.error));
  return result.data;
}

export async function loadConfig(file: string): Promise<Config> {
  return parseConfig(await readConfigFile(file), file);
}

/** A config file's YAML/JSON, not yet checked. */
export async function readConfigFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read file: ${errorMessage(err)}`], { cause: err });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new ConfigError(file, [`not valid YAML/JSON: ${errorMessage(err)}`], { cause: err });
  }
  return raw;
}
