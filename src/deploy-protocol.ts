/**
 * The deploy half of the wire protocol: between deployers (CLI, MCP) and the
 * listener on every host. Subjects, the tier pattern and every deploy
 * message as a zod schema; host, role, repo and ref names follow the
 * builder's patterns (protocol.ts). docs/protocol.md ("Deploying") documents
 * the same with examples; keep them in step.
 */
import { z } from "zod";
import { BuildProgressSchema, ChangesSchema, HostNameSchema, RefSchema, isValidHostName, isValidReplySubjectUnder, type Numbering } from "./protocol.js";
import { StorePathSchema } from "./store-path.js";

export const DEPLOY_PREFIX = "deploy";
export const DEPLOY_RESPONSE_PREFIX = "deploy.responses.";
export const DEPLOY_DISCOVER_SUBJECT = "deploy.discover";
/** `deploy.<tier>.all` addresses every listener of the tier. */
export const ALL_TARGET = "all";
/** `deploy.<tier>.role.<role>` addresses the tier's listeners with that role. */
export const ROLE_TOKEN = "role";
/** Second tokens that are not tiers: they carry other traffic under `deploy.>`. */
export const RESERVED_TIERS = ["responses", "discover"] as const;

const TIER_RE = /^[a-z][a-z0-9-]{0,62}$/;

export function isValidTier(tier: string): boolean {
  return TIER_RE.test(tier) && !(RESERVED_TIERS as readonly string[]).includes(tier);
}

/** A host named `all` could never be addressed alone (`deploy.<tier>.all` is every host). */
export function isValidDeployHost(host: string): boolean {
  return isValidHostName(host) && host !== ALL_TARGET;
}

export const TierSchema = z.string().refine(isValidTier, {
  message: `expected a tier of lower-case letters, digits and "-", starting with a letter (at most 63), not one of ${RESERVED_TIERS.join(", ")}`,
});
export const DeployHostSchema = z.string().refine(isValidDeployHost, {
  message: 'expected a host name of letters, digits, "-" and "_" (at most 63, starting and ending with a letter or digit), not "all"',
});
/** Roles are named like hosts. */
export const RoleSchema = HostNameSchema;

export type DeployTarget = { kind: "host"; host: string } | { kind: "all" } | { kind: "role"; role: string };

export function deploySubject(tier: string, target: DeployTarget): string {
  switch (target.kind) {
    case "host":
      return `${DEPLOY_PREFIX}.${tier}.${target.host}`;
    case "all":
      return `${DEPLOY_PREFIX}.${tier}.${ALL_TARGET}`;
    case "role":
      return `${DEPLOY_PREFIX}.${tier}.${ROLE_TOKEN}.${target.role}`;
  }
}

/** Replies may only go where listeners are allowed to publish. */
export function isValidDeployReplySubject(reply: string | undefined): reply is string {
  return isValidReplySubjectUnder(DEPLOY_RESPONSE_PREFIX, reply);
}

// --- Requests -------------------------------------------------------------

export const DeployActionSchema = z.enum(["switch", "boot", "test", "dry-activate"]);
export type DeployAction = z.infer<typeof DeployActionSchema>;

/**
 * Body of a request on `deploy.<tier>.…`. An empty body means
 * `{"action":"switch"}`. With `toplevel` the listener realises that store
 * path from its substituters (nix checks the signature) and evaluates
 * nothing; without it, it builds its repo's flake (at `ref`) itself.
 */
export const DeployRequestSchema = z.strictObject({
  action: DeployActionSchema.default("switch"),
  ref: RefSchema.optional(),
  toplevel: StorePathSchema.optional(),
});
export type DeployRequest = z.infer<typeof DeployRequestSchema>;

/** `deploy.discover` takes an empty body (or `{}`). */
export const DeployDiscoverRequestSchema = z.strictObject({});

/** Deploy ids are "d" and 10 hex digits. */
const DEPLOY_ID_RE = /^d[0-9a-f]{10}$/;

export function isValidDeployId(id: string): boolean {
  return DEPLOY_ID_RE.test(id);
}

/** `nixos-system-<host>-<version>`: the name NixOS gives a host's toplevel. */
export function isSystemOfHost(toplevel: string, host: string): boolean {
  const base = toplevel.slice(toplevel.lastIndexOf("/") + 1).slice(33);
  return base.startsWith(`nixos-system-${host}-`);
}

// --- Answers --------------------------------------------------------------

/**
 * Per-deploy message number, 1, 2, 3…, as for builds: a deployer drops a
 * message whose seq it has seen (resends after a NATS outage or a listener
 * restart) and puts the rest in order.
 */
const numbered = {
  seq: z.number().int().positive(),
  deployId: z.string(),
  host: z.string(),
};

export const DeployAcceptedSchema = z.object({
  type: z.literal("accepted"),
  ...numbered,
  tier: z.string(),
  action: DeployActionSchema,
  ref: z.string().nullable(),
  toplevel: z.string().nullable(),
});

