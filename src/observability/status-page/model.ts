/**
 * What the status page shows, as data: `GET /api/status` answers it and the
 * HTML is rendered from it. Built from the shapes the protocol already has
 * (`build.status`'s answer, `build.discover`'s repos, `build.history`'s
 * entries); the daemon passes a StatusSource in, because this layer may not
 * import the builder.
 */
import { z } from "zod";
import {
  HistoryEntrySchema,
  RepoInfoSchema,
  StatusResponseSchema,
  type HistoryEntry,
  type RepoInfo,
  type StatusResponse,
} from "../../protocol.js";

/** A host whose last success is older than this is marked stale. */
export const STALE_AFTER_MS = 24 * 3_600_000;

/** The builder's answers, read in-process; nothing here starts a fetch, a build or a NATS request. */
export interface StatusSource {
  /** What `build.status` answers. */
  status(): StatusResponse;
  /** `build.discover`'s repos as the catalog has them now. */
  repos(): RepoInfo[];
  /** Hosts of the repo the history has results for. */
  historyHosts(repo: string): string[];
  /** Newest first, as `build.history` answers: one host's results, or the whole repo's (bounded). */
  history(repo: string, host?: string): HistoryEntry[];
  expectedMs(repo: string, host: string): number | null;
  /** Whether this toplevel is held by one of the GC roots the builder keeps now. */
  rooted(repo: string, host: string, storePath: string): boolean;
}

export const HostRowSchema = z.object({
  host: z.string(),
  /** False for a host the builder has results for but the repo's default branch no longer lists. */
  listed: z.boolean(),
  /** The newest result (a failure keeps its log tail); null: never built. */
  latest: HistoryEntrySchema.nullable(),
  /** When the newest success finished (ISO 8601), null without one. */
  lastSuccessAt: z.string().nullable(),
  /** The newest success is older than 24 h. */
  stale: z.boolean(),
  expectedMs: z.number().int().nonnegative().nullable(),
  /** The newest successful toplevel is held by a GC root now. */
  gcRoot: z.boolean(),
});
export type HostRow = z.infer<typeof HostRowSchema>;

// The repo's url is left out: it may carry a token.
export const RepoStatusSchema = RepoInfoSchema.omit({ url: true, hosts: true }).extend({ hosts: z.array(HostRowSchema) });
export type RepoStatus = z.infer<typeof RepoStatusSchema>;

/** `GET /api/status`. */
export const PageStatusSchema = z.object({
  type: z.literal("status_page"),
  builder: z.string(),
  version: z.string(),
  generatedAt: z.string(),
  /** Exactly what `build.status` answers: the running job and the queue. */
  status: StatusResponseSchema,
  repos: z.array(RepoStatusSchema),
});
export type PageStatus = z.infer<typeof PageStatusSchema>;

/** "scheme://user:token@host" → "scheme://…@host": nix and git put fetch URLs into their errors. */
export function redact(text: string): string {
  return text.replace(/(:\/\/)[^/@\s]+@/g, "$1…@");
}

export function redactEntry(entry: HistoryEntry): HistoryEntry {
  const out = { ...entry };
  if (out.error !== undefined) out.error = redact(out.error);
  if (out.logTail) out.logTail = out.logTail.map(redact);
  return out;
}

export function hostRow(source: StatusSource, repo: string, host: string, listed: boolean, now: number): HostRow {
  const entries = source.history(repo, host);
  const latest = entries[0];
  const success = entries.find((e) => e.status === "success");
  return {
    host,
    listed,
    latest: latest ? redactEntry(latest) : null,
    lastSuccessAt: success?.finishedAt ?? null,
    stale: success !== undefined && now - Date.parse(success.finishedAt) > STALE_AFTER_MS,
    expectedMs: source.expectedMs(repo, host),
    gcRoot: success?.storePath !== undefined && source.rooted(repo, host, success.storePath),
  };
}

export function repoStatus(source: StatusSource, info: RepoInfo, now: number): RepoStatus {
  const { url: _url, hosts, ...rest } = info;
  const listed = new Set(hosts);
  const unlisted = source
    .historyHosts(info.name)
    .filter((h) => !listed.has(h))
    .sort();
  return {
    ...rest,
    ...(rest.error !== undefined ? { error: redact(rest.error) } : {}),
    hosts: [...hosts.map((h) => hostRow(source, info.name, h, true, now)), ...unlisted.map((h) => hostRow(source, info.name, h, false, now))],
  };
}

export function pageStatus(source: StatusSource, now = Date.now()): PageStatus {
  const status = source.status();
  return {
    type: "status_page",
    builder: status.builder,
    version: status.version,
    generatedAt: new Date(now).toISOString(),
    status,
    repos: source.repos().map((info) => repoStatus(source, info, now)),
  };
}
