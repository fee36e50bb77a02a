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
/** `build.<name>` requests that are not builds. */
export const CONTROL_NAMES = ["discover", "status", "cancel", "history"] as const;
export type ControlName = (typeof CONTROL_NAMES)[number];
/** Second tokens that are not repos: they carry other traffic under `build.>`. */
export const RESERVED_TOKENS = ["responses", ...CONTROL_NAMES] as const;

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

/** Where nix says an evaluation error is, relative to the flake's root when it can tell. */
export const SourceLocationSchema = z.object({
  file: z.string(),
  line: z.number().int().optional(),
  column: z.number().int().optional(),
});
export type SourceLocation = z.infer<typeof SourceLocationSchema>;

/** One package of a closure whose versions or size changed (`nix store diff-closures`). */
export const PackageChangeSchema = z.object({
  name: z.string(),
  /** Versions only in the old closure ([] when the package is new; "" is an unversioned path). */
  before: z.array(z.string()),
  /** Versions only in the new closure ([] when the package is gone). */
  after: z.array(z.string()),
  /** 0 when nix showed no size change (it hides changes under 8 KiB). */
  sizeDeltaBytes: z.number().int(),
});
export type PackageChange = z.infer<typeof PackageChangeSchema>;

/** At most this many packages per host go into a message; `omittedPackages` counts the rest. */
export const MAX_CHANGED_PACKAGES = 50;

/** What changed in a host's closure against its last good default-branch build. */
export const ChangesSchema = z.object({
  /** The toplevel compared with. */
  against: z.string(),
  againstRevision: z.string().nullable(),
  packages: z.array(PackageChangeSchema),
  /** Packages left out of `packages` to keep the message small. */
  omittedPackages: z.number().int().nonnegative().optional(),
  /** Change of the whole closure's size. */
  sizeDeltaBytes: z.number().int(),
});
export type Changes = z.infer<typeof ChangesSchema>;

/**
 * `changes` listing at most `keep` packages, the rest counted in
 * `omittedPackages`: what every smaller copy (a message cut to
 * max_payload, a history entry, the first report) keeps of the list.
 */
export function keepPackages(changes: Changes, keep: number): Changes {
  if (changes.packages.length <= keep) return changes;
  const omittedPackages = (changes.omittedPackages ?? 0) + changes.packages.length - keep;
  return { ...changes, packages: changes.packages.slice(0, keep), omittedPackages };
}

/** Milliseconds a build is expected to take, from earlier builds; null without history. */
const ExpectedMsSchema = z.number().int().nonnegative().nullable().optional();
/** With build.copyTo: how copying the built closure to that store went. A failed copy does not fail the host. */
export const HostCopySchema = z.object({
  ok: z.boolean(),
  durationMs: z.number().int().nonnegative(),
  error: z.string().optional(),
});
export type HostCopy = z.infer<typeof HostCopySchema>;

export const HostResultSchema = z.object({
  host: z.string(),
  status: HostStatusSchema,
  durationMs: z.number().int().nonnegative(),
  storePath: z.string().optional(),
  error: z.string().optional(),
  /** For eval_error: the file and line nix blamed. */
  location: SourceLocationSchema.optional(),
  logTail: z.array(z.string()).optional(),
  /** On success: null when there is nothing to compare with (first build, or the comparison failed). */
  changes: ChangesSchema.nullable().optional(),
  /** On success: false when the builder could not register the toplevel as a GC root (see its log). */
  gcRoot: z.boolean().optional(),
  copy: HostCopySchema.optional(),
});
export type HostResult = z.infer<typeof HostResultSchema>;

/**
 * Per-job message number, 1, 2, 3…: a requester drops a message whose seq
 * it has seen (the builder resends after a NATS outage) and notices a gap.
 * Optional so that messages of a builder without it still parse.
 */
const seqField = { seq: z.number().int().positive().optional() };

/**
 * How a conversation's messages are numbered (`seq`), shared by the side
 * that numbers them (src/nats/responder.ts) and the side that orders them
 * (src/client/sequence.ts), so the two cannot disagree. Snapshots repeat
 * the last number: a newer one replaces a lost one, so they are neither
 * resent nor waited for. Unnumbered messages carry no `seq` at all (a
 * `rejected` answers a request that never became a conversation). Every
 * other type takes the next number.
 */
export interface Numbering {
  readonly snapshots: ReadonlySet<string>;
  readonly unnumbered: ReadonlySet<string>;
}