export const DeployRejectCodeSchema = z.enum([
  /** Another deploy runs on this host; `runningDeployId` names it. */
  "busy",
  /** The body is not JSON, too large, or does not match the request schema. */
  "invalid_request",
  /** `toplevel` is not a NixOS system of this host. */
  "wrong_host",
  /** The listener is stopping. */
  "shutting_down",
  /** The listener cannot take the deploy (e.g. its state directory cannot be written). */
  "unavailable",
]);
export type DeployRejectCode = z.infer<typeof DeployRejectCodeSchema>;

export const DeployRejectedSchema = z.object({
  type: z.literal("rejected"),
  host: z.string(),
  code: DeployRejectCodeSchema,
  error: z.string(),
  runningDeployId: z.string().optional(),
});

export const DeployStartedSchema = z.object({
  type: z.literal("started"),
  ...numbered,
  action: DeployActionSchema,
  /** The system to activate: the requested one, or (evaluated on the host) null until it is built. */
  toplevel: z.string().nullable(),
  /** True when the request named a toplevel the builder built: nothing is evaluated on the host. */
  prebuilt: z.boolean(),
});

/** Nix's progress while the listener fetches (prebuilt) or builds (evaluated on the host) the system. A snapshot: repeats the last seq. */
export const DeployProgressSchema = z.object({
  type: z.literal("progress"),
  ...numbered,
  phase: z.enum(["fetching", "building"]),
  elapsedMs: z.number().int().nonnegative(),
  ...BuildProgressSchema.shape,
});

export const DeployActivatingSchema = z.object({
  type: z.literal("activating"),
  ...numbered,
  action: DeployActionSchema,
  toplevel: z.string(),
  /** What ran before (the current system). */
  previous: z.string().nullable(),
  /** switch/boot: the profile generation the toplevel became. */
  generation: z.number().int().nullable(),
});

export const HealthCheckResultSchema = z.object({
  argv: z.array(z.string()),
  ok: z.boolean(),
  exitCode: z.number().int().nullable(),
  durationMs: z.number().int().nonnegative(),
  /** Why it failed: the last lines of its output, or "timed out". */
  error: z.string().optional(),
});
export type HealthCheckResult = z.infer<typeof HealthCheckResultSchema>;

/** After switch/test: the health commands' results and whether NATS was reached again in time. */
export const DeployHealthSchema = z.object({
  type: z.literal("health"),
  ...numbered,
  ok: z.boolean(),
  checks: z.array(HealthCheckResultSchema),
  /** True when a NATS flush succeeded within health.confirmTimeout after the switch. */
  natsConfirmed: z.boolean(),
});

/** The listener was restarted during the deploy (e.g. by its own switch) and takes it up again. */
export const DeployResumedSchema = z.object({
  type: z.literal("resumed"),
  ...numbered,
  /** True when the system the deploy activates is running: the health checks follow; otherwise it rolls back. */
  activated: z.boolean(),
});

/**
 * A deploy's step: preparing (fetching or building, nothing changed yet),
 * activating (the profile may be set, switch-to-configuration may have
 * run), checking (the switch succeeded, the health checks run).
 */
export const DeployPhaseSchema = z.enum(["preparing", "activating", "checking"]);
export type DeployPhase = z.infer<typeof DeployPhaseSchema>;

/**
 * Sent every heartbeat interval while the deploy runs, so a deployer's idle
 * timeout tells a silent listener from a long fetch, switch or health
 * check. A snapshot: repeats the last seq.
 */
export const DeployHeartbeatSchema = z.object({
  type: z.literal("heartbeat"),
  ...numbered,
  phase: DeployPhaseSchema,
});

export const DeployStatusSchema = z.enum(["success", "failure", "rolled_back"]);
export type DeployStatus = z.infer<typeof DeployStatusSchema>;

export const DeployErrorCodeSchema = z.enum([
  /** The toplevel could not be fetched from the substituters (missing, unsigned, unreachable). */
  "realise_failed",
  /** Evaluating or building the host's configuration on the host failed. */
  "build_failed",
  /** The path has no bin/switch-to-configuration or is not named for this host. */
  "not_a_system",
  /** nix-env could not set the system profile. */
  "profile_failed",
  /** switch-to-configuration failed. */
  "switch_failed",
  /** A health command failed or timed out. */
  "health_failed",
  /** NATS was not reached again within health.confirmTimeout after the switch. */
  "nats_unconfirmed",
  /** The listener died during the switch and the system it meant to activate is not running. */
  "interrupted",
  /** Rolling back failed too: the host runs whatever it was left with (see cause). */
  "rollback_failed",
]);
export type DeployErrorCode = z.infer<typeof DeployErrorCodeSchema>;

export const DeployErrorSchema = z.object({
  code: DeployErrorCodeSchema,
  message: z.string(),
  /** What went wrong underneath: nix's or the command's last lines, or the rollback's own failure. */
  cause: z.string().optional(),
});
export type DeployError = z.infer<typeof DeployErrorSchema>;

