/**
 * The deploy listener's config file (`homelab-deploy listener --config
 * FILE`): YAML or JSON, checked like the builder's (src/config.ts, whose
 * pieces it reuses: durations, NATS, Vault, listen addresses, the one-seed-
 * source rule, the environment's defaults). Every key is documented in
 * examples/listener.example.yaml; the NixOS module renders it as JSON.
 */
import { hostname } from "node:os";
import { isAbsolute } from "node:path";
import { z } from "zod";
import {
  DurationSchema,
  FlakeUrlSchema,
  HeartbeatIntervalSchema,
  ListenSchema,
  LogSchema,
  NatsSchema,
  VaultPathSchema,
  VaultSchema,
  checkOneSeedSource,
  parseConfigWith,
  readConfigFile,
} from "./config.js";
import { DeployHostSchema, RoleSchema, TierSchema } from "./deploy-protocol.js";
import { RepoNameSchema } from "./protocol.js";

const AbsolutePathSchema = z.string().refine(isAbsolute, { message: "expected an absolute path" });

/** The machine's host name without its domain: what NixOS sets from networking.hostName. */
export function defaultHost(): string {
  return hostname().split(".")[0] ?? hostname();
}

/**
 * systemd sets "degraded" when a unit failed, and `is-system-running`
 * exits non-zero for anything but "running"; `--wait` first waits out
 * "starting" (a switch that restarts units briefly looks like a boot).
 */
export const DEFAULT_HEALTH_COMMAND = ["systemctl", "is-system-running", "--wait"];

const HealthSchema = z.strictObject({
  /** Each an argv list run without a shell; all must exit 0. */
  commands: z.array(z.array(z.string().min(1)).min(1)).default([DEFAULT_HEALTH_COMMAND]),
  /** All health commands together, from the end of the switch. */
  timeout: DurationSchema.default(120_000),
  /** Reaching NATS again (a flush), from the end of the switch. */
  confirmTimeout: DurationSchema.default(90_000),
});

const SystemSchema = z.strictObject({
  profile: AbsolutePathSchema.default("/nix/var/nix/profiles/system"),
  current: AbsolutePathSchema.default("/run/current-system"),
  booted: AbsolutePathSchema.default("/run/booted-system"),
});

const TimeoutsSchema = z.strictObject({
  /** Fetching a prebuilt toplevel's closure from the substituters. */
  fetch: DurationSchema.default(1_800_000),
  /** Evaluating and building the host's configuration on the host (no toplevel given). */
  build: DurationSchema.default(3_600_000),
  /** One run of switch-to-configuration (or nix-env). */
  switch: DurationSchema.default(600_000),
});

export const ListenerConfigSchema = z
  .strictObject({
    host: DeployHostSchema.default(defaultHost),
    tier: TierSchema,
    roles: z.array(RoleSchema).default([]),
    /** The builder's repo name for this host's configuration, and its flake URL (for deploys evaluated on the host). */
    repo: z.strictObject({ name: RepoNameSchema, url: FlakeUrlSchema }),
    nats: NatsSchema.omit({ queueGroup: true }),
    // The builder's seed path is no default for a listener: say where its own is.
    vault: VaultSchema.extend({ secretPath: VaultPathSchema }).optional(),
    stateDir: AbsolutePathSchema,
    metrics: z.strictObject({ listen: ListenSchema.prefault("127.0.0.1:9972") }).prefault({}),
    health: HealthSchema.prefault({}),
    /** Re-activate the previous system when the switch, a health command or the NATS check fails. */
    rollback: z.boolean().default(true),
    system: SystemSchema.prefault({}),
    /**
     * The listener's own unit file (the NixOS module passes
     * /etc/systemd/system/homelab-deploy-listener.service). When a deploy
     * changes where it points, the listener exits after its final answer so
     * systemd starts the new version. Unset: never.
     */
    selfUnit: AbsolutePathSchema.optional(),
    nixBin: z.string().min(1).default("nix"),
    timeouts: TimeoutsSchema.prefault({}),
    killGrace: DurationSchema.default(3_000),
    /** While a deploy runs, a `heartbeat` to its requesters this often (deployers give up after 2m of silence). */
    heartbeatInterval: HeartbeatIntervalSchema,
    log: LogSchema.prefault({}),
  })
  .superRefine(checkOneSeedSource);

export type ListenerConfig = z.infer<typeof ListenerConfigSchema>;

export function parseListenerConfig(raw: unknown, file: string, env: NodeJS.ProcessEnv = process.env): ListenerConfig {
  return parseConfigWith(ListenerConfigSchema, raw, file, env);
}

export async function loadListenerConfig(file: string): Promise<ListenerConfig> {
  return parseListenerConfig(await readConfigFile(file), file);
}
