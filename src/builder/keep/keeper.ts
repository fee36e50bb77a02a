/**
 * What the builder keeps of each build: the GC root of a successful
 * toplevel, the host's history, and what changed against its last good
 * default-branch build. One call per finished host from the job runner;
 * nothing here can fail a build — a root or a comparison that does not
 * work is a warning and a field in the result.
 */
import type { Logger } from "../../logger.js";
import type { NixStore } from "../../nix/store.js";
import { HISTORY_CHANGED_PACKAGES, keepPackages, type Changes, type HostResult } from "../../protocol.js";
import type { BuildHistory } from "./history.js";
import type { GcRoots } from "./gc-roots.js";

/** Longest a closure comparison may add to a host's build. */
export const CHANGES_TIMEOUT_MS = 10_000;

export interface KeeperOptions {
  history: BuildHistory;
  roots: GcRoots;
  store: NixStore;
  logger: Logger;
  changesTimeoutMs?: number;
}

export interface FinishedHost {
  repo: string;
  ref: string | null;
  revision: string | null;
  jobId: string;
  result: HostResult;
  /** A failed build's last log lines (as host_finished carries them): the history keeps the newest failure's. */
  logTail?: string[];
}

export class Keeper {
  constructor(private readonly options: KeeperOptions) {}

  expectedMs(repo: string, host: string): number | null {
    return this.options.history.expectedMs(repo, host);
  }

  /** The sum of the hosts' expected durations, when every host has one. */
  expectedJobMs(repo: string, hosts: string[]): number | null {
    let total = 0;
    for (const host of hosts) {
      const ms = this.expectedMs(repo, host);
      if (ms === null) return null;
      total += ms;
    }
    return hosts.length > 0 ? total : null;
  }

  /** The repo's default branch lists these hosts now (see GcRoots.retainHosts). */
  hostsListed(repo: string, hosts: string[]): Promise<void> {
    return this.options.roots.retainHosts(repo, hosts);
  }

  /** Roots, compares and records a finished host; returns what its result gains. */
  async finished(finished: FinishedHost): Promise<Pick<HostResult, "changes" | "gcRoot">> {
    const { repo, ref, revision, jobId, result, logTail } = finished;
    const { history, roots } = this.options;
    const extra: Pick<HostResult, "changes" | "gcRoot"> = {};
    if (result.status === "success" && result.storePath) {
      const against = history.lastDefaultSuccess(repo, result.host);
      // Both at once: each is a nix process or two, and the next host waits for them.
      const [gcRoot, changes] = await Promise.all([
        roots.add({ repo, host: result.host, storePath: result.storePath, revision, ref }),
        against?.storePath ? this.changes(repo, result.host, against.storePath, against.revision, result.storePath) : Promise.resolve(null),
      ]);
      extra.gcRoot = gcRoot;
      extra.changes = changes;
    }
    history.record(repo, {
      host: result.host,
      jobId,
      revision,
      ref,
      status: result.status,
      durationMs: result.durationMs,
      ...(result.storePath ? { storePath: result.storePath } : {}),
      finishedAt: new Date().toISOString(),
      ...(result.error ? { error: result.error.slice(0, 500) } : {}),
      ...(result.location ? { location: result.location } : {}),
      ...(logTail && logTail.length > 0 ? { logTail } : {}),
      ...(extra.changes !== undefined ? { changes: changesSummary(extra.changes) } : {}),
      ...(extra.gcRoot !== undefined ? { gcRoot: extra.gcRoot } : {}),
    });
    return extra;
  }

  async flush(): Promise<void> {
    await Promise.all([this.options.history.flush(), this.options.roots.flush()]);
  }

  private async changes(repo: string, host: string, before: string, revision: string | null, after: string): Promise<Changes | null> {
    const changes = await this.options.store.changes(before, after, revision, this.options.changesTimeoutMs ?? CHANGES_TIMEOUT_MS);
    if (!changes.ok) {
      this.options.logger.warn({ repo, host, against: before, err: changes.error }, "cannot compare the closure with the last good build; reporting no changes");
      return null;
    }
    return changes.value;
  }
}

/** The history keeps a few packages per change (50 hosts × historySize entries add up); the count of the rest stays. */
function changesSummary(changes: Changes | null): Changes | null {
  return changes && keepPackages(changes, HISTORY_CHANGED_PACKAGES);
}
