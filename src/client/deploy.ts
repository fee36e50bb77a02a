/**
 * The deployer: finds the addressed listeners (`deploy.discover`), looks up
 * what the builder built for each (`build.history`), sends the deploy
 * requests and follows every listener's answers to the final one, per host
 * in `seq` order. Answers are gathered with the shared gatherer
 * (gather.ts); ordering is SeqOrder's, as for a build.
 *
 * Prebuilt (the default): one request per host on `deploy.<tier>.<host>`,
 * each with that host's own toplevel; a host the builder never built gets a
 * request without one (the listener evaluates it). Evaluated on the hosts
 * (`prebuilt: false`): one request on `deploy.<tier>.all` or `.role.<r>`,
 * answered by every listener addressed.
 */
import type { NatsConnection } from "nats";
import {
  ALL_TARGET,
  ROLE_TOKEN,
  isValidDeployHost,
  isValidTier,
  DEPLOY_DISCOVER_SUBJECT,
  DEPLOY_NUMBERING,
  DEPLOY_RESPONSE_PREFIX,
  DeployDiscoverResponseSchema,
  DeployResponseSchema,
  deploySubject,
  isFinalDeployResponse,
  type DeployAction,
  type DeployCompleted,
  type DeployDiscoverResponse,
  type DeployRejected,
  type DeployResponse,
  type DeployTarget,
} from "../deploy-protocol.js";
import { ALL_HOSTS, isValidHostName, type BuildResponse, type HistoryEntry } from "../protocol.js";
import { NoBuilderError, UsageError } from "../errors.js";
import { askEveryBuilder, gather } from "./gather.js";
import { GAP_WAIT_MS, GapWait, SeqOrder } from "./sequence.js";
import { requestBuild } from "./client.js";

/**
 * Listeners answer `deploy.discover` at once (nothing to fetch, unlike a
 * builder): wait as long after the last answer as for the builders'
 * control requests, bounded after the first.
 */
export const LISTENER_DISCOVER_GATHER = { quietMs: 300, maxAfterFirstMs: 5_000 } as const;

/** The addressed listeners of a tier, by host name. */
export function addressed(discovers: readonly DeployDiscoverResponse[], tier: string, target: DeployTarget): DeployDiscoverResponse[] {
  const byHost = new Map<string, DeployDiscoverResponse>();
  for (const d of discovers) {
    if (d.tier !== tier) continue;
    if (target.kind === "host" && d.host !== target.host) continue;
    if (target.kind === "role" && !d.roles.includes(target.role)) continue;
    byHost.set(d.host, d);
  }
  return [...byHost.values()].sort((a, b) => a.host.localeCompare(b.host));
}

export interface AskOptions {
  ackTimeoutMs: number;
  signal?: AbortSignal | undefined;
  onInvalid?: ((raw: string) => void) | undefined;
}

/**
 * Every listener's `deploy.discover` answer (all tiers). Rejects with
 * NoBuilderError (no listener) like any gather. With `only` (one host of a
 * tier) it stops as soon as that listener has answered.
 */
export async function discoverListeners(
  nc: NatsConnection,
  options: AskOptions & { only?: { tier: string; host: string } | undefined; onListener?: ((listener: DeployDiscoverResponse) => void) | undefined },
): Promise<DeployDiscoverResponse[]> {
  const { only } = options;
  return gather(
    nc,
    { subject: DEPLOY_DISCOVER_SUBJECT, replyPrefix: DEPLOY_RESPONSE_PREFIX, schema: DeployDiscoverResponseSchema, responders: "listener" },
    {
      ackTimeoutMs: options.ackTimeoutMs,
      signal: options.signal,
      onInvalid: options.onInvalid,
      onAnswer: options.onListener,
      ...LISTENER_DISCOVER_GATHER,
      complete: only ? (answers) => answers.some((a) => a.tier === only.tier && a.host === only.host) : undefined,
    },
  );
}