/** The numbering of a build job's messages (`BuildResponse`). */
export const BUILD_NUMBERING: Numbering = {
  snapshots: new Set<BuildResponse["type"]>(["progress", "heartbeat", "evaluating"]),
  unnumbered: new Set<BuildResponse["type"]>(["rejected"]),
};

const jobFields = {
  ...seqField,
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
  ...seqField,
  jobId: z.string(),
  position: z.number().int().nonnegative(),
});

export const JobStartedSchema = z.object({
  type: z.literal("job_started"),
  ...jobFields,
  revision: z.string().nullable(),
  lockedUrl: z.string(),
  hosts: z.array(z.string()),
  /** The whole job, when every host has successful builds to go by. */
  expectedMs: ExpectedMsSchema,
});

export const HostStartedSchema = z.object({
  type: z.literal("host_started"),
  ...seqField,
  jobId: z.string(),
  host: z.string(),
  /** 1-based position of the host in the job, out of `total`. */
  index: z.number().int().positive(),
  total: z.number().int().positive(),
  startedAt: z.string(),
  /** Median of the host's last successful build durations. */
  expectedMs: ExpectedMsSchema,
});

export const HostFinishedSchema = z.object({
  type: z.literal("host_finished"),
  ...seqField,
  jobId: z.string(),
  index: z.number().int().positive(),
  total: z.number().int().positive(),
  ...HostResultSchema.shape,
});

export const CountsSchema = z.object({
  done: z.number().int().nonnegative(),
  expected: z.number().int().nonnegative(),
  running: z.number().int().nonnegative(),
  failed: z.number().int().nonnegative(),
});

/** What nix is doing for the host being built, from its internal-json log. */
export const BuildProgressSchema = z.object({
  derivations: CountsSchema,
  substitutions: CountsSchema,
  downloadedBytes: z.number().nonnegative(),
  expectedDownloadBytes: z.number().nonnegative(),
  /** machine: the remote builder's store URL when nix builds it elsewhere (`builders`); absent for a local build. */
  building: z.object({ drv: z.string(), phase: z.string().nullable(), machine: z.string().optional() }).nullable(),
});
export type BuildProgress = z.infer<typeof BuildProgressSchema>;

export const ProgressSchema = z.object({
  type: z.literal("progress"),
  ...seqField,
  jobId: z.string(),
  host: z.string(),
  index: z.number().int().positive(),
  total: z.number().int().positive(),
  /** Time since host_started, when this snapshot was taken. */
  elapsedMs: z.number().int().nonnegative(),
  expectedMs: ExpectedMsSchema,
  ...BuildProgressSchema.shape,
});

/** How far the evaluation of an `all` job's hosts has got (they are evaluated side by side, ahead of the builds). */
export const EvaluationCountsSchema = z.object({
  /** Hosts whose evaluation ended, successfully or not. */
  evaluated: z.number().int().nonnegative(),
  total: z.number().int().nonnegative(),
  /** Of those, hosts that did not evaluate (each also gets its own eval_error host_finished). */
  failed: z.number().int().nonnegative(),
});
export type EvaluationCounts = z.infer<typeof EvaluationCountsSchema>;

/** `all`: sent when evaluation starts and whenever another host's evaluation ends; the first comes before the first host_started. */
export const EvaluatingSchema = z.object({
  type: z.literal("evaluating"),
  ...seqField,
  jobId: z.string(),
  ...EvaluationCountsSchema.shape,
});

/** Sent every heartbeat interval to requesters of queued and running jobs, so they can tell a silent builder from a slow one. */
export const HeartbeatSchema = z.object({
  type: z.literal("heartbeat"),
  ...seqField,
  jobId: z.string(),
  state: z.enum(["queued", "running"]),
  position: z.number().int().nonnegative(),
  host: z.string().nullable(),
});

/**
 * The builder is stopping (a restart) and has saved the job: it resumes
 * when the builder is back. Not final: keep waiting for `resumed`.
 */
export const InterruptedSchema = z.object({
  type: z.literal("interrupted"),
  ...seqField,
  jobId: z.string(),
  resumes: z.literal(true),
  reason: z.string(),
});

/** A restarted builder took up a saved job again; the usual messages follow. */
export const ResumedSchema = z.object({
  type: z.literal("resumed"),
  ...seqField,
  jobId: z.string(),
  /** Jobs that run before this one (0: it runs now). */
  position: z.number().int().nonnegative(),
  /** How often the job has been cut short by a stop or crash so far. */
  interruptions: z.number().int().nonnegative(),
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
  /** With `error`: where nix says the flake fails to evaluate (e.g. a syntax error in flake.nix). */
  location: SourceLocationSchema.optional(),
});

