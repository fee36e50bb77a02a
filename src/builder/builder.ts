/**
 * The builder: takes requests from `build.>`, validates them, queues them
 * and runs one job at a time, answering each requester on its own reply
 * subject under `build.responses.>` (the only subjects the plan's
 * permissions let it publish to).
 */
import type { Msg } from "nats";
import { repoNamed, type Config } from "../config.js";
import { Control } from "./control.js";
import type { EventBus } from "../events.js";
import type { HostCatalog } from "./catalog.js";
import { JobRunner } from "./job-runner.js";
import { completedMessage, endedEarly } from "./outcome.js";
import type { Logger } from "../logger.js";
import { LogThrottle } from "../util/log-throttle.js";
import { withinMs } from "../util/within.js";
import { supportsRef, type NixRunner } from "../nix/runner.js";
import {
  ALL_HOSTS,
  BuildRequestSchema,
  RESPONSE_PREFIX,
  CONTROL_NAMES,
  classifySubject,
  isValidHostName,
  isValidRepoName,
  isValidReplySubject,
  type BuildRequest,
  type CancelResponse,
  type ControlName,
  type Rejected,
  type RepoInfo,
  type StatusResponse,
} from "../protocol.js";
import type { Job } from "../job.js";
import { JobQueue } from "./queue.js";
import { parseBody, rejection, type ParsedBody } from "./request-body.js";
import { BuildResponder } from "./responder.js";
import { JobRecovery } from "./recovery.js";
import type { ToplevelCache } from "../nix/toplevel-cache.js";
import type { NatsTransport } from "../nats/transport.js";
import type { Keeper } from "./keep/keeper.js";
import type { BuildHistory } from "./keep/history.js";

export interface BuilderOptions {
  config: Config;
  transport: NatsTransport;
  nix: NixRunner;
  catalog: HostCatalog;
  events: EventBus;
  logger: Logger;
  version: string;
  builderName: string;
  toplevels: ToplevelCache;
  keeper: Keeper;
  history: BuildHistory;
  /** Told after every write of jobs.json: undefined when it worked, else why it failed. */
  onJobsSaved?: (error: string | undefined) => void;
}

type Validated = { ok: true; repo: string; target: string; ref: string | null } | { ok: false; rejection: Rejected };

const SHUTTING_DOWN = "the builder is shutting down; try again shortly";
/** Longest a request waits for the host list: well inside a client's 10 s ack timeout. */
const HOST_CHECK_MS = 3_000;

export class Builder {
  private readonly queue: JobQueue;
  private readonly responder: BuildResponder;
  private readonly runner: JobRunner;
  private readonly control: Control;
  private readonly dropLog: LogThrottle;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private readonly recovery: JobRecovery;

  constructor(private readonly options: BuilderOptions) {
    const { config, transport, events, logger, nix, catalog, toplevels, keeper } = options;
    this.queue = new JobQueue({ maxQueue: config.build.maxQueue, stateDir: config.stateDir, logger, ...(options.onJobsSaved ? { onSaved: options.onJobsSaved } : {}) });
    this.responder = new BuildResponder(transport, events, logger);
    this.runner = new JobRunner({ config, nix, catalog, responder: this.responder, events, logger, toplevels, keeper, queue: this.queue });
    this.recovery = new JobRecovery({ config, queue: this.queue, responder: this.responder, logger });
    this.control = new Control({
      config,
      catalog,
      version: options.version,
      builderName: options.builderName,
      jobs: () => ({ running: this.queue.running, queued: this.queue.queued, positionOf: (i) => this.queue.positionOf(i) }),
      cancel: (jobId) => this.cancel(jobId),
      history: (repo, host) => options.history.entries(repo, host),
    });
    this.dropLog = new LogThrottle(logger, 60_000, 10);
  }

  /** What `build.status` answers, for readers in this process (the status page). */
  status(): StatusResponse {
    return this.control.statusNow();
  }

  /** Each repo's host list as the catalog has it, without starting a fetch. */
  repos(): RepoInfo[] {
    return this.control.repos();
  }

  /** Takes up the saved queue first (in its order), then listens for requests. */
  async start(): Promise<void> {
    const { transport, config } = this.options;
    const { jobs, saved } = await this.recovery.restore();
    for (const job of jobs) this.queue.restore(job);
    this.recovery.announce(this.queue.queued.map((job, index) => ({ job, position: this.queue.positionOf(index) })));
    // What was answered here (or cut short once more) must not come back at the next start.
    if (saved > 0) await this.queue.save();
    // Builds go through the queue group (one builder takes each request);
    // control requests reach every builder, so that each reports its own
    // jobs and the one holding a job is the one that cancels it.
    transport.subscribe("build.>", (msg) => this.handle(msg, "builds"), config.nats.queueGroup);
    for (const name of CONTROL_NAMES) transport.subscribe(`build.${name}`, (msg) => this.handle(msg, "control"));
    this.loop = this.runLoop();
    this.responder.startHeartbeats(config.build.heartbeatInterval, () => this.sendHeartbeats());
  }

