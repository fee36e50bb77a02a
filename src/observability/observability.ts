/**
 * The builder's observability, assembled: metrics (restored from the state
 * file, fed from the event bus, saved after every change), readiness and
 * the HTTP server that serves both. Started before NATS, so /healthz
 * answers and /readyz says why while the builder still waits for the NATS
 * server; stopped last, so the final events are saved and Prometheus can
 * scrape until the end.
 */
import type { Config } from "../config.js";
import type { EventBus } from "../events.js";
import { HttpServer } from "./http-server.js";
import type { Logger } from "../logger.js";
import { BuildMetrics } from "./metrics.js";
import type { NixRunner, Outcome } from "../nix/runner.js";
import { Readiness } from "./readiness.js";
import { MetricsStateFile, STATE_FILE_NAME } from "./state.js";
import type { StateHealth } from "./state-health.js";
import { STATE_FILE_NAMES } from "../state-files.js";
import type { NatsTransport } from "../nats/transport.js";
import { VERSION } from "../version.js";
import { StatusPage } from "./status-page/status-page.js";
import type { StatusSource } from "./status-page/model.js";

export interface Observability {
  /** /readyz answers not ready from now on. */
  beginShutdown(): void;
  /** Waits for the last state write, then closes the HTTP server. */
  stop(): Promise<void>;
}

export interface ObservedParts {
  events: EventBus;
  transport: NatsTransport;
  nix: NixRunner;
  /** `nix --version` as the daemon ran it at start-up. */
  nixVersion?: Outcome<string>;
  /** The `builder` label on every metric. */
  builderName?: string;
  /** Outcomes of state file writes (metrics.json here, toplevels.json from the daemon). */
  stateHealth: StateHealth;
  /** What the status page shows; without it the server answers only /metrics, /healthz and /readyz. */
  statusSource?: StatusSource;
}

export async function startObservability(config: Config, logger: Logger, parts: ObservedParts): Promise<Observability> {
  const { events, transport, nix, stateHealth } = parts;
  const metrics = new BuildMetrics({ repos: Object.keys(config.repos), version: VERSION, builder: parts.builderName });
  metrics.initStateFiles(STATE_FILE_NAMES);
  for (const problem of stateHealth.problems()) metrics.recordStateWrite(problem.file, problem.error);
  stateHealth.onRecord((file, error) => metrics.recordStateWrite(file, error));
  const stateLogger = logger.child({ component: "state" });
  const metricsState = new MetricsStateFile({
    dir: config.stateDir,
    logger: stateLogger,
    snapshot: () => metrics.snapshot(),
    onSaved: (error) => stateHealth.record(STATE_FILE_NAME, error),
  });
  // A FIFO (or directory, …) at metrics.json is already in stateHealth: the
  // daemon checks every state file before it starts this (daemon.ts).
  const saved = await metricsState.load();
  if (saved) {
    const dropped = metrics.restore(saved);
    if (dropped.length > 0) stateLogger.info({ dropped }, "saved metrics of repos that are no longer configured were dropped");
  }
  metrics.onPersistentChange(() => metricsState.request());
  const unsubscribe = events.on(metrics.onEvent);
  metrics.setNatsState(transport.state);
  transport.onStateChange((state) => metrics.setNatsState(state));

  const readiness = new Readiness({
    natsState: () => transport.state,
    nix,
    initialNix: parts.nixVersion,
    stateProblems: () => stateHealth.problems(),
  });
  const page = parts.statusSource ? new StatusPage({ source: parts.statusSource, events }) : undefined;
  const http = new HttpServer({
    listen: config.metrics.listen,
    registry: metrics.registry,
    readiness: () => readiness.report(),
    logger: logger.child({ component: "http" }),
    page,
  });
  try {
    await http.start();
  } catch (err) {
    unsubscribe();
    page?.stop();
    throw err;
  }
  readiness.start();
  return {
    beginShutdown: () => readiness.stop(),
    async stop() {
      readiness.stop();
      unsubscribe();
      await metricsState.flush();
      await http.stop();
    },
  };
}
