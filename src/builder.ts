/**
 * The builder: takes requests from `build.>`, validates them, queues them
 * and builds one host at a time, answering each requester on its own reply
 * subject under `build.responses.>` (the only subjects the plan's
 * permissions let it publish to).
 */
import type { Msg } from "nats";
import type { Config } from "./config.js";
import type { EventBus } from "./events.js";
import type { HostCatalog } from "./catalog.js";
import type { Logger } from "./logger.js";
import { LogThrottle } from "./log-throttle.js";
import { supportsRef, type NixRunner } from "./nix.js";
import {
  ALL_HOSTS,
  BuildRequestSchema,
  classifySubject,
  isValidHostName,
  isValidRef,
  isValidRepoName,
  isValidReplySubject,
  type BuildRequest,
  type BuildResponse,
  type Completed,
  type HostResult,
  type JobStatus,
  type RejectCode,
  type Rejected,
} from "./protocol.js";
import { JobQueue, type Job } from "./queue.js";
import type { NatsTransport } from "./transport.js";
import { boundedLogTail } from "./log-tail.js";

export interface BuilderOptions {
  config: Config;
  transport: NatsTransport;
  nix: NixRunner;
  catalog: HostCatalog;
  events: EventBus;
  logger: Logger;
}

const MAX_REQUEST_BYTES = 4096;
const decoder = new TextDecoder();

type Validated = { ok: true; repo: string; target: string; ref: string | null } | { ok: false; rejection: Rejected };

function rejection(code: RejectCode, error: string, known?: string[]): { ok: false; rejection: Rejected } {
  return { ok: false, rejection: { type: "rejected", code, error, ...(known ? { known } : {}) } };
}

export class Builder {
  private readonly queue: JobQueue;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private readonly dropLog: LogThrottle;

  constructor(private readonly options: BuilderOptions) {
    this.queue = new JobQueue(options.config.build.maxQueue);
    this.dropLog = new LogThrottle(options.logger, 60_000, 10);
  }

  get jobs(): { running: Job | null; queued: readonly Job[] } {
    return { running: this.queue.running, queued: this.queue.queued };
  }

  start(): void {
    const { transport, config } = this.options;
    transport.subscribe("build.>", (msg) => this.handle(msg), config.nats.queueGroup);
    this.loop = this.runLoop();
  }

  /**
   * Stops taking requests, answers every queued requester, stops the
   * running nix tree and waits for its job to report `cancelled`.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const reason = "the builder is shutting down";
    for (const job of this.queue.close()) this.completeUnstarted(job, reason);
    this.queue.running?.cancel(reason);
    this.options.catalog.stop();
    await this.loop;
  }

  /** Entry point for every message under `build.>`. Never throws. */
  handle(msg: Msg): void {
    const kind = classifySubject(msg.subject);
    if (kind.kind === "response") return;
    if (!isValidReplySubject(msg.reply)) {
      this.dropLog.warn(
        "dropped",
        { subject: msg.subject, reply: msg.reply || null },
        "dropping a request without a reply subject under build.responses. (it cannot be answered)",
      );
      return;
    }
    const reply = msg.reply;
    if (kind.kind === "control") {
      this.dropLog.warn("control", { subject: msg.subject }, "control requests are not supported by this builder");
      return;
    }
    if (kind.kind === "invalid") {
      this.reject(msg.subject, reply, rejection("invalid_name", kind.reason).rejection);
      return;
    }
    this.onBuildRequest(msg.subject, reply, kind.repo, kind.target, msg.data).catch((err: unknown) => {
      this.options.logger.error({ err, subject: msg.subject }, "unexpected error while handling a build request");
      this.reject(msg.subject, reply, rejection("unavailable", "internal error; see the builder's log").rejection);
    });
  }

  private async onBuildRequest(subject: string, reply: string, repo: string, target: string, data: Uint8Array) {
    const validated = await this.validate(repo, target, data);
    if (!validated.ok) {
      this.reject(subject, reply, validated.rejection);
      return;
    }
    if (this.stopping) {
      this.reject(subject, reply, rejection("shutting_down", "the builder is shutting down; try again shortly").rejection);
      return;
    }
    const spec = { repo: validated.repo, target: validated.target, ref: validated.ref };
    const result = this.queue.enqueue(spec, reply);
    if (!result.accepted) {
      const why =
        result.reason === "queue_full"
          ? `the queue is full (${this.options.config.build.maxQueue} jobs waiting); try again later`
          : result.reason === "closed"
            ? "the builder is shutting down; try again shortly"
            : "too many requesters are waiting for this job";
      this.reject(subject, reply, rejection(result.reason === "closed" ? "shutting_down" : "queue_full", why).rejection);
      return;
    }
    const { job, position, joined } = result;
    this.publish(reply, { type: "accepted", jobId: job.id, ...job.spec, position, joined }, job);
    this.options.logger.info({ jobId: job.id, ...job.spec, position, joined }, joined ? "request joined a queued job" : "job queued");
    this.emitQueue();
  }