/** The builder's newest successful build of a host: of the default branch, or of `ref`. */
export interface Built {
  toplevel: string;
  revision: string | null;
  ref: string | null;
  finishedAt: string;
}

export function newestBuild(entries: readonly HistoryEntry[], host: string, ref: string | undefined): Built | undefined {
  const entry = entries
    .filter((e) => e.host === host && e.status === "success" && e.storePath !== undefined && e.ref === (ref ?? null))
    .sort((a, b) => b.finishedAt.localeCompare(a.finishedAt))[0];
  if (!entry) return undefined;
  return { toplevel: entry.storePath as string, revision: entry.revision, ref: entry.ref, finishedAt: entry.finishedAt };
}

/**
 * The builders' history of each repo, one `build.history` question per
 * repo, asked as soon as a discovered listener names the repo: discovery
 * waits a quiet period after the last listener's answer and the builders'
 * answers take one too, so asked one after the other they add up; asked
 * side by side a multi-host deploy and `--list` wait for one of them.
 */
export class BuilderHistories {
  private readonly asked = new Map<string, Promise<HistoryEntry[]>>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: AskOptions,
  ) {}

  /** Asks for `repo`'s history now, once; a failure surfaces in `newest`. */
  ask(repo: string): void {
    if (this.asked.has(repo)) return;
    const { ackTimeoutMs, signal, onInvalid } = this.options;
    const entries = askEveryBuilder(this.nc, "history", { repo }, { ackTimeoutMs, signal, onInvalid }).then((combined) =>
      combined.ok ? combined.answers.flatMap((a) => a.entries) : [],
    );
    // Not awaited until `newest`: a deploy that stops before then must not end on an unhandled rejection.
    entries.catch(() => undefined);
    this.asked.set(repo, entries);
  }

  /**
   * The builder's newest build of every host. A repo no builder knows has
   * no builds; no builder at all rejects with NoBuilderError.
   */
  async newest(hosts: ReadonlyArray<{ host: string; repo: string }>, ref: string | undefined): Promise<Map<string, Built>> {
    for (const { repo } of hosts) this.ask(repo);
    const byRepo = new Map(await Promise.all([...this.asked].map(async ([repo, entries]) => [repo, await entries] as const)));
    const built = new Map<string, Built>();
    for (const { host, repo } of hosts) {
      const found = newestBuild(byRepo.get(repo) ?? [], host, ref);
      if (found) built.set(host, found);
    }
    return built;
  }
}

/** How a host's deploy ended, as the deployer saw it. */
export type HostOutcome =
  | { kind: "completed"; host: string; message: DeployCompleted }
  | { kind: "rejected"; host: string; message: DeployRejected }
  /** --build: the builder did not build it, so it was not deployed. */
  | { kind: "not_built"; host: string; error: string }
  /** The listener was discovered but sent no final answer. */
  | { kind: "no_answer"; host: string; error: string };

export function succeeded(outcome: HostOutcome): boolean {
  return outcome.kind === "completed" && outcome.message.status === "success";
}

export interface DeployRequestSpec {
  tier: string;
  action: DeployAction;
  ref?: string | undefined;
}

export interface FollowOptions extends AskOptions {
  /** After the acknowledgement, stop waiting for a listener that sends nothing for this long. 0: no limit. */
  idleTimeoutMs: number;
  /**
   * How long a listener's messages after a gap in its numbers wait for the
   * resend that fills it before they go on without it (as a build's do:
   * the listener resends for half a minute after a NATS outage).
   */
  gapWaitMs?: number | undefined;
  /** Every message of a host, in seq order. */
  onMessage?: ((message: DeployResponse) => void) | undefined;
}

/** Without an idle limit the gatherer still needs a number: far beyond any deploy. */
const FOREVER_MS = 7 * 24 * 3600_000;

/**
 * One request, followed until every expected host has sent its final
 * answer (or nothing came for the idle timeout). `hosts`: the listeners
 * expected to answer. Messages of each host go through their own SeqOrder.
 */