export const DeployCompletedSchema = z.object({
  type: z.literal("completed"),
  ...numbered,
  action: DeployActionSchema,
  status: DeployStatusSchema,
  /** The system the deploy meant to activate (null when it was never built or fetched). */
  toplevel: z.string().nullable(),
  /** The system running before the deploy. */
  previous: z.string().nullable(),
  /** switch/boot: the profile generation now current (after a rollback: the one rolled back to). */
  generation: z.number().int().nullable(),
  /** The new system's kernel, initrd or kernel modules differ from the booted system's. */
  rebootRequired: z.boolean(),
  /** The closure's changes from the previous system, as the builder reports them (null: nothing to compare). */
  changes: ChangesSchema.nullable(),
  durationMs: z.number().int().nonnegative(),
  error: DeployErrorSchema.optional(),
});

export const DeployResponseSchema = z.discriminatedUnion("type", [
  DeployAcceptedSchema,
  DeployRejectedSchema,
  DeployStartedSchema,
  DeployProgressSchema,
  DeployActivatingSchema,
  DeployHealthSchema,
  DeployResumedSchema,
  DeployHeartbeatSchema,
  DeployCompletedSchema,
]);

export type DeployAccepted = z.infer<typeof DeployAcceptedSchema>;
export type DeployRejected = z.infer<typeof DeployRejectedSchema>;
export type DeployStarted = z.infer<typeof DeployStartedSchema>;
export type DeployProgress = z.infer<typeof DeployProgressSchema>;
export type DeployActivating = z.infer<typeof DeployActivatingSchema>;
export type DeployHealth = z.infer<typeof DeployHealthSchema>;
export type DeployResumed = z.infer<typeof DeployResumedSchema>;
export type DeployHeartbeat = z.infer<typeof DeployHeartbeatSchema>;
export type DeployCompleted = z.infer<typeof DeployCompletedSchema>;
export type DeployResponse = z.infer<typeof DeployResponseSchema>;
export type DeployFinal = DeployCompleted | DeployRejected;

/**
 * How a deploy's messages are numbered (see protocol.ts's Numbering), like
 * a build's: progress and heartbeat are snapshots, `rejected` answers a request that never became a
 * deploy. `resumed` (a restarted listener) begins a new run of numbers, as
 * the builder's does.
 */
export const DEPLOY_NUMBERING: Numbering = {
  snapshots: new Set<DeployResponse["type"]>(["progress", "heartbeat"]),
  unnumbered: new Set<DeployResponse["type"]>(["rejected"]),
};

export function isFinalDeployResponse(message: DeployResponse): message is DeployFinal {
  return message.type === "completed" || message.type === "rejected";
}

/** `deploy.discover`'s answer: one per listener. */
export const DeployDiscoverResponseSchema = z.object({
  type: z.literal("discover"),
  host: z.string(),
  tier: z.string(),
  roles: z.array(z.string()),
  repo: z.object({ name: z.string(), url: z.string() }),
  /** The running system (`/run/current-system`'s target), null when unreadable. */
  current: z.string().nullable(),
  /** The system booted (`/run/booted-system`'s target). */
  booted: z.string().nullable(),
  rebootRequired: z.boolean(),
  /** The running deploy's id, or null when idle. */
  busy: z.string().nullable(),
  version: z.string(),
});
export type DeployDiscoverResponse = z.infer<typeof DeployDiscoverResponseSchema>;

/** What a subject under `deploy.>` means to a listener of `tier`. */
export type DeploySubjectKind =
  | { kind: "deploy"; tier: string; target: DeployTarget }
  | { kind: "discover" }
  | { kind: "response" }
  | { kind: "invalid"; reason: string };

export function classifyDeploySubject(subject: string): DeploySubjectKind {
  if (subject.startsWith(DEPLOY_RESPONSE_PREFIX)) return { kind: "response" };
  if (subject === DEPLOY_DISCOVER_SUBJECT) return { kind: "discover" };
  const tokens = subject.split(".");
  const expected = `expected deploy.<tier>.<host|all|role.NAME>, got ${subject}`;
  if (tokens[0] !== DEPLOY_PREFIX || !isValidTier(tokens[1] ?? "")) return { kind: "invalid", reason: expected };
  const tier = tokens[1]!;
  if (tokens.length === 3 && tokens[2] === ALL_TARGET) return { kind: "deploy", tier, target: { kind: "all" } };
  if (tokens.length === 3 && isValidDeployHost(tokens[2]!)) return { kind: "deploy", tier, target: { kind: "host", host: tokens[2]! } };
  if (tokens.length === 4 && tokens[2] === ROLE_TOKEN && isValidHostName(tokens[3]!)) {
    return { kind: "deploy", tier, target: { kind: "role", role: tokens[3]! } };
  }
  return { kind: "invalid", reason: expected };
}