export const RejectCodeSchema = z.enum([
  "unknown_repo",
  "unknown_host",
  "invalid_name",
  "malformed_payload",
  "queue_full",
  "unavailable",
  "shutting_down",
  "unknown_job",
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
  EvaluatingSchema,
  HostStartedSchema,
  ProgressSchema,
  HeartbeatSchema,
  HostFinishedSchema,
  InterruptedSchema,
  ResumedSchema,
  CompletedSchema,
  RejectedSchema,
]);

export type Accepted = z.infer<typeof AcceptedSchema>;
export type Queued = z.infer<typeof QueuedSchema>;
export type JobStarted = z.infer<typeof JobStartedSchema>;
export type HostStarted = z.infer<typeof HostStartedSchema>;
export type HostFinished = z.infer<typeof HostFinishedSchema>;
export type Completed = z.infer<typeof CompletedSchema>;
export type Progress = z.infer<typeof ProgressSchema>;
export type Evaluating = z.infer<typeof EvaluatingSchema>;
export type Heartbeat = z.infer<typeof HeartbeatSchema>;
export type Rejected = z.infer<typeof RejectedSchema>;
export type Interrupted = z.infer<typeof InterruptedSchema>;
export type Resumed = z.infer<typeof ResumedSchema>;
export type BuildResponse = z.infer<typeof BuildResponseSchema>;
export type FinalResponse = Completed | Rejected;

export function isFinal(message: BuildResponse): message is FinalResponse {
  return message.type === "completed" || message.type === "rejected";
}

/** What a subject under `build.>` means to the builder. */
export type SubjectKind =
  | { kind: "build"; repo: string; target: string }
  | { kind: "response" }
  | { kind: "control"; name: ControlName }
  | { kind: "invalid"; reason: string };

export function classifySubject(subject: string): SubjectKind {
  if (subject.startsWith(RESPONSE_PREFIX) || subject === "build.responses") return { kind: "response" };
  const tokens = subject.split(".");
  if (tokens[0] !== SUBJECT_PREFIX) return { kind: "invalid", reason: `subject ${subject} is not under build.` };
  if (tokens.length === 2) {
    const name = tokens[1] as ControlName;
    if (CONTROL_NAMES.includes(name)) return { kind: "control", name };
    return { kind: "invalid", reason: `expected build.<repo>.<target>, got ${subject}` };
  }
  if (tokens.length !== 3) return { kind: "invalid", reason: `expected build.<repo>.<target>, got ${subject}` };
  return { kind: "build", repo: tokens[1] as string, target: tokens[2] as string };
}

/** Replies may only go where the builder is allowed to publish. */
export function isValidReplySubject(reply: string | undefined): reply is string {
  return isValidReplySubjectUnder(RESPONSE_PREFIX, reply);
}

/** A concrete subject (no wildcards, no empty tokens, no whitespace) under `prefix` ("….responses."). */
export function isValidReplySubjectUnder(prefix: string, reply: string | undefined): reply is string {
  if (!reply || reply.length > 256) return false;
  if (!reply.startsWith(prefix)) return false;
  const tokens = reply.split(".");
  return tokens.length >= 3 && tokens.every((t) => t.length > 0 && !/[\s*>]/.test(t));
}

export function buildSubject(repo: string, target: string): string {
  return `${SUBJECT_PREFIX}.${repo}.${target}`;
}

// --- Control requests: build.discover, build.status, build.cancel -------

export const DiscoverRequestSchema = z.strictObject({ refresh: z.boolean().optional() });
export type DiscoverRequest = z.infer<typeof DiscoverRequestSchema>;

export const RepoInfoSchema = z.object({
  name: z.string(),
  url: z.string(),
  hosts: z.array(z.string()),
  /** The default-branch revision the host list was read from. */
  revision: z.string().nullable(),
  /** When the host list was read (ISO 8601), or null if it never was. */
  fetchedAt: z.string().nullable(),
  /** Why the host list is missing or stale (the last fetch failed). */
  error: z.string().optional(),
  /**
   * True while a fetch of the repo is under way (or waiting for a slot):
   * hosts, revision and fetchedAt are from the last good fetch, if any. Ask
   * again (without refresh) to see the result.
   */
  loading: z.boolean().optional(),
});
export type RepoInfo = z.infer<typeof RepoInfoSchema>;

export const DiscoverResponseSchema = z.object({
  type: z.literal("discover"),
  version: z.string(),
  builder: z.string(),
  repos: z.array(RepoInfoSchema),
});

export const StatusRequestSchema = z.strictObject({});