export async function followDeploy(
  nc: NatsConnection,
  subject: string,
  body: Record<string, unknown>,
  hosts: readonly string[],
  options: FollowOptions,
): Promise<Map<string, HostOutcome>> {
  const orders = new Map<string, { order: SeqOrder<DeployResponse>; gap: GapWait<DeployResponse> }>();
  const outcomes = new Map<string, HostOutcome>();
  const allAnswered = new AbortController();
  const complete = () => hosts.every((host) => outcomes.has(host));
  const deliver = (message: DeployResponse) => {
    if (outcomes.has(message.host)) return;
    options.onMessage?.(message);
    if (message.type === "completed") outcomes.set(message.host, { kind: "completed", host: message.host, message });
    if (message.type === "rejected") outcomes.set(message.host, { kind: "rejected", host: message.host, message });
  };
  // A host's messages held behind a gap that does not fill go on after the
  // gap wait: a lost message does not hold its final answer back until the
  // idle timeout.
  const orderOf = (host: string) => {
    let entry = orders.get(host);
    if (!entry) {
      const order = new SeqOrder<DeployResponse>(DEPLOY_NUMBERING);
      const gap = new GapWait(order, options.gapWaitMs ?? GAP_WAIT_MS, ({ messages }) => {
        for (const message of messages) deliver(message);
        if (complete()) allAnswered.abort();
      });
      orders.set(host, (entry = { order, gap }));
    }
    return entry;
  };
  const idle = options.idleTimeoutMs > 0 ? options.idleTimeoutMs : FOREVER_MS;
  await gather(
    nc,
    { subject, body, replyPrefix: DEPLOY_RESPONSE_PREFIX, schema: DeployResponseSchema, responders: "listener" },
    {
      ackTimeoutMs: options.ackTimeoutMs,
      // Silence, not the first answer, ends the wait: a deploy takes as long as it takes.
      quietMs: idle,
      maxAfterFirstMs: FOREVER_MS,
      signal: options.signal,
      onInvalid: options.onInvalid,
      onAnswer: (message) => {
        const { order, gap } = orderOf(message.host);
        for (const ready of order.push(message)) deliver(ready);
        gap.check();
      },
      complete,
      stop: allAnswered.signal,
    },
  ).finally(() => {
    for (const { gap } of orders.values()) gap.stop();
  });
  // Messages still held behind a gap that never filled: in order, without it.
  for (const { order } of orders.values()) for (const message of order.flush().messages) deliver(message);
  const seconds = Math.round(idle / 1000);
  for (const host of hosts) {
    if (!outcomes.has(host)) {
      const heard = orders.has(host);
      outcomes.set(host, {
        kind: "no_answer",
        host,
        error: heard
          ? `the listener sent no final answer (nothing for ${seconds}s); the deploy may still be running there`
          : `the listener was discovered but did not answer the deploy request (nothing for ${seconds}s)`,
      });
    }
  }
  return outcomes;
}

/** The body of a deploy request: empty means switch. */
export function requestBody(spec: DeployRequestSpec, toplevel: string | undefined): Record<string, unknown> {
  return {
    ...(spec.action !== "switch" ? { action: spec.action } : {}),
    ...(spec.ref !== undefined && toplevel === undefined ? { ref: spec.ref } : {}),
    ...(toplevel !== undefined ? { toplevel } : {}),
  };
}

/** A host's plan: what it is sent. */
export interface HostPlan {
  host: string;
  /** The builder's toplevel; undefined: the listener evaluates on the host. */
  toplevel?: string | undefined;
  /** Why it is evaluated on the host, when it is. */
  evaluatedBecause?: "never_built" | "no_prebuilt" | undefined;
}

