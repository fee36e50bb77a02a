/**
 * The deploy listener: takes deploy requests for this host from NATS
 * (`deploy.<tier>.<host>`, `.all`, `.role.<role>`), answers
 * `deploy.discover`, and runs one deploy at a time — fetch (or build) the
 * system, activate it, check health, roll back when that fails — telling
 * the requester each step through the shared responder (seq numbers,
 * resends around NATS outages). A failed deploy is a `completed` answer,
 * never an exception.
 *
 * The deploy in flight is saved (src/listener/in-flight.ts) before
 * `accepted` and at every step, so a listener killed during its own switch
 * answers the requester after its restart (`resumed`, then the rest).
 */
import { randomBytes } from "node:crypto";
import { realpath } from "node:fs/promises";
import type { Msg } from "nats";
import {
  DEPLOY_DISCOVER_SUBJECT,
  DEPLOY_NUMBERING,
  DeployDiscoverRequestSchema,
  DeployRequestSchema,
  classifyDeploySubject,
  deploySubject,
  isSystemOfHost,
  isValidDeployReplySubject,
  type DeployAction,
  type DeployCompleted,
  type DeployDiscoverResponse,
  type DeployError,
  type DeployRejectCode,
  type DeployRejected,
  type DeployResponse,
  type DeployStatus,
} from "../deploy-protocol.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Changes } from "../protocol.js";
import { isStorePathIn } from "../store-path.js";
import { Responder, type Conversation } from "../nats/responder.js";
import type { NatsTransport } from "../nats/transport.js";
import type { NixStore } from "../nix/store.js";
import { ProgressThrottle } from "../nix/progress.js";
import type { NixProgress } from "../nix/log.js";
import { LogThrottle } from "../util/log-throttle.js";
import { parseRequestBody } from "../util/json.js";
import type { Activation, Step } from "./activation.js";
import { deployCutSteps } from "./fit-payload.js";
import { checkHealth } from "./health.js";
import type { InFlight, InFlightStore } from "./in-flight.js";
import type { ListenerMetrics } from "./metrics.js";
import { rebootRequired } from "./system.js";

/** nix can report thousands of changes a second; requesters need a few. */
const PROGRESS_INTERVAL_MS = 1_000;
const CHANGES_TIMEOUT_MS = 60_000;

export interface ListenerOptions {
  host: string;
  tier: string;
  roles: readonly string[];
  repo: { name: string; url: string };
  /** The store nix uses here: a requested toplevel must be in it. */
  storeDir: string;
  version: string;
  rollback: boolean;
  health: { commands: string[][]; timeout: number; confirmTimeout: number };
  /** A `heartbeat` to the running deploy's requesters this often. */
  heartbeatInterval: number;
  /** The listener's own unit file: when a deploy changes where it resolves to, `onUnitChanged` runs after the final answer. */
  selfUnit?: string | undefined;
  transport: NatsTransport;
  activation: Activation;
  store: NixStore;
  inFlight: InFlightStore;
  metrics: ListenerMetrics;
  logger: Logger;
  onUnitChanged?: () => void;
}

/** A message before the responder numbers it. */
type Unnumbered<T> = T extends unknown ? Omit<T, "seq" | "deployId" | "host"> : never;
type Outgoing = Unnumbered<Exclude<DeployResponse, DeployRejected>>;

interface Outcome {
  status: DeployStatus;
  error?: DeployError;
}

class Deploy implements Conversation {
  /** The closure comparison with the previous system, started with the switch (see startChanges). */
  changes: Promise<Changes | null> | undefined;

  constructor(public record: InFlight) {}

  get seq(): number {
    return this.record.seq;
  }

  set seq(seq: number) {
    this.record.seq = seq;
  }

  get requesters(): readonly string[] {
    return this.record.requesters;
  }
}

export class Listener {
  private readonly responder: Responder<DeployResponse, Deploy>;
  private readonly ignoredLog: LogThrottle;
  private running: Deploy | undefined;
  private stopping = false;
  private unitAtStart: string | null = null;
  private work: Promise<void> = Promise.resolve();

  constructor(private readonly options: ListenerOptions) {
    this.ignoredLog = new LogThrottle(options.logger, 60_000, 10);
    this.responder = new Responder<DeployResponse, Deploy>({ transport: options.transport, logger: options.logger, numbering: DEPLOY_NUMBERING, cutSteps: deployCutSteps });
  }