  private async validate(repo: string, target: string, data: Uint8Array): Promise<Validated> {
    const { config, catalog } = this.options;
    if (!isValidRepoName(repo)) return rejection("invalid_name", `invalid repo name ${JSON.stringify(repo)}`);
    const repoConfig = config.repos[repo];
    if (!repoConfig) {
      const known = Object.keys(config.repos);
      return rejection("unknown_repo", `unknown repo ${repo}; this builder builds ${known.join(", ")}`, known);
    }
    if (target !== ALL_HOSTS && !isValidHostName(target)) {
      return rejection("invalid_name", `invalid host name ${JSON.stringify(target)}`);
    }
    const request = parseRequest(data);
    if (!request.ok) return request;
    const ref = request.value.ref ?? null;
    if (ref !== null && !supportsRef(repoConfig.url)) {
      return rejection("malformed_payload", `repo ${repo} (${repoConfig.url}) is not a git flake; it cannot build a ref`);
    }
    if (target !== ALL_HOSTS) {
      const lookup = await catalog.lookup(repo, target);
      if (!lookup.found && "hosts" in lookup) {
        return rejection("unknown_host", `unknown host ${target} in repo ${repo}; its hosts are ${lookup.hosts.join(", ") || "(none)"}`, lookup.hosts);
      }
      if (!lookup.found) return rejection("unavailable", `cannot check host ${target} of repo ${repo}: ${lookup.error}`);
    }
    return { ok: true, repo, target, ref };
  }

  private reject(subject: string, reply: string, message: Rejected): void {
    this.options.transport.publish(reply, message);
    this.options.events.emit({ type: "rejected", subject, message });
    this.options.logger.info({ subject, code: message.code, error: message.error }, "request rejected");
  }

  private async runLoop(): Promise<void> {
    for (;;) {
      const job = await this.queue.take();
      if (!job) return;
      this.emitQueue();
      this.announcePositions();
      try {
        await this.runJob(job);
      } catch (err) {
        this.options.logger.error({ err, jobId: job.id }, "job crashed");
        this.completeUnstarted(job, "internal error while building; see the builder's log", "failure");
      } finally {
        this.queue.finish(job);
        this.emitQueue();
      }
    }
  }

  private async runJob(job: Job): Promise<void> {
    const { config, nix, logger } = this.options;
    const { repo, target, ref } = job.spec;
    const started = Date.now();
    const signal = job.abort.signal;
    const url = config.repos[repo]?.url as string;
    logger.info({ jobId: job.id, repo, target, ref }, "job started");

    const lock = await nix.resolveFlake(url, ref, { timeoutMs: config.build.resolveTimeout, signal });
    if (!lock.ok) {
      this.completeUnstarted(job, lock.error, job.cancelled ? "cancelled" : "failure", started);
      return;
    }
    const { lockedUrl, revision } = lock.value;
    const hosts = await this.hostsOf(job, lockedUrl, revision);
    if (!hosts.ok) {
      this.completeUnstarted(job, hosts.error, job.cancelled ? "cancelled" : "failure", started, revision);
      return;
    }

    this.send(job, { type: "job_started", jobId: job.id, ...job.spec, revision, lockedUrl, hosts: hosts.value });
    const results: HostResult[] = [];
    const total = hosts.value.length;
    for (const [i, host] of hosts.value.entries()) {
      if (job.cancelled) {
        results.push({ host, status: "cancelled", durationMs: 0, error: "not started: the job was cancelled" });
        continue;
      }
      results.push(await this.buildHost(job, lockedUrl, host, i + 1, total));
    }
    job.currentHost = null;
    const status: JobStatus = job.cancelled
      ? "cancelled"
      : results.every((r) => r.status === "success")
        ? "success"
        : "failure";
    this.complete(job, { status, revision, results, durationMs: Date.now() - started });
  }