/** One request per host on `deploy.<tier>.<host>`, concurrently; answers per host. */
export async function deployEach(
  nc: NatsConnection,
  spec: DeployRequestSpec,
  plans: readonly HostPlan[],
  options: FollowOptions,
): Promise<Map<string, HostOutcome>> {
  const results = await Promise.all(plans.map((plan) => deployOne(nc, spec, plan, options)));
  return new Map(results.map((outcome) => [outcome.host, outcome]));
}

export async function deployOne(nc: NatsConnection, spec: DeployRequestSpec, plan: HostPlan, options: FollowOptions): Promise<HostOutcome> {
  const subject = deploySubject(spec.tier, { kind: "host", host: plan.host });
  try {
    const outcomes = await followDeploy(nc, subject, requestBody(spec, plan.toplevel), [plan.host], options);
    return outcomes.get(plan.host) as HostOutcome;
  } catch (err) {
    // A listener that was discovered but is gone now is this host's problem, not the whole deploy's.
    if (err instanceof NoBuilderError) return { kind: "no_answer", host: plan.host, error: err.message };
    throw err;
  }
}

/** One request on `deploy.<tier>.all` / `.role.<r>`, answered by every addressed listener. */
export async function deployTogether(
  nc: NatsConnection,
  spec: DeployRequestSpec,
  target: DeployTarget,
  hosts: readonly string[],
  options: FollowOptions,
): Promise<Map<string, HostOutcome>> {
  return followDeploy(nc, deploySubject(spec.tier, target), requestBody(spec, undefined), hosts, options);
}

/** The fleet at a glance: one row per listener. */
export interface FleetRow {
  host: string;
  tier: string;
  roles: string[];
  current: string | null;
  booted: string | null;
  /** The builder's newest default-branch build, null when it never built the host. */
  built: string | null;
  /** The host does not run the newest build. Null when there is no build to compare with. */
  behind: boolean | null;
  rebootRequired: boolean;
  busy: string | null;
}

export function fleetRows(listeners: readonly DeployDiscoverResponse[], builds: ReadonlyMap<string, Built>): FleetRow[] {
  return [...listeners]
    .sort((a, b) => a.tier.localeCompare(b.tier) || a.host.localeCompare(b.host))
    .map((l) => {
      const built = builds.get(l.host)?.toplevel ?? null;
      return {
        host: l.host,
        tier: l.tier,
        roles: l.roles,
        current: l.current,
        booted: l.booted,
        built,
        behind: built === null ? null : l.current !== built,
        rebootRequired: l.rebootRequired,
        busy: l.busy,
      };
    });
}

export interface BuildFirstOptions extends FollowOptions {
  /** Builder-side: silence after `accepted` that means the builder is gone. */
  buildIdleTimeoutMs: number;
  onBuildMessage?: ((message: BuildResponse) => void) | undefined;
  /** A host's plan, as soon as its build is done (before its deploy request goes out). */
  onPlanned?: ((plan: HostPlan) => void) | undefined;
}

/**
 * `--build`: builds the hosts' repo (one host: that host; several: `all`)
 * and deploys each host the moment the builder reports it built, so the
 * build of the next host overlaps this one's deploy. A host that did not
 * build is not deployed.
 */