export const RunningJobSchema = z.object({
  jobId: z.string(),
  repo: z.string(),
  target: z.string(),
  ref: z.string().nullable(),
  startedAt: z.string(),
  requesters: z.number().int().nonnegative(),
  /** Null while the flake is being fetched and its hosts listed. */
  currentHost: z.string().nullable(),
  hostIndex: z.number().int().nonnegative(),
  totalHosts: z.number().int().nonnegative(),
  hostStartedAt: z.string().nullable(),
  progress: BuildProgressSchema.nullable(),
  /** `all`: how far evaluating the hosts has got; absent for a single host or when every .drv was already known. */
  evaluation: EvaluationCountsSchema.optional(),
  /** The current host's expected duration (see host_started). */
  expectedMs: ExpectedMsSchema,
});

export const QueuedJobSchema = z.object({
  jobId: z.string(),
  repo: z.string(),
  target: z.string(),
  ref: z.string().nullable(),
  position: z.number().int().nonnegative(),
  requesters: z.number().int().nonnegative(),
  enqueuedAt: z.string(),
});

export const StatusResponseSchema = z.object({
  type: z.literal("status"),
  version: z.string(),
  builder: z.string(),
  running: RunningJobSchema.nullable(),
  queued: z.array(QueuedJobSchema),
});

/** Job ids are "j" and 10 hex digits (src/job.ts makes them). */
const JOB_ID_RE = /^j[0-9a-f]{10}$/;

export function isValidJobId(id: string): boolean {
  return JOB_ID_RE.test(id);
}

export const CancelRequestSchema = z.strictObject({ jobId: z.string().regex(JOB_ID_RE, "expected a job id like j3fa2c1d9e0") });

export const CancelResponseSchema = z.object({
  type: z.literal("cancel"),
  jobId: z.string(),
  /** removed: it was queued and never ran; stopping: its nix process tree is being killed. */
  outcome: z.enum(["removed", "stopping"]),
});

export const HistoryRequestSchema = z.strictObject({ repo: RepoNameSchema, host: HostNameSchema.optional() });
export type HistoryRequest = z.infer<typeof HistoryRequestSchema>;

export const HistoryEntrySchema = z.object({
  host: z.string(),
  jobId: z.string(),
  revision: z.string().nullable(),
  ref: z.string().nullable(),
  status: HostStatusSchema,
  durationMs: z.number().int().nonnegative(),
  storePath: z.string().optional(),
  finishedAt: z.string(),
  error: z.string().optional(),
  /** For eval_error: the file and line nix blamed. */
  location: SourceLocationSchema.optional(),
  /**
   * The last lines of the nix log of a failed build; only the host's newest
   * failure keeps them (the status page shows them after a restart).
   */
  logTail: z.array(z.string()).optional(),
  /** On success: what changed in the closure (packages cut to HISTORY_CHANGED_PACKAGES; omittedPackages counts the rest). */
  changes: ChangesSchema.nullable().optional(),
  /** On success: false when the toplevel could not be registered as a GC root. */
  gcRoot: z.boolean().optional(),
});
/** Packages of a closure change a history entry keeps: a summary, not the full list host_finished carries. */
export const HISTORY_CHANGED_PACKAGES = 5;
export type HistoryEntry = z.infer<typeof HistoryEntrySchema>;

export const HistoryResponseSchema = z.object({
  type: z.literal("history"),
  repo: z.string(),
  host: z.string().nullable(),
  /** Newest first. */
  entries: z.array(HistoryEntrySchema),
});
export type HistoryResponse = z.infer<typeof HistoryResponseSchema>;

export const ControlResponseSchema = z.discriminatedUnion("type", [
  DiscoverResponseSchema,
  StatusResponseSchema,
  CancelResponseSchema,
  HistoryResponseSchema,
  RejectedSchema,
]);

export type DiscoverResponse = z.infer<typeof DiscoverResponseSchema>;
export type StatusResponse = z.infer<typeof StatusResponseSchema>;
export type RunningJob = z.infer<typeof RunningJobSchema>;
export type QueuedJob = z.infer<typeof QueuedJobSchema>;
export type CancelResponse = z.infer<typeof CancelResponseSchema>;
export type ControlResponse = z.infer<typeof ControlResponseSchema>;
interface ControlAnswers {
  discover: DiscoverResponse;
  status: StatusResponse;
  cancel: CancelResponse;
  history: HistoryResponse;
}
/** The answer a control request calls for (besides `rejected`). */
export type AnswerTo<N extends ControlName> = ControlAnswers[N];
