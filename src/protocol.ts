/**
 * The wire protocol between requesters (CLI, scheduler, CI, MCP) and the
 * builder: subjects, name patterns and every message as a zod schema.
 * docs/protocol.md documents the same with examples; keep them in step.
 */
import { z } from "zod";

export const SUBJECT_PREFIX = "build";
export const RESPONSE_PREFIX = "build.responses.";
/** `build.<repo>.<target>` with target `all` builds every host of the repo. */
export const ALL_HOSTS = "all";
/** Second tokens that are not repos: they carry other traffic under `build.>`. */
export const RESERVED_TOKENS = ["responses", "discover", "status", "cancel"] as const;

// NixOS checks networking.hostName against this same shape (RFC 1123 label,
// plus "_"); anything else cannot be a host we are asked to build.
const HOST_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;
const REPO_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})$/;
// A git branch, tag or commit. Stricter than git-check-ref-format: no
// leading "-" (would read as a flag), no "..", "//", "@{", no trailing "/" or
// ".lock", nothing outside [A-Za-z0-9._/-].
const REF_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;
const REF_FORBIDDEN = [/\.\./, /\/\//, /\/\./, /\.lock$/, /[/.]$/];
const COMMIT_RE = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

export function isValidHostName(name: string): boolean {
  return HOST_RE.test(name);
}

export function isValidRepoName(name: string): boolean {
  return REPO_RE.test(name) && !(RESERVED_TOKENS as readonly string[]).includes(name);
}

export function isValidRef(ref: string): boolean {
  return REF_RE.test(ref) && !REF_FORBIDDEN.some((re) => re.test(ref));
}

/** A full commit id is pinned with `rev=`, anything else is a branch or tag (`ref=`). */
export function isCommitId(ref: string): boolean {
  return COMMIT_RE.test(ref);
}

export const RepoNameSchema = z.string().refine(isValidRepoName, {
  message: `expected a repo name of letters, digits, "-" and "_" (at most 63), not one of ${RESERVED_TOKENS.join(", ")}`,
});
export const HostNameSchema = z.string().refine(isValidHostName, {
  message: 'expected a host name of letters, digits, "-" and "_" (at most 63, starting and ending with a letter or digit)',
});
export const RefSchema = z.string().refine(isValidRef, {
  message: 'expected a branch, tag or full commit id ([A-Za-z0-9._/-], no "..", at most 200 characters)',
});

/** Body of a request on `build.<repo>.<target>`. An empty body means `{}`. */
export const BuildRequestSchema = z.strictObject({
  ref: RefSchema.optional(),
});
export type BuildRequest = z.infer<typeof BuildRequestSchema>;

export const HostStatusSchema = z.enum(["success", "failure", "timeout", "cancelled", "eval_error"]);
export type HostStatus = z.infer<typeof HostStatusSchema>;
export const JobStatusSchema = z.enum(["success", "failure", "cancelled"]);
export type JobStatus = z.infer<typeof JobStatusSchema>;

export const HostResultSchema = z.object({
  host: z.string(),
  status: HostStatusSchema,
  durationMs: z.number().int().nonnegative(),
  storePath: z.string().optional(),
  error: z.string().optional(),
  logTail: z.array(z.string()).optional(),
});
export type HostResult = z.infer<typeof HostResultSchema>;

const jobFields = {
  jobId: z.string(),
  repo: z.string(),
  target: z.string(),
  ref: z.string().nullable(),
};

export const AcceptedSchema = z.object({
  type: z.literal("accepted"),
  ...jobFields,
  /** Jobs that run before this one (0: it starts now). */
  position: z.number().int().nonnegative(),
  /** True when the request joined an identical job that was already queued. */
  joined: z.boolean(),
});

export const QueuedSchema = z.object({
  type: z.literal("queued"),
  jobId: z.string(),
  position: z.number().int().nonnegative(),
});

export const JobStartedSchema = z.object({
  type: z.literal("job_started"),
  ...jobFields,
  revision: z.string().nullable(),
  lockedUrl: z.string(),
  hosts: z.array(z.string()),
});

export const HostStartedSchema = z.object({
  type: z.literal("host_started"),
  jobId: z.string(),
  host: z.string(),
  /** 1-based position of the host in the job, out of `total`. */
  index: z.number().int().positive(),
  total: z.number().int().positive(),
  startedAt: z.string(),
});

export const HostFinishedSchema = z.object({
  type: z.literal("host_finished"),
  jobId: z.string(),
  index: z.number().int().positive(),
  total: z.number().int().positive(),
  ...HostResultSchema.shape,
});

export const CompletedSchema = z.object({
  type: z.literal("completed"),
  ...jobFields,
  status: JobStatusSchema,
  /** The locked git revision every host of the job was built from, when known. */
  revision: z.string().nullable(),
  durationMs: z.number().int().nonnegative(),
  results: z.array(HostResultSchema),
  /** Why the job as a whole failed or was cancelled, when no host result says it. */
  error: z.string().optional(),
});

export const RejectCodeSchema = z.enum([
  "unknown_repo",
  "unknown_host",
  "invalid_name",
  "malformed_payload",
  "queue_full",
  "unavailable",
  "shutting_down",
]);
export type RejectCode = z.infer<typeof RejectCodeSchema>;

export const RejectedSchema = z.object({
  type: z.literal("rejected"),
  code: RejectCodeSchema,
  error: z.string(),
  /** For unknown_repo / unknown_host: the names that would have worked. */
  known: z.array(z.string()).optional(),
});

export const BuildResponseSchema = z.discriminatedUnion("type", [
  AcceptedSchema,
  QueuedSchema,
  JobStartedSchema,
  HostStartedSchema,
  HostFinishedSchema,
  CompletedSchema,
  RejectedSchema,
]);

export type Accepted = z.infer<typeof AcceptedSchema>;
export type Queued = z.infer<typeof QueuedSchema>;
export type JobStarted = z.infer<typeof JobStartedSchema>;
export type HostStarted = z.infer<typeof HostStartedSchema>;
export type HostFinished = z.infer<typeof HostFinishedSchema>;
export type Completed = z.infer<typeof CompletedSchema>;
export type Rejected = z.infer<typeof RejectedSchema>;
export type BuildResponse = z.infer<typeof BuildResponseSchema>;
export type FinalResponse = Completed | Rejected;

export function isFinal(message: BuildResponse): message is FinalResponse {
  return message.type === "completed" || message.type === "rejected";
}

/** What a subject under `build.>` means to the builder. */
export type SubjectKind =
  | { kind: "build"; repo: string; target: string }
  | { kind: "response" }
  | { kind: "control"; name: Exclude<(typeof RESERVED_TOKENS)[number], "responses"> }
  | { kind: "invalid"; reason: string };

export function classifySubject(subject: string): SubjectKind {
  if (subject.startsWith(RESPONSE_PREFIX) || subject === "build.responses") return { kind: "response" };
  const tokens = subject.split(".");
  if (tokens[0] !== SUBJECT_PREFIX) return { kind: "invalid", reason: `subject ${subject} is not under build.` };
  if (tokens.length === 2) {
    const name = tokens[1];
    if (name === "discover" || name === "status" || name === "cancel") return { kind: "control", name };
    return { kind: "invalid", reason: `expected build.<repo>.<target>, got ${subject}` };
  }
  if (tokens.length !== 3) return { kind: "invalid", reason: `expected build.<repo>.<target>, got ${subject}` };
  return { kind: "build", repo: tokens[1] as string, target: tokens[2] as string };
}

/** Replies may only go where the builder is allowed to publish. */
export function isValidReplySubject(reply: string | undefined): reply is string {
  if (!reply || reply.length > 256) return false;
  if (!reply.startsWith(RESPONSE_PREFIX)) return false;
  const tokens = reply.split(".");
  return tokens.length >= 3 && tokens.every((t) => t.length > 0 && !/[\s*>]/.test(t));
}

export function buildSubject(repo: string, target: string): string {
  return `${SUBJECT_PREFIX}.${repo}.${target}`;
}
