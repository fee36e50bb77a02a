/**
 * A real deploy listener (`homelab-deploy listener`, dist/cli.js) for tests
 * and benchmarks, on a fixture system: its profile, current and booted links
 * live in a temp dir of its own (`root`), where the fixture's
 * switch-to-configuration also records its activations (it finds the dir
 * in HOMELAB_DEPLOY_FIXTURE_ROOT).
 */
import { mkdir, mkdtemp, readFile, readlink, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { CLI } from "./cli.js";
import { spawnBuilder, type BuilderProcess } from "./daemon.js";
import type { NatsServer } from "./nats-server.js";

export interface ListenerSetup {
  host: string;
  tier: "test" | "prod";
  roles?: string[];
  repo: { name: string; url: string };
  nats: NatsServer;
  /** The system the host runs and booted at the start: profile generation 1. */
  initial: string;
  /** Merged over the config (health, timeouts, …). */
  extra?: Record<string, unknown>;
  env?: Record<string, string>;
}

export interface ListenerHost {
  host: string;
  root: string;
  configFile: string;
  process: BuilderProcess;
  /** Where the host's `current` link points. */
  current(): Promise<string>;
  /** The fixture switch's records, "<action> <system>", oldest first. */
  activations(): Promise<string[]>;
  /** Stops it and starts it again on the same root, with `change` merged over its config. */
  restart(change?: Record<string, unknown>): Promise<ListenerHost>;
  stop(): Promise<unknown>;
}

export async function startListener(setup: ListenerSetup): Promise<ListenerHost> {
  const root = await mkdtemp(join(tmpdir(), `hd-listener-${setup.host}-`));
  await mkdir(join(root, "profiles"));
  await execa("nix-env", ["-p", join(root, "profiles", "system"), "--set", setup.initial]);
  await symlink(setup.initial, join(root, "current"));
  await symlink(setup.initial, join(root, "booted"));
  const identity = setup.tier === "test" ? setup.nats.identities.testListener : setup.nats.identities.prodListener;
  const config = {
    host: setup.host,
    tier: setup.tier,
    roles: setup.roles ?? [],
    repo: setup.repo,
    nats: { url: setup.nats.url, nkeySeedFile: identity.seedFile },
    stateDir: join(root, "state"),
    metrics: { listen: "127.0.0.1:0" },
    system: { profile: join(root, "profiles", "system"), current: join(root, "current"), booted: join(root, "booted") },
    health: { commands: [["/bin/true"]], timeout: "30s", confirmTimeout: "10s" },
    log: { level: "debug" },
    ...setup.extra,
  };
  const configFile = join(root, "listener.json");
  await writeFile(configFile, JSON.stringify(config, null, 2));
  return spawnListener(setup.host, root, configFile, setup.env ?? {});
}

async function spawnListener(host: string, root: string, configFile: string, env: Record<string, string>): Promise<ListenerHost> {
  const process_ = await spawnBuilder(configFile, { HOMELAB_DEPLOY_FIXTURE_ROOT: root, ...env }, {
    command: [process.execPath, CLI, "listener", "--config", configFile],
    readyMessage: "listener ready",
  });
  const listener: ListenerHost = {
    host,
    root,
    configFile,
    process: process_,
    current: () => readlink(join(root, "current")),
    async activations() {
      const text = await readFile(join(root, "activations"), "utf8").catch(() => "");
      return text.split("\n").filter(Boolean);
    },
    async restart(change = {}) {
      await process_.stop("SIGTERM");
      const config = { ...(JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>), ...change };
      await writeFile(configFile, JSON.stringify(config, null, 2));
      return spawnListener(host, root, configFile, env);
    },
    stop: () => process_.stop("SIGTERM"),
  };
  return listener;
}