  private async hostsOf(job: Job, lockedUrl: string, revision: string | null) {
    const { repo, target, ref } = job.spec;
    if (target !== ALL_HOSTS) return { ok: true as const, value: [target] };
    const { config, nix, catalog, logger } = this.options;
    const listed = await nix.listHosts(lockedUrl, { timeoutMs: config.build.resolveTimeout, signal: job.abort.signal });
    if (!listed.ok) return listed;
    const valid = listed.value.filter(isValidHostName);
    const skipped = listed.value.filter((h) => !isValidHostName(h));
    if (skipped.length > 0) logger.warn({ repo, skipped }, "skipping hosts whose names cannot be requested");
    if (ref === null) catalog.record(repo, { hosts: valid, revision, fetchedAt: Date.now() });
    if (valid.length === 0) return { ok: false as const, error: `repo ${repo} has no nixosConfigurations to build` };
    return { ok: true as const, value: valid };
  }

  private async buildHost(job: Job, lockedUrl: string, host: string, index: number, total: number): Promise<HostResult> {
    const { config, nix, logger } = this.options;
    job.currentHost = host;
    this.send(job, { type: "host_started", jobId: job.id, host, index, total, startedAt: new Date().toISOString() });
    logger.info({ jobId: job.id, repo: job.spec.repo, host, index, total }, "building host");
    const build = await nix.buildHost(lockedUrl, host, { timeoutMs: config.build.timeout, signal: job.abort.signal });
    const result: HostResult = {
      host,
      status: build.status,
      durationMs: build.durationMs,
      ...(build.storePath ? { storePath: build.storePath } : {}),
      ...(build.error ? { error: build.error } : {}),
    };
    const logTail = build.status === "success" || !build.logTail ? undefined : boundedLogTail(build.logTail);
    this.send(job, { type: "host_finished", jobId: job.id, index, total, ...result, ...(logTail ? { logTail } : {}) });
    const level = build.status === "success" ? "info" : "warn";
    logger[level]({ jobId: job.id, repo: job.spec.repo, host, status: build.status, durationMs: build.durationMs, error: build.error }, "host finished");
    return result;
  }

  /** A job that ended before any host was built: every requester still gets a final message. */
  private completeUnstarted(job: Job, error: string, status: JobStatus = "cancelled", started = Date.now(), revision: string | null = null) {
    const { target } = job.spec;
    const hostStatus = status === "cancelled" ? "cancelled" : "failure";
    const results: HostResult[] = target === ALL_HOSTS ? [] : [{ host: target, status: hostStatus, durationMs: 0, error }];
    this.complete(job, { status, revision, results, durationMs: Date.now() - started, error });
  }

  private complete(job: Job, outcome: Pick<Completed, "status" | "revision" | "results" | "durationMs" | "error">): void {
    const message: Completed = { type: "completed", jobId: job.id, ...job.spec, ...outcome };
    if (message.error === undefined) delete message.error;
    this.send(job, message);
    this.options.logger.info(
      { jobId: job.id, ...job.spec, status: outcome.status, revision: outcome.revision, durationMs: outcome.durationMs, error: outcome.error },
      "job completed",
    );
  }

  /** Tells the requesters of every queued job where they stand now. */
  private announcePositions(): void {
    this.queue.queued.forEach((job, index) => {
      this.send(job, { type: "queued", jobId: job.id, position: this.queue.positionOf(index) });
    });
  }

  private send(job: Job, message: BuildResponse): void {
    for (const reply of job.requesters) this.options.transport.publish(reply, message);
    this.options.events.emit({ type: "response", job, message });
  }

  private publish(reply: string, message: BuildResponse, job: Job): void {
    this.options.transport.publish(reply, message);
    this.options.events.emit({ type: "response", job, message });
  }

  private emitQueue(): void {
    this.options.events.emit({ type: "queue", depth: this.queue.depth, running: this.queue.running });
  }
}

type Parsed = { ok: true; value: BuildRequest } | { ok: false; rejection: Rejected };

/** An empty body means "the default branch"; anything else must be `{"ref": "..."}`. */
export function parseRequest(data: Uint8Array): Parsed {
  if (data.length > MAX_REQUEST_BYTES) return rejection("malformed_payload", `request body too large (${data.length} bytes, at most ${MAX_REQUEST_BYTES})`);
  const text = decoder.decode(data).trim();
  if (text.length === 0) return { ok: true, value: {} };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return rejection("malformed_payload", 'request body is not JSON; send nothing, or {"ref": "<branch or commit>"}');
  }
  const parsed = BuildRequestSchema.safeParse(json);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0];
  if (issue?.path[0] === "ref" && typeof (json as { ref?: unknown }).ref === "string" && !isValidRef((json as { ref: string }).ref)) {
    return rejection("invalid_name", `invalid ref ${JSON.stringify((json as { ref: string }).ref)}: ${issue.message}`);
  }
  const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
  return rejection("malformed_payload", `malformed request body: ${where}${issue?.message ?? "invalid"}; expected {"ref": "<branch or commit>"} or nothing`);
}