  /** The subjects this listener takes requests on. */
  subjects(): string[] {
    const { tier, host, roles } = this.options;
    return [
      deploySubject(tier, { kind: "host", host }),
      deploySubject(tier, { kind: "all" }),
      ...roles.map((role) => deploySubject(tier, { kind: "role", role })),
      DEPLOY_DISCOVER_SUBJECT,
    ];
  }

  /**
   * Subscribes (the transport sends the subscriptions once connected) and
   * takes up a deploy a killed listener left in flight.
   */
  async start(): Promise<void> {
    if (this.options.selfUnit) this.unitAtStart = await realpath(this.options.selfUnit).catch(() => null);
    for (const subject of this.subjects()) this.options.transport.subscribe(subject, (msg) => this.onMessage(msg));
    this.responder.startHeartbeats(this.options.heartbeatInterval, () => {
      if (this.running) this.send(this.running, { type: "heartbeat", phase: this.running.record.phase });
    });
    const saved = await this.options.inFlight.load();
    if (saved.status === "unusable") this.options.logger.error({ why: saved.why }, "cannot take up the deploy in flight; it is left unanswered");
    if (saved.status === "found") {
      const deploy = new Deploy(saved.deploy);
      this.running = deploy;
      this.work = this.resume(deploy);
    }
    await this.refreshRebootMetric();
  }