export async function buildThenDeploy(
  nc: NatsConnection,
  spec: DeployRequestSpec,
  repo: string,
  hosts: readonly string[],
  options: BuildFirstOptions,
): Promise<Map<string, HostOutcome>> {
  const wanted = new Set(hosts);
  const deploys: Array<Promise<HostOutcome>> = [];
  const notBuilt = new Map<string, HostOutcome>();
  const started = new Set<string>();
  const final = await requestBuild(
    nc,
    { repo, target: hosts.length === 1 ? (hosts[0] as string) : ALL_HOSTS, ref: spec.ref },
    {
      ackTimeoutMs: options.ackTimeoutMs,
      idleTimeoutMs: options.buildIdleTimeoutMs,
      signal: options.signal,
      onInvalid: options.onInvalid,
      onMessage: (message) => {
        options.onBuildMessage?.(message);
        if (message.type !== "host_finished" || !wanted.has(message.host) || started.has(message.host)) return;
        started.add(message.host);
        if (message.status === "success" && message.storePath !== undefined) {
          const plan = { host: message.host, toplevel: message.storePath };
          options.onPlanned?.(plan);
          deploys.push(deployOne(nc, spec, plan, options));
        } else {
          notBuilt.set(message.host, { kind: "not_built", host: message.host, error: `the builder did not build it (${message.status}): ${message.error ?? ""}`.trimEnd() });
        }
      },
    },
  );
  for (const host of hosts) {
    if (started.has(host)) continue;
    const why = final.type === "rejected" ? `the builder rejected the build: ${final.error}` : `the build (${final.status}) has no result for it`;
    notBuilt.set(host, { kind: "not_built", host, error: why });
  }
  const outcomes = new Map(notBuilt);
  for (const outcome of await Promise.all(deploys)) outcomes.set(outcome.host, outcome);
  return outcomes;
}

/** Where a deploy's events go: the CLI's reporter, the MCP tool's progress. */
export interface DeploySink {
  /** What each host is sent: the builder's toplevel, or an evaluation on the host. */
  planned(plan: HostPlan, tier: string): void;
  message(message: DeployResponse): void;
  /** --build: the builder's messages. */
  build(message: BuildResponse): void;
  /** An outcome no listener message carries (not built, no answer). */
  outcome(outcome: HostOutcome): void;
}

export interface DeployRun {
  tier: string;
  target: DeployTarget;
  spec: DeployRequestSpec;
  build: boolean;
  prebuilt: boolean;
  ackTimeoutMs: number;
  idleTimeoutMs: number;
  buildIdleTimeoutMs: number;
}

export function describeTarget(tier: string, target: DeployTarget): string {
  return target.kind === "host" ? `host ${target.host} of tier ${tier}` : target.kind === "all" ? `tier ${tier}` : `role ${target.role} of tier ${tier}`;
}

/** Discovers, plans and deploys; every addressed host has an outcome. */
export async function deployFleet(nc: NatsConnection, run: DeployRun, reporter: DeploySink, signal: AbortSignal, onInvalid?: (raw: string) => void): Promise<HostOutcome[]> {
  const { tier, target, spec } = run;
  const ask = { ackTimeoutMs: run.ackTimeoutMs, signal, onInvalid };
  const only = target.kind === "host" ? { tier, host: target.host } : undefined;
  // Only a prebuilt deploy (without --build) needs the builders' history.
  const histories = new BuilderHistories(nc, ask);
  const onListener = (l: DeployDiscoverResponse) => {
    if (run.prebuilt && !run.build && addressed([l], tier, target).length > 0) histories.ask(l.repo.name);
  };
  const listeners = addressed(await discoverListeners(nc, { ...ask, only, onListener }), tier, target);
  if (listeners.length === 0) throw new NoBuilderError(`no listener of ${describeTarget(tier, target)} answered on deploy.discover; is the listener running on it?`);
  const follow = { ...ask, idleTimeoutMs: run.idleTimeoutMs, onMessage: (m: DeployResponse) => reporter.message(m) };
  const hosts = listeners.map((l) => l.host);
  let outcomes: Map<string, HostOutcome>;

  if (run.build) {
    const byRepo = groupByRepo(listeners);
    const results = await Promise.all(
      [...byRepo].map(([repo, repoHosts]) =>
        buildThenDeploy(nc, spec, repo, repoHosts, {
          ...follow,
          buildIdleTimeoutMs: run.buildIdleTimeoutMs,
          onBuildMessage: (m) => reporter.build(m),
          onPlanned: (plan) => reporter.planned(plan, tier),
        }),
      ),
    );
    outcomes = new Map(results.flatMap((m) => [...m]));
  } else if (!run.prebuilt) {
    for (const host of hosts) reporter.planned({ host, evaluatedBecause: "no_prebuilt" }, tier);
    outcomes =
      target.kind === "host"
        ? new Map([[target.host, await deployOne(nc, spec, { host: target.host, evaluatedBecause: "no_prebuilt" }, follow)]])
        : await deployTogether(nc, spec, target, hosts, follow);
  } else {
    const built = await builderBuilds(histories, listeners, spec.ref);
    const plans: HostPlan[] = listeners.map((l) => {
      const found = built.get(l.host);
      return found ? { host: l.host, toplevel: found.toplevel } : { host: l.host, evaluatedBecause: "never_built" };
    });
    for (const plan of plans) reporter.planned(plan, tier);
    outcomes = await deployEach(nc, spec, plans, follow);
  }
  const ordered = hosts.map((host) => outcomes.get(host) as HostOutcome);
  for (const outcome of ordered) if (outcome.kind === "not_built" || outcome.kind === "no_answer") reporter.outcome(outcome);
  return ordered;
}

