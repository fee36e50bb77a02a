/**
 * Which hosts each repo has on its default branch, so that a request for a
 * host that does not exist is rejected at once with the list of those that
 * do. Loaded in the background at start-up, refreshed when a request names
 * an unknown host (at most once per `minRefreshMs`, so hostile requests
 * cannot turn into a stream of git fetches), and updated for free whenever
 * a job lists the hosts of the default branch.
 *
 * Fetches run in the background, at most MAX_FETCHES at once (so a repo
 * whose git server hangs holds one slot, for build.fetchTimeout at most,
 * and the other repos still load), and `state` answers at once with what is
 * known: hosts, when they were read, and the last error or that a fetch is
 * under way.
 */
import { repoNamed } from "../config.js";
import { isValidHostName } from "../protocol.js";
import type { Logger } from "../logger.js";
import type { NixRunner } from "../nix/runner.js";

export interface RepoHosts {
  hosts: string[];
  revision: string | null;
  fetchedAt: number;
}

/** What is known about a repo's hosts right now, without waiting. */
export interface RepoState {
  value?: RepoHosts;
  error?: string;
  /** A fetch of the repo is running or waiting for a slot. */
  loading: boolean;
}

/** Fetches (git + listing) at once: a hung remote must not stall the others. */
const MAX_FETCHES = 2;

export type HostLookup =
  | { found: true }
  | { found: false; hosts: string[] }
  | { found: false; error: string };

interface Entry {
  value?: RepoHosts;
  error?: string;
  attemptedAt: number;
  inflight?: Promise<void>;
  /** A fetch queued behind `inflight` for refreshes asked while it ran. */
  next?: Promise<void>;
}

export interface HostCatalogOptions {
  nix: NixRunner;
  repos: Record<string, { url: string }>;
  logger: Logger;
  /** Listing the hosts of a fetched revision (build.resolveTimeout). */
  timeoutMs: number;
  /** Fetching the repo (build.fetchTimeout); defaults to timeoutMs. */
  fetchTimeoutMs?: number;
  minRefreshMs?: number;
  maxFetches?: number;
}

