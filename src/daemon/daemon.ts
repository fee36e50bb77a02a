/**
 * The builder daemon's composition root: builds each component from the
 * config, starts them in order and stops them in reverse. Components never
 * exit the process; they report, and the command decides.
 */
import { STATE_FILE_NAMES, STATE_FILES } from "../state-files.js";
import { hostname } from "node:os";
import { Builder } from "../builder/builder.js";
import { HostCatalog } from "../builder/catalog.js";
import { natsServers, type Config } from "../config.js";
import { fileSeedSource, type SeedSource } from "../nats/credentials.js";
import { ExitCode, errorMessage, exitCodeOf } from "../errors.js";
import { EventBus } from "../events.js";
import type { Logger } from "../logger.js";
import { NixRunner } from "../nix/runner.js";
import { ProcessLedger } from "../nix/process-ledger.js";
import { startObservability } from "../observability/observability.js";
import type { StatusSource } from "../observability/status-page/model.js";
import { TOPLEVEL_CACHE_FILE, ToplevelCache } from "../nix/toplevel-cache.js";
import { StateHealth } from "../observability/state-health.js";
import { assertReplaceable } from "../util/regular-file.js";
import { join } from "node:path";
import { NatsTransport } from "../nats/transport.js";
import { CONFIG_KEY_NAMES, vaultSeedSource } from "../nats/vault.js";
import { VERSION } from "../version.js";
import { NixStore } from "../nix/store.js";
import { BuildHistory, HISTORY_FILE } from "../builder/keep/history.js";
import { GC_ROOTS_FILE, GcRoots } from "../builder/keep/gc-roots.js";
import { Keeper } from "../builder/keep/keeper.js";

export interface Daemon {
  /** Graceful stop: end nix, save the queue or answer every requester (build.resume), drain NATS. */
  stop(why?: string): Promise<void>;
  /** Resolves with the process exit code once the daemon has stopped. */
  readonly done: Promise<number>;
}

/** The NKey seed from the config's file or Vault (the builder's and the listener's configs alike). */
export function seedSourceOf(config: { nats: { nkeySeedFile?: string | undefined }; vault?: Config["vault"] }, logger: Logger): SeedSource {
  if (config.vault) {
    return vaultSeedSource({ settings: config.vault, names: CONFIG_KEY_NAMES, logger: logger.child({ component: "vault" }), wait: true });
  }
  return fileSeedSource(config.nats.nkeySeedFile as string);
}

