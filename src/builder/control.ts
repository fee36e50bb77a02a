/**
 * The builder's answers to `build.discover`, `build.status` and
 * `build.cancel`: what it can build, what it is doing, and stopping a job.
 */
import type { HostCatalog } from "./catalog.js";
import { repoNamed, type Config } from "../config.js";
import type { Job } from "../job.js";
import {
  CancelRequestSchema,
  DiscoverRequestSchema,
  HistoryRequestSchema,
  type HistoryEntry,
  type HistoryResponse,
  StatusRequestSchema,
  type CancelResponse,
  type ControlName,
  type DiscoverResponse,
  type QueuedJob,
  type RepoInfo,
  type Rejected,
  type RunningJob,
  type StatusResponse,
} from "../protocol.js";
import { parseBody } from "./request-body.js";

export interface ControlOptions {
  config: Config;
  catalog: HostCatalog;
  version: string;
  builderName: string;
  jobs: () => { running: Job | null; queued: readonly Job[]; positionOf: (index: number) => number };
  /** Cancels a job; undefined when no job has that id. */
  cancel: (jobId: string) => CancelResponse["outcome"] | undefined;
  /** Newest first: one host's results, or the whole repo's. */
  history: (repo: string, host?: string) => HistoryEntry[];
}

export type ControlAnswer = DiscoverResponse | StatusResponse | CancelResponse | HistoryResponse | Rejected;

const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());

export class Control {
  constructor(private readonly options: ControlOptions) {}

  async answer(name: ControlName, data: Uint8Array): Promise<ControlAnswer> {
    switch (name) {
      case "discover":
        return this.discover(data);
      case "status":
        return this.status(data);
      case "cancel":
        return this.cancel(data);
      case "history":
        return this.history(data);
    }
  }

  private async discover(data: Uint8Array): Promise<ControlAnswer> {
    const request = parseBody(data, DiscoverRequestSchema, '{"refresh": true} or nothing');
    if (!request.ok) return request.rejection;
    const { config, catalog, version, builderName } = this.options;
    const names = Object.keys(config.repos);
    // Fetches run in the background and the answer is what is known now: a
    // repo whose git server hangs must not hold up the answer about the
    // others. What is still loading says so (`loading`); a requester that
    // wants it asks again (src/client/gather.ts, discoverEveryBuilder).
    // Waiting here instead cost every requester the wait, every time it
    // asked again while the hung fetch ran (and, with several builders,
    // a quiet period as long as the wait).
    void Promise.allSettled(names.map((name) => catalog.request(name, request.value.refresh === true)));
    return { type: "discover", version, builder: builderName, repos: this.repos() };
  }

  /** Each repo's host list as the catalog has it now; starts no fetch (the status page reads this). */
  repos(): RepoInfo[] {
    const { config, catalog } = this.options;
    return Object.keys(config.repos).map((name) => {
      const url = repoNamed(config.repos, name)?.url as string;
      const { value, error, loading } = catalog.state(name);
      const info: RepoInfo = value
        ? { name, url, hosts: value.hosts, revision: value.revision, fetchedAt: iso(value.fetchedAt) }
        : { name, url, hosts: [], revision: null, fetchedAt: null };
      if (loading) info.loading = true;
      else if (error !== undefined) info.error = error;
      return info;
    });
  }

  private status(data: Uint8Array): ControlAnswer {
    const request = parseBody(data, StatusRequestSchema, "nothing");
    if (!request.ok) return request.rejection;
    return this.statusNow();
  }

  /** What `build.status` answers (the status page reads this too). */
  statusNow(): StatusResponse {
    const { version, builderName } = this.options;
    const jobs = this.options.jobs();
    const queued: QueuedJob[] = jobs.queued.map((job, index) => ({
      jobId: job.id,
      ...job.spec,
      position: jobs.positionOf(index),
      requesters: job.requesters.size,
      enqueuedAt: new Date(job.enqueuedAt).toISOString(),
    }));
    return { type: "status", version, builder: builderName, running: jobs.running ? runningJob(jobs.running) : null, queued };
  }

  private history(data: Uint8Array): ControlAnswer {
    const request = parseBody(data, HistoryRequestSchema, '{"repo": "<repo>", "host": "<host>"} (host optional)', (issue) =>
      issue.code === "custom" ? "invalid_name" : undefined,
    );
    if (!request.ok) return request.rejection;
    const { repo, host } = request.value;
    const { config } = this.options;
    if (!repoNamed(config.repos, repo)) {
      const known = Object.keys(config.repos);
      return { type: "rejected", code: "unknown_repo", error: `unknown repo ${repo}; this builder builds ${known.join(", ")}`, known };
    }
    return { type: "history", repo, host: host ?? null, entries: this.options.history(repo, host) };
  }

  private cancel(data: Uint8Array): ControlAnswer {
    const request = parseBody(data, CancelRequestSchema, '{"jobId": "<id from accepted or status>"}');
    if (!request.ok) return request.rejection;
    const { jobId } = request.value;
    const outcome = this.options.cancel(jobId);
    if (!outcome) {
      return { type: "rejected", code: "unknown_job", error: `no queued or running job ${jobId} (it may have finished already)` };
    }
    return { type: "cancel", jobId, outcome };
  }
}

function runningJob(job: Job): RunningJob {
  return {
    jobId: job.id,
    ...job.spec,
    startedAt: iso(job.startedAt) ?? new Date().toISOString(),
    requesters: job.requesters.size,
    currentHost: job.currentHost,
    hostIndex: job.hostIndex,
    totalHosts: job.totalHosts,
    hostStartedAt: job.currentHost ? iso(job.hostStartedAt) : null,
    progress: job.currentHost ? job.progress : null,
    ...(job.evaluation ? { evaluation: { ...job.evaluation } } : {}),
    expectedMs: job.currentHost ? job.expectedMs : null,
  };
}