  /** Takes no new deploys; waits for the one running (its final answer is what the requester waits for). */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.work;
    this.responder.stop();
  }

  get busy(): string | null {
    return this.running?.record.deployId ?? null;
  }

  private onMessage(msg: Msg): void {
    if (!isValidDeployReplySubject(msg.reply)) {
      this.options.metrics.ignoredRequest();
      this.ignoredLog.warn("reply", { subject: msg.subject, reply: msg.reply ?? null }, "ignored a request whose reply subject is not under deploy.responses.");
      return;
    }
    const kind = classifyDeploySubject(msg.subject);
    if (kind.kind === "discover") {
      void this.discover(msg.reply, msg.data);
    } else if (kind.kind === "deploy" && kind.tier === this.options.tier) {
      this.request(msg.reply, msg.data);
    }
  }

  private async discover(reply: string, data: Uint8Array): Promise<void> {
    const body = parseRequestBody(data, DeployDiscoverRequestSchema, "nothing");
    if (!body.ok) {
      this.reject(reply, "invalid_request", body.error);
      return;
    }
    const { activation, host, tier, roles, repo, version } = this.options;
    const [current, booted] = await Promise.all([activation.current(), activation.booted()]);
    const answer: DeployDiscoverResponse = {
      type: "discover",
      host,
      tier,
      roles: [...roles],
      repo: { ...repo },
      current,
      booted,
      rebootRequired: await rebootRequired(current, booted),
      busy: this.busy,
      version,
    };
    this.responder.answer(reply, answer);
  }

  private request(reply: string, data: Uint8Array): void {
    const body = parseRequestBody(data, DeployRequestSchema, '{"action": "switch"|"boot"|"test"|"dry-activate", "ref"?: "<branch>", "toplevel"?: "<store path>"} or nothing');
    if (!body.ok) return this.reject(reply, "invalid_request", body.error);
    const { action, ref, toplevel } = body.value;
    const { host } = this.options;
    if (toplevel !== undefined && !isStorePathIn(toplevel, this.options.storeDir)) {
      return this.reject(reply, "invalid_request", `${toplevel} is not in this host's Nix store (${this.options.storeDir}); nothing was switched`);
    }
    if (toplevel !== undefined && !isSystemOfHost(toplevel, host)) {
      return this.reject(reply, "wrong_host", `${toplevel} is not a NixOS system of ${host} (expected nixos-system-${host}-…); nothing was switched`);
    }
    if (this.stopping) return this.reject(reply, "shutting_down", `the listener on ${host} is stopping`);
    if (this.running) {
      const id = this.running.record.deployId;
      return this.reject(reply, "busy", `deploy ${id} is running on ${host}`, id);
    }
    const deploy = new Deploy({
      version: 1,
      deployId: `d${randomBytes(5).toString("hex")}`,
      action,
      ref: ref ?? null,
      requested: toplevel ?? null,
      requesters: [reply],
      seq: 0,
      startedAt: Date.now(),
      phase: "preparing",
      toplevel: toplevel ?? null,
      previous: null,
      previousGeneration: null,
      generation: null,
      restarts: 0,
    });
    // Taken synchronously: a second request arriving during the save is busy.
    this.running = deploy;
    this.work = this.accept(deploy);
  }

  private async accept(deploy: Deploy): Promise<void> {
    try {
      await this.options.inFlight.save(deploy.record);
    } catch (err) {
      this.running = undefined;
      this.options.logger.error({ err: errorMessage(err), file: this.options.inFlight.file }, "cannot save the deploy; refusing it");
      this.reject(deploy.record.requesters[0] as string, "unavailable", `the listener on ${this.options.host} cannot save the deploy in its state directory: ${errorMessage(err)}`);
      return;
    }
    const { record } = deploy;
    this.options.logger.info({ deployId: record.deployId, action: record.action, toplevel: record.requested, ref: record.ref }, "deploy accepted");
    this.send(deploy, { type: "accepted", tier: this.options.tier, action: record.action, ref: record.ref, toplevel: record.requested });
    await this.finish(deploy, await this.execute(deploy));
  }

  private reject(reply: string, code: DeployRejectCode, error: string, runningDeployId?: string): void {
    const message: DeployRejected = { type: "rejected", host: this.options.host, code, error, ...(runningDeployId ? { runningDeployId } : {}) };
    this.responder.answer(reply, message, { resend: true });
    this.options.logger.info({ code, error }, "deploy request rejected");
  }

  private send(deploy: Deploy, message: Outgoing): void {
    const full = { ...message, seq: 0, deployId: deploy.record.deployId, host: this.options.host } as DeployResponse;
    this.responder.send(deploy, full);
  }

  private async save(deploy: Deploy, changes: Partial<InFlight>): Promise<void> {
    Object.assign(deploy.record, changes);
    // A deploy already under way goes on when its state cannot be saved: it
    // only loses the answer after a restart, which stopping would lose too.
    await this.options.inFlight.save(deploy.record).catch((err: unknown) =>
      this.options.logger.error({ err: errorMessage(err), deployId: deploy.record.deployId }, "cannot save the deploy's progress"),
    );
  }

  // --- One deploy, step by step ---------------------------------------------

  private async execute(deploy: Deploy): Promise<Outcome> {
    const { record } = deploy;
    const { activation } = this.options;
    const prebuilt = record.requested !== null;
    this.send(deploy, { type: "started", action: record.action, toplevel: record.requested, prebuilt });
    const started = Date.now();
    const progress = new ProgressThrottle(PROGRESS_INTERVAL_MS, (snapshot) =>
      this.send(deploy, { type: "progress", phase: prebuilt ? "fetching" : "building", elapsedMs: Date.now() - started, ...snapshot }),
    );
    const onProgress = (p: NixProgress) => progress.update(p);
    const fetched = record.requested !== null ? await activation.fetch(record.requested, onProgress) : await activation.build(record.ref, onProgress);
    progress.flush();
    if (!fetched.ok) return { status: "failure", error: fetched.error };
    const system = await activation.checkSystem(fetched.value);
    if (!system.ok) return { status: "failure", error: system.error };
    const [previous, previousGeneration] = await Promise.all([activation.current(), activation.generation()]);
    // Saved by activate's first save, before anything changes.
    Object.assign(deploy.record, { toplevel: fetched.value, previous, previousGeneration });
    return this.activate(deploy, fetched.value);
  }

  private async activate(deploy: Deploy, toplevel: string): Promise<Outcome> {
    const { action } = deploy.record;
    const { activation } = this.options;
    let generation: number | null = null;
    if (action === "switch" || action === "boot") {
      // The profile changes: a restart from here on rolls back.
      await this.save(deploy, { phase: "activating" });
      const set = await activation.setProfile(toplevel);
      if (!set.ok) return { status: "failure", error: set.error };
      generation = set.value;
    }
    this.send(deploy, { type: "activating", action, toplevel, previous: deploy.record.previous, generation });
    // One save before the switch, after `activating`: a restart during the
    // switch numbers its answers after that message.
    await this.save(deploy, { phase: action === "dry-activate" ? deploy.record.phase : "activating", generation });
    const switching = activation.switchTo(toplevel, action);
    this.startChanges(deploy);
    const switched = await switching;
    if (!switched.ok) return action === "dry-activate" ? { status: "failure", error: switched.error } : this.rollback(deploy, switched.error);
    if (action === "boot" || action === "dry-activate") return { status: "success" };
    return this.check(deploy);
  }

  /** After switch/test: health commands and NATS again, counted from the end of the switch. */
  private async check(deploy: Deploy): Promise<Outcome> {
    // Beside the checks, not before: a restart treats "activating" with the
    // new system running as it treats "checking" (the checks run again).
    const saved = this.save(deploy, { phase: "checking" });
    const { health, activation, transport } = this.options;
    const report = await checkHealth({
      activation,
      commands: health.commands,
      timeoutMs: health.timeout,
      confirmTimeoutMs: health.confirmTimeout,
      confirmNats: () => transport.flushConnected(),
    });
    await saved;
    this.send(deploy, { type: "health", ok: report.ok, checks: report.checks, natsConfirmed: report.natsConfirmed });
    if (report.ok) return { status: "success" };
    const failed = report.checks.find((c) => !c.ok);
    const error: DeployError = failed
      ? { code: "health_failed", message: `health command ${failed.argv.join(" ")} failed`, ...(failed.error ? { cause: failed.error } : {}) }
      : { code: "nats_unconfirmed", message: `NATS was not reached again within ${Math.round(health.confirmTimeout / 1000)}s of the switch` };
    return this.rollback(deploy, error);
  }

  private async rollback(deploy: Deploy, error: DeployError): Promise<Outcome> {
    if (!this.options.rollback) return { status: "failure", error };
    this.options.logger.warn({ deployId: deploy.record.deployId, code: error.code, error: error.message }, "rolling back");
    const restored = await this.restorePrevious(deploy);
    if (restored.ok) return { status: "rolled_back", error };
    return {
      status: "failure",
      error: { code: "rollback_failed", message: `${error.message}; rolling back failed too: ${restored.error.message}`, cause: restored.error.cause ?? error.cause },
    };
  }

  /**
   * Re-activates what ran before: for switch and boot the profile's
   * previous generation (switched back to, then its own
   * switch-to-configuration), for test the previous system, with `test`.
   */
  private async restorePrevious(deploy: Deploy): Promise<Step<void>> {
    const { action, previous, previousGeneration } = deploy.record;
    const { activation } = this.options;
    if ((action === "switch" || action === "boot") && previousGeneration !== null) {
      const back = await activation.switchGeneration(previousGeneration);
      if (!back.ok) return back;
      const target = await activation.profileSystem();
      if (target === null) return { ok: false, error: { code: "rollback_failed", message: `generation ${previousGeneration} of the system profile is not a system` } };
      return this.rollbackSwitch(target, action);
    }
    if (previous === null) return { ok: false, error: { code: "rollback_failed", message: "no previous system to go back to" } };
    return this.rollbackSwitch(previous, action === "test" ? "test" : action);
  }

  private async rollbackSwitch(system: string, action: DeployAction): Promise<Step<void>> {
    const switched = await this.options.activation.switchTo(system, action);
    if (switched.ok) return switched;
    return { ok: false, error: { ...switched.error, code: "rollback_failed" } };
  }

  /** The final answer, metrics, and the state file removed. */
  private async finish(deploy: Deploy, outcome: Outcome): Promise<void> {
    const { record } = deploy;
    const { activation, metrics, logger } = this.options;
    const [current, booted, generation] = await Promise.all([activation.current(), activation.booted(), activation.generation()]);
    const toplevel = record.toplevel;
    const reboot =
      record.action === "boot" && outcome.status === "success"
        ? toplevel !== current
        : await rebootRequired(record.action === "dry-activate" ? toplevel : current, booted);
    // Awaited on failure too, so that no nix process outlives the deploy.
    const compared = outcome.status === "failure" ? await deploy.changes : await this.startChanges(deploy);
    const changes = outcome.status === "failure" ? null : (compared ?? null);
    const completed: Unnumbered<DeployCompleted> = {
      type: "completed",
      action: record.action,
      status: outcome.status,
      toplevel,
      previous: record.previous,
      generation: record.action === "switch" || record.action === "boot" ? generation : record.generation,
      rebootRequired: reboot,
      changes,
      durationMs: Math.max(0, Date.now() - record.startedAt),
      ...(outcome.error ? { error: outcome.error } : {}),
    };
    this.send(deploy, completed);
    const log = outcome.status === "success" ? logger.info.bind(logger) : logger.warn.bind(logger);
    log({ deployId: record.deployId, action: record.action, status: outcome.status, toplevel, error: outcome.error ?? null }, "deploy finished");
    metrics.deployFinished(record.action, outcome.status);
    await this.options.inFlight.clear().catch((err: unknown) => logger.error({ err: errorMessage(err) }, "cannot remove the finished deploy's state file"));
    this.running = undefined;
    await this.refreshRebootMetric();
    await this.checkOwnUnit();
  }

  /**
   * The closure comparison for the final answer, started with the switch so
   * that it runs beside the switch and the health checks instead of after
   * them (it only reads the store). Not earlier: beside nix-env --set it
   * slowed that by as much as it saved (two cores).
   */
  private startChanges(deploy: Deploy): Promise<Changes | null> | undefined {
    const { toplevel, previous } = deploy.record;
    if (deploy.changes === undefined && toplevel !== null && previous !== null) deploy.changes = this.changes(previous, toplevel);
    return deploy.changes;
  }

  private async changes(previous: string, toplevel: string): Promise<Changes | null> {
    const changes = await this.options.store.changes(previous, toplevel, null, CHANGES_TIMEOUT_MS);
    if (changes.ok) return changes.value;
    this.options.logger.warn({ err: changes.error }, "cannot compare the closure with the previous system; reporting no changes");
    return null;
  }

  private async refreshRebootMetric(): Promise<void> {
    const { activation, metrics } = this.options;
    const [current, booted] = await Promise.all([activation.current(), activation.booted()]);
    metrics.setRebootRequired(await rebootRequired(current, booted));
  }

  /** The new system changed the listener's own unit: exit after the answer, so systemd starts the new version. */
  private async checkOwnUnit(): Promise<void> {
    const { selfUnit, onUnitChanged, logger } = this.options;
    if (!selfUnit || !onUnitChanged) return;
    const now = await realpath(selfUnit).catch(() => null);
    if (now === this.unitAtStart) return;
    logger.info({ unit: selfUnit, before: this.unitAtStart, now }, "the deploy changed the listener's own unit; exiting so that systemd starts the new version");
    onUnitChanged();
  }

  // --- After a restart --------------------------------------------------------

  /**
   * A deploy a killed listener left: if the system it activates runs, the
   * health checks follow; otherwise the switch counts as failed and is
   * rolled back. A deploy cut short before anything changed fails.
   */
  private async resume(deploy: Deploy): Promise<void> {
    const { record } = deploy;
    const { activation, logger } = this.options;
    const current = await activation.current();
    const activated = record.toplevel !== null && current === record.toplevel;
    logger.info({ deployId: record.deployId, phase: record.phase, activated }, "taking up the deploy a stopped listener left");
    this.send(deploy, { type: "resumed", activated });
    await this.save(deploy, { restarts: record.restarts + 1 });
    await this.finish(deploy, await this.resumed(deploy, activated));
  }

  private async resumed(deploy: Deploy, activated: boolean): Promise<Outcome> {
    const { phase, action, toplevel } = deploy.record;
    const interrupted = (message: string): DeployError => ({ code: "interrupted", message });
    if (phase === "preparing" || toplevel === null || action === "dry-activate") {
      return { status: "failure", error: interrupted(`the listener was stopped during the deploy's ${phase === "preparing" ? "fetch or build" : "dry activation"}; nothing was switched`) };
    }
    if (action === "boot") {
      // Running switch-to-configuration boot again is harmless: it rewrites the boot entries.
      const switched = await this.options.activation.switchTo(toplevel, "boot");
      return switched.ok ? { status: "success" } : this.rollback(deploy, switched.error);
    }
    if (activated) return this.check(deploy);
    return this.rollback(deploy, interrupted(`the listener was stopped during switch-to-configuration ${action} and ${toplevel} is not running`));
  }
}