export class HostCatalog {
  private readonly entries = new Map<string, Entry>();
  private readonly minRefreshMs: number;
  private readonly abort = new AbortController();
  private readonly maxFetches: number;
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly options: HostCatalogOptions) {
    this.minRefreshMs = options.minRefreshMs ?? 30_000;
    this.maxFetches = options.maxFetches ?? MAX_FETCHES;
  }

  /** Loads every repo in the background (at most maxFetches at once). */
  start(): void {
    for (const repo of Object.keys(this.options.repos)) void this.refresh(repo);
  }

  /** What is known now; never waits for a fetch. */
  state(repo: string): RepoState {
    const entry = this.entries.get(repo);
    return {
      ...(entry?.value ? { value: entry.value } : {}),
      ...(entry?.error !== undefined ? { error: entry.error } : {}),
      loading: entry?.inflight !== undefined || entry?.next !== undefined,
    };
  }

  /**
   * Starts what a `build.discover` asks for without waiting for it: with
   * `refresh`, a fetch that sees the repo as of now (coalesced); without,
   * a first load of a repo that has none and is not loading. The promise
   * settles when that fetch is done.
   */
  request(repo: string, refresh: boolean): Promise<void> {
    if (refresh) return this.refreshAfterCurrent(repo);
    const entry = this.entries.get(repo);
    if (entry?.inflight) return entry.next ?? entry.inflight;
    if (!entry?.value && (!entry || Date.now() - entry.attemptedAt >= this.minRefreshMs)) return this.refresh(repo);
    return Promise.resolve();
  }

  stop(): void {
    this.abort.abort();
  }

  async lookup(repo: string, host: string): Promise<HostLookup> {
    let entry = this.entries.get(repo);
    if (entry?.value?.hosts.includes(host)) return { found: true };
    if (!entry || entry.inflight || Date.now() - entry.attemptedAt >= this.minRefreshMs) {
      await this.refresh(repo);
      entry = this.entries.get(repo);
    }
    if (entry?.value?.hosts.includes(host)) return { found: true };
    if (entry?.value) return { found: false, hosts: entry.value.hosts };
    return { found: false, error: entry?.error ?? "the host list is not available yet" };
  }

  /** The cached hosts of a repo, loading them if needed or if `refresh` is set. */
  async hosts(repo: string, refresh = false): Promise<RepoHosts | { error: string }> {
    const entry = this.entries.get(repo);
    // An explicit refresh always fetches (the operator just pushed a host);
    // concurrent ones are coalesced, so a requester looping on it costs at
    // most one fetch running and one queued per repo.
    if (refresh) await this.refreshAfterCurrent(repo);
    else if (!entry?.value) await this.refresh(repo);
    const current = this.entries.get(repo);
    if (current?.value) return current.value;
    return { error: current?.error ?? "the host list is not available" };
  }

  /**
   * The names under nixosConfigurations that can be requested (and so
   * built and listed); others cannot be a subject token or a NixOS host
   * name and are logged once per listing.
   */
  requestable(repo: string, names: readonly string[]): string[] {
    const skipped = names.filter((name) => !isValidHostName(name));
    if (skipped.length > 0) this.options.logger.warn({ repo, skipped }, "skipping hosts whose names cannot be requested");
    return names.filter(isValidHostName);
  }

  /** A job listed the default branch's hosts: keep them. */
  record(repo: string, hosts: RepoHosts): void {
    const entry = this.entries.get(repo) ?? { attemptedAt: 0 };
    entry.value = hosts;
    entry.error = undefined;
    entry.attemptedAt = hosts.fetchedAt;
    this.entries.set(repo, entry);
  }

  private refresh(repo: string): Promise<void> {
    const entry = this.entries.get(repo) ?? { attemptedAt: 0 };
    this.entries.set(repo, entry);
    entry.inflight ??= this.withSlot(() => this.load(repo, entry)).finally(() => {
      entry.inflight = undefined;
    });
    return entry.inflight;
  }

  /**
   * A fetch that starts no earlier than now: a fetch already running may
   * have read the repo before the change the caller wants to see, so the
   * caller waits for one more, shared by everyone who asks meanwhile.
   */
  private refreshAfterCurrent(repo: string): Promise<void> {
    const entry = this.entries.get(repo);
    if (!entry?.inflight) return this.refresh(repo);
    entry.next ??= entry.inflight.then(() => {
      entry.next = undefined;
      return this.refresh(repo);
    });
    return entry.next;
  }

  private async withSlot(work: () => Promise<void>): Promise<void> {
    while (this.active >= this.maxFetches) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      await work();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }

  private async load(repo: string, entry: Entry): Promise<void> {
    const { nix, repos, logger, timeoutMs } = this.options;
    const url = repoNamed(repos, repo)?.url;
    if (!url || this.abort.signal.aborted) return;
    entry.attemptedAt = Date.now();
    const signal = this.abort.signal;
    const fetchTimeoutMs = this.options.fetchTimeoutMs ?? timeoutMs;
    const fetched = await nix.resolveFlake(url, null, { timeoutMs: fetchTimeoutMs, signal });
    const lock = !fetched.ok && fetched.outcome === "timeout" ? { ...fetched, error: `${fetched.error} (build.fetchTimeout)` } : fetched;
    const listed = lock.ok ? await nix.listHosts(lock.value.lockedUrl, { timeoutMs, signal }) : lock;
    if (!listed.ok) {
      entry.error = listed.error;
      logger.warn({ repo, err: listed.error }, "could not list the repo's hosts");
      return;
    }
    const revision = lock.ok ? lock.value.revision : null;
    const hosts = this.requestable(repo, listed.value);
    entry.value = { hosts, revision, fetchedAt: Date.now() };
    entry.error = undefined;
    logger.info({ repo, hosts: hosts.length, revision }, "loaded the repo's hosts");
  }
}
