/**
 * The builder daemon's composition root: builds each component from the
 * config, starts them in order and stops them in reverse. Components never
 * exit the process; they report, and the command decides.
 */
import { hostname } from "node:os";
import { Builder } from "../builder/builder.js";
import { HostCatalog } from "../builder/catalog.js";
import { natsServers, type Config } from "../config.js";
import { fileSeedSource, type SeedSource } from "../nats/credentials.js";
import { ExitCode, errorMessage, exitCodeOf } from "../errors.js";
import { EventBus } from "../events.js";
import type { Logger } from "../logger.js";
import { NixRunner } from "../nix/runner.js";
import { startObservability } from "../observability/observability.js";
import { ToplevelCache } from "../nix/toplevel-cache.js";
import { NatsTransport } from "../nats/transport.js";
import { CONFIG_KEY_NAMES, vaultSeedSource } from "../nats/vault.js";
import { VERSION } from "../version.js";
import { NixStore } from "../nix/store.js";
import { BuildHistory } from "../builder/keep/history.js";
import { GcRoots } from "../builder/keep/gc-roots.js";
import { Keeper } from "../builder/keep/keeper.js";

export interface Daemon {
  /** Graceful stop: answer every requester, end nix, drain NATS. */
  stop(): Promise<void>;
  /** Resolves with the process exit code once the daemon has stopped. */
  readonly done: Promise<number>;
}

function seedSourceOf(config: Config, logger: Logger): SeedSource {
  if (config.vault) {
    return vaultSeedSource({ settings: config.vault, names: CONFIG_KEY_NAMES, logger: logger.child({ component: "vault" }), wait: true });
  }
  return fileSeedSource(config.nats.nkeySeedFile as string);
}

export async function startDaemon(config: Config, logger: Logger): Promise<Daemon> {
  const events = new EventBus((err) => logger.error({ err }, "an event listener failed"));
  const nix = new NixRunner({
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
  });
  const catalog = new HostCatalog({ nix, repos: config.repos, logger: logger.child({ component: "catalog" }), timeoutMs: config.build.resolveTimeout });
  const nixVersion = await nix.version();
  const toplevels = new ToplevelCache({
    stateDir: config.stateDir,
    nixVersion: nixVersion.ok ? nixVersion.value : "unknown",
    logger: logger.child({ component: "toplevels" }),
  });
  await toplevels.load();
  const store = new NixStore(nix, config.build.nixBin);
  const history = new BuildHistory({ stateDir: config.stateDir, size: config.build.historySize, logger: logger.child({ component: "history" }) });
  const roots = new GcRoots({
    stateDir: config.stateDir,
    store,
    keepGenerations: config.build.keepGenerations,
    keepRefBuildsMs: config.build.keepRefBuilds,
    repos: Object.keys(config.repos),
    logger: logger.child({ component: "gcroots" }),
  });
  await Promise.all([history.load(), roots.load()]);
  const keeper = new Keeper({ history, roots, store, logger: logger.child({ component: "keep" }) });
  const builder = new Builder({ config, transport, nix, catalog, events, logger, version: VERSION, builderName, toplevels, keeper, history });
  const observability = await startObservability(config, logger, { events, transport, nix, nixVersion, builderName });

  try {
    await transport.start();
  } catch (err) {
    await observability.stop();
    throw err;
  }
  catalog.start();
  builder.start();
  logger.info(
    { version: VERSION, repos: Object.keys(config.repos), queueGroup: config.nats.queueGroup ?? null, maxQueue: config.build.maxQueue },
    "builder ready: listening on build.>",
  );

  let resolveDone: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => (resolveDone = resolve));
  let stopping: Promise<void> | undefined;
  const stop = (code: number = ExitCode.ok) => {
    stopping ??= (async () => {
      logger.info("stopping: answering waiting requesters and ending running builds");
      observability.beginShutdown();
      await builder.stop();
      await transport.stop();
      // Last: the final events are saved, and Prometheus can scrape until the end.
      await observability.stop();
      logger.info("stopped");
      resolveDone(code);
    })();
    return stopping;
  };
  transport.onFatal((err) => {
    logger.fatal({ err: errorMessage(err) }, "lost the NATS connection for good");
    void stop(exitCodeOf(err));
  });
  return { stop: () => stop(), done };
}