  /**
   * Stops taking requests and stops the running nix tree. With
   * `build.resume` the queue is saved and every requester told
   * `interrupted`: the next start resumes it. Without, every requester is
   * answered `cancelled`.
   */
  async stop(why = "the builder is shutting down"): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.responder.stopHeartbeats();
    if (this.options.config.build.resume) {
      const running = this.queue.running;
      const queued = this.queue.suspend();
      for (const job of [running, ...queued]) if (job) job.interrupted = true;
      running?.cancel(why);
      this.options.catalog.stop();
      await this.loop;
      await this.recovery.interrupt(running, queued, why);
    } else {
      for (const job of this.queue.close()) this.completeUnstarted(job, why);
      this.queue.running?.cancel(why);
      this.options.catalog.stop();
      await this.loop;
      await this.queue.save().catch((err: unknown) => this.options.logger.error({ err }, "cannot save the job queue"));
    }
    this.responder.stop();
    await Promise.all([this.options.toplevels.flush(), this.options.keeper.flush(), this.queue.flush()]);
  }

  /**
   * Entry point for every message under `build.>`. Never throws. `via`
   * says which subscription delivered it: the `build.>` one also sees
   * control subjects, which the control subscriptions answer instead.
   */
  handle(msg: Msg, via: "builds" | "control"): void {
    // Answers (other builders' ones: our own are not echoed, see noEcho in
    // the daemon) share build.>: dropped before anything else is looked at.
    if (msg.subject.startsWith(RESPONSE_PREFIX)) return;
    const kind = classifySubject(msg.subject);
    if (kind.kind === "response") return;
    if (via === "builds" && kind.kind === "control") return;
    if (!isValidReplySubject(msg.reply)) {
      this.dropLog.warn(
        "dropped",
        { subject: msg.subject, reply: msg.reply || null },
        "dropping a request without a reply subject under build.responses. (it cannot be answered)",
      );
      return;
    }
    const reply = msg.reply;
    if (kind.kind === "invalid") {
      this.responder.reject(msg.subject, reply, rejection("invalid_name", kind.reason).rejection);
      return;
    }
    const work =
      kind.kind === "control"
        ? this.onControl(kind.name, reply, msg.data)
        : this.onBuildRequest(msg.subject, reply, kind.repo, kind.target, msg.data);
    work.catch((err: unknown) => {
      this.options.logger.error({ err, subject: msg.subject }, "unexpected error while handling a request");
      this.responder.reject(msg.subject, reply, rejection("unavailable", "internal error; see the builder's log").rejection);
    });
  }

  private async onControl(name: ControlName, reply: string, data: Uint8Array): Promise<void> {
    const answer = await this.control.answer(name, data);
    if (answer.type === "rejected") this.responder.reject(`build.${name}`, reply, answer);
    else this.responder.control(reply, answer);
  }

  private cancel(jobId: string): CancelResponse["outcome"] | undefined {
    const queued = this.queue.remove(jobId);
    if (queued) {
      this.completeUnstarted(queued, "cancelled on request before it started");
      this.options.logger.info({ jobId }, "queued job cancelled on request");
      this.emitQueue();
      return "removed";
    }
    const running = this.queue.running;
    if (running?.id !== jobId) return undefined;
    running.cancel("cancelled on request");
    this.options.logger.info({ jobId, host: running.currentHost }, "running job cancelled on request; stopping nix");
    return "stopping";
  }

  private async onBuildRequest(subject: string, reply: string, repo: string, target: string, data: Uint8Array) {
    const validated = await this.validate(repo, target, data);
    if (!validated.ok) {
      this.responder.reject(subject, reply, validated.rejection);
      return;
    }
    if (this.stopping) {
      this.responder.reject(subject, reply, rejection("shutting_down", SHUTTING_DOWN).rejection);
      return;
    }
    const spec = { repo: validated.repo, target: validated.target, ref: validated.ref };
    // Accepted means saved: the queue acknowledges once the job is on disk,
    // and until then the requester hears nothing of the job.
    const result = await this.queue.enqueue(spec, reply, (job, position, joined) => {
      this.responder.toRequester(reply, job, { type: "accepted", jobId: job.id, ...job.spec, position, joined });
    });
    if (!result.accepted) {
      if (result.reason === "unsaved") {
        this.options.logger.error({ err: result.error, ...spec }, "cannot save the job queue; refusing the request");
        this.emitQueue();
      }
      const answer =
        result.reason === "closed"
          ? rejection("shutting_down", SHUTTING_DOWN)
          : result.reason === "queue_full"
            ? rejection("queue_full", `the queue is full (${this.options.config.build.maxQueue} jobs waiting); try again later`)
            : result.reason === "unsaved"
              ? rejection("unavailable", "the builder cannot save its job queue (see its log); nothing was queued")
              : rejection("queue_full", "too many requesters are waiting for this job");
      this.responder.reject(subject, reply, answer.rejection);
      return;
    }
    const { job, position, joined } = result;
    this.options.logger.info({ jobId: job.id, ...job.spec, position, joined }, joined ? "request joined a queued job" : "job queued");
    this.emitQueue();
  }

  private async validate(repo: string, target: string, data: Uint8Array): Promise<Validated> {
    const { config, catalog } = this.options;
    if (!isValidRepoName(repo)) return rejection("invalid_name", `invalid repo name ${JSON.stringify(repo)}`);
    const repoConfig = repoNamed(config.repos, repo);
    if (!repoConfig) {
      const known = Object.keys(config.repos);
      return rejection("unknown_repo", `unknown repo ${repo}; this builder builds ${known.join(", ")}`, known);
    }
    if (target !== ALL_HOSTS && !isValidHostName(target)) {
      return rejection("invalid_name", `invalid host name ${JSON.stringify(target)}`);
    }
    const request = parseBuildRequest(data);
    if (!request.ok) return request;
    const ref = request.value.ref ?? null;
    if (ref !== null && !supportsRef(repoConfig.url)) {
      return rejection("malformed_payload", `repo ${repo} (${repoConfig.url}) is not a git flake; it cannot build a ref`);
    }
    // With a ref the host may exist only on that branch: the default
    // branch's list cannot say no, so the build itself reports a missing host.
    if (target !== ALL_HOSTS && ref === null) {
      const lookup = await withinMs(catalog.lookup(repo, target), HOST_CHECK_MS);
      if (lookup === undefined) {
        // The host list is still being fetched (a cold start, a slow remote):
        // answer now rather than after the requester's ack timeout; a host
        // that does not exist then fails its build with nix's own message.
        this.options.logger.info({ repo, target }, "the host list is still loading; accepting the request unchecked");
        return { ok: true, repo, target, ref };
      }
      if (!lookup.found && "hosts" in lookup) {
        const list = lookup.hosts.join(", ") || "(none)";
        return rejection("unknown_host", `unknown host ${target} in repo ${repo}; its hosts are ${list}`, lookup.hosts);
      }
      // The host list itself is unavailable (repo unreachable, nix broken):
      // the build will hit the same problem and report it per host, which
      // says more than refusing here.
      if (!lookup.found) this.options.logger.warn({ repo, target, err: lookup.error }, "cannot check the host name; accepting the request");
    }
    return { ok: true, repo, target, ref };
  }

  private async runLoop(): Promise<void> {
    for (;;) {
      const job = await this.queue.take();
      if (!job) return;
      this.emitQueue();
      this.announcePositions();
      try {
        await this.runner.run(job);
      } catch (err) {
        this.options.logger.error({ err, jobId: job.id }, "job crashed");
        this.completeUnstarted(job, "internal error while building; see the builder's log", "failure");
      } finally {
        this.queue.finish(job);
        this.emitQueue();
      }
    }
  }

  /** A job that ended before any host was built: every requester still gets a final message. */
  private completeUnstarted(job: Job, error: string, status: "cancelled" | "failure" = "cancelled"): void {
    this.responder.toJob(job, completedMessage(job, endedEarly(job, { status, error, since: job.startedAt ?? Date.now() })));
  }

  /** Tells the requesters of every queued job where they stand now. */
  private announcePositions(): void {
    this.queue.queued.forEach((job, index) => {
      this.responder.toJob(job, { type: "queued", jobId: job.id, position: this.queue.positionOf(index) });
    });
  }

  private sendHeartbeats(): void {
    const running = this.queue.running;
    if (running) {
      this.responder.toJob(running, { type: "heartbeat", jobId: running.id, state: "running", position: 0, host: running.currentHost });
    }
    this.queue.queued.forEach((job, index) => {
      this.responder.toJob(job, { type: "heartbeat", jobId: job.id, state: "queued", position: this.queue.positionOf(index), host: null });
    });
  }

  private emitQueue(): void {
    this.options.events.emit({ type: "queue", depth: this.queue.depth, running: this.queue.running });
  }
}

/** Like parseBody, but a ref that fails its pattern is an invalid name, not a malformed body. */
export function parseBuildRequest(data: Uint8Array): ParsedBody<BuildRequest> {
  return parseBody(data, BuildRequestSchema, '{"ref": "<branch or commit>"} or nothing', (issue) =>
    issue.path[0] === "ref" && issue.code === "custom" ? "invalid_name" : undefined,
  );
}