export async function startDaemon(config: Config, logger: Logger): Promise<Daemon> {
  const events = new EventBus((err) => logger.error({ err }, "an event listener failed"));
  // A builder that was killed may have left its nix build running: end it
  // before anything is built, so that two builds never overlap.
  const ledger = new ProcessLedger(config.stateDir, logger.child({ component: "nix-processes" }), config.build.killGrace);
  await ledger.reapLeftovers();
  const nix = new NixRunner({
    ledger,
    nixBin: config.build.nixBin,
    killGraceMs: config.build.killGrace,
    logTailLines: config.build.logTailLines,
    keepGoing: config.build.keepGoing,
  });
  const builderName = config.nats.name ?? `homelab-deploy-builder@${hostname()}`;
  const transport = new NatsTransport({
    servers: natsServers(config),
    name: builderName,
    seed: seedSourceOf(config, logger),
    logger: logger.child({ component: "nats" }),
    waitForServer: true,
    // The builder publishes its answers under build.responses.>, inside the
    // build.> it subscribes to: without this it would hear every one of them.
    noEcho: true,
  });
  const catalog = new HostCatalog({ nix, repos: config.repos, logger: logger.child({ component: "catalog" }), timeoutMs: config.build.resolveTimeout, fetchTimeoutMs: config.build.fetchTimeout });
  const nixVersion = await nix.version();
  const stateHealth = new StateHealth();
  const toplevels = new ToplevelCache({
    stateDir: config.stateDir,
    nixVersion: nixVersion.ok ? nixVersion.value : "unknown",
    logger: logger.child({ component: "toplevels" }),
    onSaved: (error) => stateHealth.record(TOPLEVEL_CACHE_FILE, error),
  });
  // A FIFO (or directory, …) where a state file belongs is never read (it
  // would block start-up) nor replaced: /readyz says so from the start.
  for (const file of STATE_FILE_NAMES) {
    await assertReplaceable(join(config.stateDir, file)).catch((err: unknown) => stateHealth.record(file, errorMessage(err)));
  }
  await toplevels.load();
  const store = new NixStore(nix);
  const history = new BuildHistory({
    stateDir: config.stateDir,
    size: config.build.historySize,
    logger: logger.child({ component: "history" }),
    onSaved: (error) => stateHealth.record(HISTORY_FILE, error),
  });
  const roots = new GcRoots({
    stateDir: config.stateDir,
    store,
    keepGenerations: config.build.keepGenerations,
    keepRefBuildsMs: config.build.keepRefBuilds,
    repos: Object.keys(config.repos),
    logger: logger.child({ component: "gcroots" }),
    onSaved: (error) => stateHealth.record(GC_ROOTS_FILE, error),
  });
  await Promise.all([history.load(), roots.load()]);
  const keeper = new Keeper({ history, roots, store, logger: logger.child({ component: "keep" }) });
  const builder = new Builder({
    ...{ config, transport, nix, catalog, events, logger, version: VERSION, builderName, toplevels, keeper, history },
    onJobsSaved: (error) => stateHealth.record(STATE_FILES.jobs, error),
  });
  const statusSource: StatusSource = {
    status: () => builder.status(),
    repos: () => builder.repos(),
    historyHosts: (repo) => history.hosts(repo),
    history: (repo, host) => history.entries(repo, host),
    expectedMs: (repo, host) => history.expectedMs(repo, host),
    rooted: (repo, host, storePath) => roots.isRooted(repo, host, storePath),
  };
  const observability = await startObservability(config, logger, { events, transport, nix, nixVersion, builderName, stateHealth, statusSource });

  try {
    await transport.start();
  } catch (err) {
    await observability.stop();
    throw err;
  }
  catalog.start();
  await builder.start();
  // "ready" must mean the server knows the subscription: a request sent
  // right after the line (a test, a unit's ExecStartPost) must not meet
  // "no responders" because the SUB was still in nats.js's buffer.
  await transport.flush().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, "NATS flush after subscribing failed"));
  logger.info(
    { version: VERSION, repos: Object.keys(config.repos), queueGroup: config.nats.queueGroup ?? null, maxQueue: config.build.maxQueue },
    "builder ready: listening on build.>",
  );

  return stoppable(logger, transport, "stopping: answering waiting requesters and ending running builds", async (why) => {
    observability.beginShutdown();
    await builder.stop(why);
    await transport.stop();
    // Last: the final events are saved, and Prometheus can scrape until the end.
    await observability.stop();
  });
}

/**
 * A started daemon's stop: `steps` run once (the first stop wins), then
 * `done` resolves with the exit code; NATS lost for good stops it with its
 * error's code.
 */
export function stoppable(logger: Logger, transport: NatsTransport, stoppingMessage: string, steps: (why?: string) => Promise<void>): Daemon {
  let resolveDone: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => (resolveDone = resolve));
  let stopping: Promise<void> | undefined;
  const stop = (code: number = ExitCode.ok, why?: string) => {
    stopping ??= (async () => {
      logger.info(stoppingMessage);
      await steps(why);
      logger.info("stopped");
      resolveDone(code);
    })();
    return stopping;
  };
  transport.onFatal((err) => {
    logger.fatal({ err: errorMessage(err) }, "lost the NATS connection for good");
    void stop(exitCodeOf(err));
  });
  return { stop: (why?: string) => stop(ExitCode.ok, why), done };
}
