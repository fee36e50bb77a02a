/**
 * The builder's Prometheus metrics. They are fed from the event bus (and
 * the NATS connection state) only, never from the build code. Names and
 * labels are a contract with monitoring/ (alert rules, dashboard) and with
 * docs/observability.md, which says what each one means.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { BuilderEvent } from "../events.js";
import { HostStatusSchema, JobStatusSchema, type BuildResponse } from "../protocol.js";
import type { Job } from "../job.js";
import type { MetricsState } from "./state.js";
import type { ConnectionState } from "../nats/transport.js";

/** System closures take seconds when cached and hours when a mass rebuild lands. */
export const BUILD_DURATION_BUCKETS = [5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
/** A job waits behind at most a few whole-repo builds. */
export const QUEUE_WAIT_BUCKETS = [1, 5, 15, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800];

const CONNECTION_STATES: readonly ConnectionState[] = ["connecting", "connected", "disconnected", "closed"];

export interface BuildMetricsOptions {
  /** The configured repos: their build counters exist (at 0) from the start. */
  repos: readonly string[];
  version: string;
  /**
   * The builder's name (nats.name), on every series as the `builder` label:
   * several builders in one queue group report into one Prometheus, and
   * the dashboard selects by it.
   */
  builder?: string;
  /** Milliseconds since the epoch; tests may pin it. */
  now?: () => number;
}

export class BuildMetrics {
  readonly registry = new Registry();
  private readonly repos: ReadonlySet<string>;
  private readonly now: () => number;
  private readonly changeListeners: Array<() => void> = [];
  private runningJobId: string | null = null;

  private readonly builds: Counter<"repo" | "status">;
  private readonly hostBuilds: Counter<"repo" | "host" | "status">;
  private readonly duration: Histogram<"repo" | "host">;
  private readonly lastBuild: Gauge<"repo">;
  private readonly lastSuccess: Gauge<"repo">;
  private readonly hostLastSuccess: Gauge<"repo" | "host">;
  /** Per repo, the hosts that have a hostLastSuccess series. */
  private readonly hostsWithSuccess = new Map<string, Set<string>>();
  private readonly queueDepth: Gauge;
  private readonly running: Gauge;
  private readonly runningSince: Gauge<"repo" | "target">;
  private readonly queueWait: Histogram<"repo">;
  private readonly rejected: Counter<"code">;
  private readonly natsState: Gauge<"state">;
  private readonly copies: Counter<"repo" | "result">;
  private readonly stateWriteFailures: Counter<"file">;
  private readonly stateWritable: Gauge<"file">;
  private readonly resumed: Counter;
  private readonly evalWorkers: Counter<"repo" | "outcome">;
  private readonly evalPeakRss: Gauge<"repo">;

  constructor(options: BuildMetricsOptions) {
    this.repos = new Set(options.repos);
    this.now = options.now ?? Date.now;
    const registers = [this.registry];
    this.builds = new Counter({
      name: "homelab_deploy_builds_total",
      help: "Finished build jobs by repo and job status (success, failure, cancelled).",
      labelNames: ["repo", "status"],
      registers,
    });
    this.hostBuilds = new Counter({
      name: "homelab_deploy_build_host_total",
      help: "Finished host builds by repo, host and status (success, failure, timeout, eval_error, cancelled).",
      labelNames: ["repo", "host", "status"],
      registers,
    });
    this.duration = new Histogram({
      name: "homelab_deploy_build_duration_seconds",
      help: "Time nix took to build one host's system closure (cancelled builds are not observed).",
      labelNames: ["repo", "host"],
      buckets: BUILD_DURATION_BUCKETS,
      registers,
    });
    this.lastBuild = new Gauge({
      name: "homelab_deploy_build_last_timestamp",
      help: "Unix time a build of the repo last ended (a host build or a whole job), whatever its status.",
      labelNames: ["repo"],
      registers,
    });
    this.lastSuccess = new Gauge({
      name: "homelab_deploy_build_last_success_timestamp",
      help: "Unix time a host of the repo was last built successfully.",
      labelNames: ["repo"],
      registers,
    });
    this.hostLastSuccess = new Gauge({
      name: "homelab_deploy_build_host_last_success_timestamp",
      help: "Unix time of the last successful build of each host (kept across restarts; a host gone from the flake is dropped at its repo's next build of all hosts).",
      labelNames: ["repo", "host"],
      registers,
    });
    this.queueDepth = new Gauge({
      name: "homelab_deploy_queue_depth",
      help: "Jobs waiting behind the running one.",
      registers,
    });
    this.running = new Gauge({
      name: "homelab_deploy_build_running",
      help: "1 while a job is running, 0 when the builder is idle.",
      registers,
    });
    this.runningSince = new Gauge({
      name: "homelab_deploy_build_running_since_timestamp",
      help: "Unix time the running job started; only present while a job runs.",
      labelNames: ["repo", "target"],
      registers,
    });
    this.queueWait = new Histogram({
      name: "homelab_deploy_queue_wait_seconds",
      help: "Time a job waited in the queue before it started.",
      labelNames: ["repo"],
      buckets: QUEUE_WAIT_BUCKETS,
      registers,
    });
    this.rejected = new Counter({
      name: "homelab_deploy_requests_rejected_total",
      help: "Requests (builds, and build.discover/status/cancel) answered with rejected, by code.",
      labelNames: ["code"],
      registers,
    });
    this.resumed = new Counter({
      name: "homelab_deploy_jobs_resumed_total",
      help: "Saved jobs a (re)started builder took up again after a stop or crash cut them short or left them queued.",
      registers,
    });
    this.natsState = new Gauge({
      name: "homelab_deploy_nats_connection_state",
      help: "1 for the NATS connection's current state (connecting, connected, disconnected, closed), 0 for the others.",
      labelNames: ["state"],
      registers,
    });
    this.evalWorkers = new Counter({
      name: "homelab_deploy_eval_workers_total",
      help: "nix eval worker processes of all-host evaluations, by repo and outcome: started, replaced (past build.evalMaxMemory after other hosts), lost (died under a host: OOM killer, crash, timeout, past build.evalMaxMemory on its first host).",
      labelNames: ["repo", "outcome"],
      registers,
    });
    this.evalPeakRss = new Gauge({
      name: "homelab_deploy_eval_worker_peak_rss_bytes",
      help: "Highest RSS of an evaluation worker (summed over its process tree) seen in the repo's last all-host evaluation (read every 250 ms while a host evaluates); compare with build.evalMaxMemory and the unit's MemoryMax.",
      labelNames: ["repo"],
      registers,
    });
    this.copies = new Counter({
      name: "homelab_deploy_copy_total",
      help: "Built hosts whose closure was copied to build.copyTo, by repo and result (success, failure); a failed copy does not fail the host.",
      labelNames: ["repo", "result"],
      registers,
    });
    this.stateWriteFailures = new Counter({
      name: "homelab_deploy_state_write_failures_total",
      help: "Failed writes of a state file under stateDir (metrics.json, toplevels.json, history.json, gcroots.json), by file.",
      labelNames: ["file"],
      registers,
    });
    this.stateWritable = new Gauge({
      name: "homelab_deploy_state_writable",
      help: "1 while the last write (or start-up check) of a state file under stateDir worked, 0 while it fails.",
      labelNames: ["file"],
      registers,
    });
    new Gauge({
      name: "homelab_deploy_info",
      help: "Always 1; the version label says which homelab-deploy is running.",
      labelNames: ["version"],
      registers,
    }).set({ version: options.version }, 1);
    collectDefaultMetrics({ register: this.registry });
    if (options.builder !== undefined) this.registry.setDefaultLabels({ builder: options.builder });

    this.queueDepth.set(0);
    this.running.set(0);
    this.setNatsState("connecting");
    // Series that exist at 0 make increase() see the first failure; a
    // series born at 1 looks to Prometheus like no increase at all.
    for (const repo of this.repos) {
      for (const status of JobStatusSchema.options) this.builds.inc({ repo, status }, 0);
    }
  }

  /**
   * The event bus listener. Event and message types it does not know are
   * ignored, so the protocol can grow without breaking the metrics.
   */
  readonly onEvent = (event: BuilderEvent): void => {
    switch (event.type) {
      case "response":
        this.onResponse(event.job, event.message);
        return;
      case "rejected":
        this.rejected.inc({ code: event.message.code });
        return;
      case "queue":
        this.onQueue(event.depth, event.running);
        return;
      case "evaluation": {
        const { repo } = event.job.spec;
        // All three series from the first evaluation on, so increase() sees the first loss.
        this.evalWorkers.inc({ repo, outcome: "started" }, event.processes);
        this.evalWorkers.inc({ repo, outcome: "replaced" }, event.replacedForMemory);
        this.evalWorkers.inc({ repo, outcome: "lost" }, event.lost);
        this.evalPeakRss.set({ repo }, event.peakRssBytes);
        return;
      }
      default:
        return;
    }
  };

  /** Every state file's series exist from the start: failures at 0, writable at 1. */
  initStateFiles(files: readonly string[]): void {
    for (const file of files) {
      this.stateWriteFailures.inc({ file }, 0);
      this.stateWritable.set({ file }, 1);
    }
  }

  recordStateWrite(file: string, error: string | undefined): void {
    if (error !== undefined) this.stateWriteFailures.inc({ file });
    this.stateWritable.set({ file }, error === undefined ? 1 : 0);
  }

  setNatsState(state: ConnectionState): void {
    for (const each of CONNECTION_STATES) this.natsState.set({ state: each }, each === state ? 1 : 0);
  }

  /** Called after every change that the state file keeps. */
  onPersistentChange(listener: () => void): void {
    this.changeListeners.push(listener);
  }

  /** The values the state file keeps. */
  async snapshot(): Promise<MetricsState> {
    const [builds, hostBuilds, lastBuild, lastSuccess, hostLastSuccess] = await Promise.all([
      this.builds.get(),
      this.hostBuilds.get(),
      this.lastBuild.get(),
      this.lastSuccess.get(),
      this.hostLastSuccess.get(),
    ]);
    return {
      builds: builds.values.map((v) => ({
        repo: String(v.labels.repo),
        status: JobStatusSchema.parse(v.labels.status),
        value: v.value,
      })),
      hostBuilds: hostBuilds.values.map((v) => ({
        repo: String(v.labels.repo),
        host: String(v.labels.host),
        status: HostStatusSchema.parse(v.labels.status),
        value: v.value,
      })),
      lastBuild: Object.fromEntries(lastBuild.values.map((v) => [String(v.labels.repo), v.value])),
      lastSuccess: Object.fromEntries(lastSuccess.values.map((v) => [String(v.labels.repo), v.value])),
      hostLastSuccess: hostLastSuccess.values.map((v) => ({ repo: String(v.labels.repo), host: String(v.labels.host), value: v.value })),
    };
  }

  /**
   * Puts saved values back. Repos no longer configured are dropped: their
   * last-success time would otherwise keep the 24 h alert firing forever.
   * Returns the repos dropped.
   */
  restore(state: MetricsState): string[] {
    const dropped = new Set<string>();
    const keep = (repo: string) => {
      if (this.repos.has(repo)) return true;
      dropped.add(repo);
      return false;
    };
    for (const { repo, status, value } of state.builds) if (keep(repo)) this.builds.inc({ repo, status }, value);
    for (const { repo, host, status, value } of state.hostBuilds) {
      if (keep(repo)) this.hostBuilds.inc({ repo, host, status }, value);
    }
    for (const [repo, at] of Object.entries(state.lastBuild)) if (keep(repo)) this.lastBuild.set({ repo }, at);
    for (const [repo, at] of Object.entries(state.lastSuccess)) if (keep(repo)) this.lastSuccess.set({ repo }, at);
    for (const { repo, host, value } of state.hostLastSuccess) if (keep(repo)) this.setHostSuccess(repo, host, value);
    return [...dropped].sort();
  }

  private onResponse(job: Job, message: BuildResponse): void {
    const { repo } = job.spec;
    switch (message.type) {
      case "job_started":
        for (const host of message.hosts) this.ensureHostSeries(repo, host);
        // The default branch's full host list: a host no longer in it has no last success to alert on.
        if (job.spec.target === "all" && job.spec.ref === null) this.dropHostsExcept(repo, message.hosts);
        return;
      case "host_finished": {
        const { host, status } = message;
        this.ensureHostSeries(repo, host);
        this.hostBuilds.inc({ repo, host, status });
        if (status !== "cancelled") this.duration.observe({ repo, host }, message.durationMs / 1000);
        this.lastBuild.set({ repo }, this.nowSeconds());
        if (status === "success") {
          this.lastSuccess.set({ repo }, this.nowSeconds());
          this.setHostSuccess(repo, host, this.nowSeconds());
        }
        if (message.copy) {
          for (const result of ["success", "failure"]) this.copies.inc({ repo, result }, 0);
          this.copies.inc({ repo, result: message.copy.ok ? "success" : "failure" });
        }
        this.changed();
        return;
      }
      case "resumed":
        this.resumed.inc();
        return;
      case "completed":
        this.builds.inc({ repo, status: message.status });
        this.lastBuild.set({ repo }, this.nowSeconds());
        this.changed();
        return;
      default:
        return;
    }
  }

  private onQueue(depth: number, running: Job | null): void {
    this.queueDepth.set(depth);
    if ((running?.id ?? null) === this.runningJobId) return;
    this.runningJobId = running?.id ?? null;
    this.runningSince.reset();
    this.running.set(running ? 1 : 0);
    if (!running) return;
    const startedAt = running.startedAt ?? this.now();
    const { repo, target } = running.spec;
    this.runningSince.set({ repo, target }, startedAt / 1000);
    this.queueWait.observe({ repo }, Math.max(0, startedAt - running.enqueuedAt) / 1000);
  }

  private setHostSuccess(repo: string, host: string, at: number): void {
    this.hostLastSuccess.set({ repo, host }, at);
    const hosts = this.hostsWithSuccess.get(repo) ?? new Set<string>();
    hosts.add(host);
    this.hostsWithSuccess.set(repo, hosts);
  }

  private dropHostsExcept(repo: string, keep: readonly string[]): void {
    const hosts = this.hostsWithSuccess.get(repo);
    if (!hosts) return;
    let dropped = false;
    for (const host of [...hosts]) {
      if (keep.includes(host)) continue;
      this.hostLastSuccess.remove({ repo, host });
      hosts.delete(host);
      dropped = true;
    }
    if (dropped) this.changed();
  }

  private ensureHostSeries(repo: string, host: string): void {
    for (const status of HostStatusSchema.options) this.hostBuilds.inc({ repo, host, status }, 0);
  }

  private nowSeconds(): number {
    return this.now() / 1000;
  }

  private changed(): void {
    for (const listener of this.changeListeners) listener();
  }
}
