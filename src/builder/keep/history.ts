/**
 * The last `build.historySize` results per repo and host, newest first, in
 * `<stateDir>/history.json`: what `build.history` answers, what closure
 * changes are compared against, and where expected durations come from.
 * Written atomically after each host (writes coalesce when hosts finish
 * faster than the disk); a missing file is a fresh start, a corrupt one is
 * one warning and a fresh start — never a stopped daemon.
 */
import { STATE_FILES } from "../../state-files.js";
import { join } from "node:path";
import { z } from "zod";
import { errorMessage } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { HistoryEntrySchema, isValidHostName, isValidRepoName, type HistoryEntry } from "../../protocol.js";
import { StateFile } from "../../util/state-file.js";

export const HISTORY_FILE = STATE_FILES.history;
/** Successful builds the expected duration is the median of. */
const ETA_SAMPLES = 5;
/** A `build.history` answer for a whole repo carries at most this many entries (NATS payloads are small). */
export const MAX_HISTORY_ANSWER = 500;

const FileSchema = z.strictObject({
  version: z.literal(1),
  repos: z.record(z.string(), z.record(z.string(), z.array(HistoryEntrySchema))),
});

export interface HistoryOptions {
  /** Memory only when undefined. */
  stateDir?: string;
  size: number;
  logger: Logger;
  /** Told after every write of history.json: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
}

export class BuildHistory {
  private repos: Record<string, Record<string, HistoryEntry[]>> = {};
  private readonly state: StateFile<z.infer<typeof FileSchema>> | undefined;

  constructor(private readonly options: HistoryOptions) {
    this.state = options.stateDir
      ? new StateFile({
          file: join(options.stateDir, HISTORY_FILE),
          schema: FileSchema,
          snapshot: () => ({ version: 1 as const, repos: this.repos }),
          ...(options.onSaved ? { onSaved: options.onSaved } : {}),
        })
      : undefined;
  }

  private get file(): string | undefined {
    return this.state?.file;
  }

  async load(): Promise<void> {
    if (!this.state) return;
    const read = await this.state.read();
    if (read.status === "missing") return;
    if (read.status === "unreadable") {
      this.options.logger.warn({ file: this.file, err: errorMessage(read.error) }, "the build history file was not loaded; starting a fresh history");
      return;
    }
    if (read.status === "corrupt") {
      this.options.logger.warn({ file: this.file, problem: read.problem }, "the build history file is unreadable; starting a fresh history");
      return;
    }
    const parsed = read.value;
    const repos: Record<string, Record<string, HistoryEntry[]>> = {};
    // Names are checked again: a hand-edited "__proto__" must not become a prototype.
    for (const [repo, hosts] of Object.entries(parsed.repos)) {
      if (!isValidRepoName(repo)) continue;
      const kept: Record<string, HistoryEntry[]> = {};
      for (const [host, entries] of Object.entries(hosts)) if (isValidHostName(host)) kept[host] = entries.slice(0, this.options.size);
      repos[repo] = kept;
    }
    this.repos = repos;
  }

  record(repo: string, entry: HistoryEntry): void {
    const hosts = (this.repos[repo] ??= {});
    let older = Object.hasOwn(hosts, entry.host) ? (hosts[entry.host] as HistoryEntry[]) : [];
    // Only the newest failure keeps its log tail: enough for the status page, and the file stays small.
    if (entry.logTail) older = older.map(({ logTail: _dropped, ...rest }) => rest);
    const entries = [entry, ...older];
    hosts[entry.host] = entries.slice(0, this.options.size);
    this.scheduleSave();
  }

  /** The hosts of the repo with at least one result. */
  hosts(repo: string): string[] {
    return Object.hasOwn(this.repos, repo) ? Object.keys(this.repos[repo] as Record<string, HistoryEntry[]>) : [];
  }

  /** Newest first: one host's entries, or the whole repo's (at most MAX_HISTORY_ANSWER). */
  entries(repo: string, host?: string): HistoryEntry[] {
    const hosts = Object.hasOwn(this.repos, repo) ? (this.repos[repo] as Record<string, HistoryEntry[]>) : {};
    if (host !== undefined) return [...(Object.hasOwn(hosts, host) ? (hosts[host] as HistoryEntry[]) : [])];
    return Object.values(hosts)
      .flat()
      .sort((a, b) => b.finishedAt.localeCompare(a.finishedAt))
      .slice(0, MAX_HISTORY_ANSWER);
  }

  /** The host's newest successful default-branch build: what its next build is compared with. */
  lastDefaultSuccess(repo: string, host: string): HistoryEntry | undefined {
    return this.entries(repo, host).find((e) => e.status === "success" && e.ref === null && e.storePath !== undefined);
  }

  /** Median of the host's last successful durations; null without any. */
  expectedMs(repo: string, host: string): number | null {
    const durations = this.entries(repo, host)
      .filter((e) => e.status === "success")
      .slice(0, ETA_SAMPLES)
      .map((e) => e.durationMs)
      .sort((a, b) => a - b);
    if (durations.length === 0) return null;
    const mid = Math.floor(durations.length / 2);
    return durations.length % 2 === 1 ? (durations[mid] as number) : Math.round(((durations[mid - 1] as number) + (durations[mid] as number)) / 2);
  }

  /** Resolves when what was recorded so far is on disk (or its write failed and was logged). */
  flush(): Promise<void> {
    return this.state?.flush() ?? Promise.resolve();
  }

  private scheduleSave(): void {
    this.state?.save().catch((err: unknown) => this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "cannot save the build history"));
  }
}
