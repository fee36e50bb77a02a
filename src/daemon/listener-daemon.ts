/**
 * The deploy listener's composition root: builds its parts from the
 * config (credentials, NATS transport, nix runner, activation, metrics
 * and the observability HTTP server), starts them in order and stops them
 * in reverse. Like the builder's daemon it never exits the process itself:
 * `done` resolves with the exit code and the command exits.
 */
import { join } from "node:path";
import { natsServers } from "../config.js";
import { errorMessage } from "../errors.js";
import type { ListenerConfig } from "../listener-config.js";
import type { Logger } from "../logger.js";
import { Activation } from "../listener/activation.js";
import { InFlightStore } from "../listener/in-flight.js";
import { Listener } from "../listener/listener.js";
import { ListenerMetrics } from "../listener/metrics.js";
import { NatsTransport } from "../nats/transport.js";
import { NixRunner } from "../nix/runner.js";
import { ProcessLedger } from "../nix/process-ledger.js";
import { NixStore } from "../nix/store.js";
import { HttpServer } from "../observability/http-server.js";
import { Readiness } from "../observability/readiness.js";
import { LISTENER_SYSTEM_ROOT } from "../state-files.js";
import { storeDir } from "../store-path.js";
import { VERSION } from "../version.js";
import { seedSourceOf, stoppable, type Daemon } from "./daemon.js";

export async function startListenerDaemon(config: ListenerConfig, logger: Logger): Promise<Daemon> {
  const { host, tier } = config;
  // A listener killed while nix fetched or built left it running: end it
  // first. switch-to-configuration is never recorded (activation.ts): it
  // must outlive a listener it restarts.
  const ledger = new ProcessLedger(config.stateDir, logger.child({ component: "processes" }), config.killGrace);
  await ledger.reapLeftovers();
  const nix = new NixRunner({ nixBin: config.nixBin, killGraceMs: config.killGrace, logTailLines: 50, ledger });
  const transport = new NatsTransport({
    servers: natsServers(config),
    name: config.nats.name ?? `homelab-deploy-listener@${host}`,
    seed: seedSourceOf(config, logger),
    logger: logger.child({ component: "nats" }),
    waitForServer: true,
  });
  const metrics = new ListenerMetrics({ tier, host, version: VERSION, stateDir: config.stateDir, logger: logger.child({ component: "metrics" }) });
  await metrics.load();
  const activation = new Activation({ nix, host, repoUrl: config.repo.url, system: config.system, root: join(config.stateDir, LISTENER_SYSTEM_ROOT), timeouts: config.timeouts });
  let daemon: Daemon | undefined;
  // A deploy taken up at start may finish before the daemon below exists.
  let unitChanged = false;
  const listener = new Listener({
    host,
    tier,
    roles: config.roles,
    repo: config.repo,
    storeDir: storeDir(),
    version: VERSION,
    rollback: config.rollback,
    health: config.health,
    heartbeatInterval: config.heartbeatInterval,
    selfUnit: config.selfUnit,
    transport,
    activation,
    store: new NixStore(nix),
    inFlight: new InFlightStore(config.stateDir),
    metrics,
    logger: logger.child({ component: "listener" }),
    onUnitChanged: () => {
      unitChanged = true;
      void daemon?.stop();
    },
  });
  const readiness = new Readiness({ natsState: () => transport.state, nix, initialNix: await nix.version(), daemon: "listener" });
  const http = new HttpServer({ listen: config.metrics.listen, registry: metrics.registry, readiness: () => readiness.report(), logger: logger.child({ component: "http" }) });
  await http.start();
  readiness.start();
  try {
    await transport.start();
    await listener.start();
  } catch (err) {
    readiness.stop();
    await http.stop();
    throw err;
  }
  // "ready" must mean the server knows the subscriptions (see the builder's daemon).
  await transport.flush().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, "NATS flush after subscribing failed"));
  logger.info({ version: VERSION, host, tier, roles: config.roles, subjects: listener.subjects() }, "listener ready");

  daemon = stoppable(logger, transport, "stopping: finishing the deploy in flight", async () => {
    readiness.stop();
    await listener.stop();
    await transport.stop();
    await metrics.flush();
    await http.stop();
  });
  if (unitChanged) void daemon.stop();
  return daemon;
}