function groupByRepo(listeners: readonly DeployDiscoverResponse[]): Map<string, string[]> {
  const byRepo = new Map<string, string[]>();
  for (const l of listeners) byRepo.set(l.repo.name, [...(byRepo.get(l.repo.name) ?? []), l.host]);
  return byRepo;
}

async function builderBuilds(histories: BuilderHistories, listeners: readonly DeployDiscoverResponse[], ref: string | undefined): Promise<Map<string, Built>> {
  try {
    return await histories.newest(listeners.map((l) => ({ host: l.host, repo: l.repo.name })), ref);
  } catch (err) {
    if (err instanceof NoBuilderError) {
      throw new NoBuilderError(`${err.message}\nthe deployer asks the builder for each host's newest build; without a builder, deploy with --no-prebuilt (each host evaluates itself)`);
    }
    throw err;
  }
}


/** "all", "role:NAME" or a host name, as a deploy target. */
export function parseTarget(text: string): DeployTarget {
  if (text === ALL_TARGET) return { kind: "all" };
  if (text.startsWith(`${ROLE_TOKEN}:`)) {
    const role = text.slice(ROLE_TOKEN.length + 1);
    if (!isValidHostName(role)) throw new UsageError(`invalid role name ${JSON.stringify(role)}`);
    return { kind: "role", role };
  }
  if (!isValidDeployHost(text)) throw new UsageError(`invalid target ${JSON.stringify(text)}: expected a host name, ${ALL_TARGET} or ${ROLE_TOKEN}:NAME`);
  return { kind: "host", host: text };
}

export function checkTier(tier: string): string {
  if (!isValidTier(tier)) throw new UsageError(`invalid tier ${JSON.stringify(tier)}: expected lower-case letters, digits and "-", starting with a letter`);
  return tier;
}

/** `deploy --list`: every listener (of `tier`), with the builder's newest default-branch build of each. */
export async function listFleet(
  nc: NatsConnection,
  tier: string | undefined,
  ask: AskOptions,
): Promise<{ rows: FleetRow[]; noBuilder?: string | undefined }> {
  const shown = (l: DeployDiscoverResponse) => tier === undefined || l.tier === tier;
  const histories = new BuilderHistories(nc, ask);
  const onListener = (l: DeployDiscoverResponse) => {
    if (shown(l)) histories.ask(l.repo.name);
  };
  const listeners = (await discoverListeners(nc, { ...ask, onListener })).filter(shown);
  if (listeners.length === 0) throw new NoBuilderError(`no listener${tier === undefined ? "" : ` of tier ${tier}`} answered on deploy.discover`);
  try {
    const builds = await histories.newest(listeners.map((l) => ({ host: l.host, repo: l.repo.name })), undefined);
    return { rows: fleetRows(listeners, builds) };
  } catch (err) {
    if (!(err instanceof NoBuilderError)) throw err;
    // Still worth showing: what runs, what booted, reboots; only "behind" is unknown.
    return { rows: fleetRows(listeners, new Map()), noBuilder: err.message };
  }
}
