/**
 * What `GET /readyz` answers: can this daemon (a builder or a listener)
 * take a request and carry it out right now? Three checks, all cheap at
 * request time:
 *   - nats:    the NATS connection is `connected` (requests arrive, answers leave);
 *   - nix:     `nix --version` ran and exited 0 (re-checked at most once a
 *              minute, so a probe every few seconds never forks a nix each time);
 *   - builder or listener (named after the daemon): it is not shutting down.
 * And one that does not decide readiness: `state` (the state files under
 * stateDir can be written). A builder that cannot save them still builds,
 * so it stays ready, but reports itself `degraded` with the reason.
 */
import type { NixRunner, Outcome } from "../nix/runner.js";
import type { ConnectionState } from "../nats/transport.js";
import type { StateProblem } from "./state-health.js";

export interface Check {
  ok: boolean;
  detail: string;
}

export type Daemon = "builder" | "listener";

export interface ReadinessReport {
  ready: boolean;
  /** Ready, but something an operator must fix: see the checks that are not ok. */
  degraded: boolean;
  checks: { nats: Check; nix: Check; state: Check } & Partial<Record<Daemon, Check>>;
}

export interface ReadinessOptions {
  natsState: () => ConnectionState;
  nix: NixRunner;
  /** The daemon's own `nix --version` at start-up, so the first probe need not fork another. */
  initialNix?: Outcome<string>;
  /** How long a nix probe result is trusted. */
  nixProbeTtlMs?: number;
  nixProbeTimeoutMs?: number;
  /** State files whose last write failed. */
  stateProblems?: () => StateProblem[];
  /** Which daemon: names its own check, which says "accepting builds" or "accepting deploys" while it takes requests. Default builder. */
  daemon?: Daemon;
}

const DEFAULT_TTL_MS = 60_000;
const DEFAULT_PROBE_TIMEOUT_MS = 10_000;

export class Readiness {
  private nixResult: { check: Check; at: number } | undefined;
  private probing: Promise<Check> | undefined;
  private readonly abort = new AbortController();
  private stopping = false;

  constructor(private readonly options: ReadinessOptions) {
    if (options.initialNix) this.nixResult = { check: checkOf(options.initialNix), at: Date.now() };
  }

  /** Runs the first nix probe now (unless start-up already did), so the first /readyz need not wait for it. */
  start(): void {
    void this.nixCheck();
  }

  /** From now on the daemon reports not ready; a running probe is ended. */
  stop(): void {
    this.stopping = true;
    this.abort.abort();
  }

  async report(): Promise<ReadinessReport> {
    const state = this.options.natsState();
    const nats = { ok: state === "connected", detail: state };
    const nix = await this.nixCheck();
    const daemon = this.options.daemon ?? "builder";
    const service = this.stopping ? { ok: false, detail: "shutting down" } : { ok: true, detail: daemon === "builder" ? "accepting builds" : "accepting deploys" };
    const problems = this.options.stateProblems?.() ?? [];
    const files =
      problems.length === 0
        ? { ok: true, detail: "state files writable" }
        : { ok: false, detail: problems.map((p) => `cannot save ${p.file}: ${p.error}`).join("; ") };
    return { ready: nats.ok && nix.ok && service.ok, degraded: !files.ok, checks: { nats, nix, [daemon]: service, state: files } };
  }

  private nixCheck(): Promise<Check> {
    const ttl = this.options.nixProbeTtlMs ?? DEFAULT_TTL_MS;
    if (this.nixResult && Date.now() - this.nixResult.at < ttl) return Promise.resolve(this.nixResult.check);
    // Shutting down is not-ready anyway: don't fork a nix only to kill it.
    if (this.stopping) return Promise.resolve(this.nixResult?.check ?? { ok: false, detail: "not checked: shutting down" });
    this.probing ??= this.probeNix().finally(() => (this.probing = undefined));
    return this.probing;
  }

  private async probeNix(): Promise<Check> {
    const version = await this.options.nix.version({
      timeoutMs: this.options.nixProbeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS,
      signal: this.abort.signal,
    });
    const check = checkOf(version);
    this.nixResult = { check, at: Date.now() };
    return check;
  }
}

function checkOf(version: Outcome<string>): Check {
  return version.ok ? { ok: true, detail: version.value } : { ok: false, detail: version.error };
}
