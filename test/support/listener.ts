/**
 * Deploy listeners under test, set up like hosts fed by the build host:
 * the builder builds the fixture systems (test/fixtures/system-flake) in
 * the shared store and copies each closure to a `file://` binary cache it
 * signs with a test key; each listener runs `node dist/cli.js listener`
 * with a store of its own (a chroot store under its temp dir, same logical
 * /nix/store) that may only substitute from that cache and trusts only
 * that key, so nix fetches and checks every deployed closure. Its profile,
 * current and booted links live in its temp dir (`root`), where the
 * fixture's switch-to-configuration records what it was asked to do.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { CLI, jsonLines, runCli } from "./cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess } from "./daemon.js";
import { createFixtureFlake, type FixtureFlake } from "./flake.js";
import { startNatsServer, type NatsServer, type Role } from "./nats-server.js";

const run = promisify(execFile);

export interface DeployFixture {
  /** Its temp dir: the cache and its signing key. */
  dir: string;
  /** The builder's name for the systems flake (listeners' `repo.name`). */
  repo: string;
  nats: NatsServer;
  flake: FixtureFlake;
  builder: BuilderProcess;
  cache: string;
  publicKey: string;
  /** The builder builds these hosts of the fixture flake (repo `repo`) one by one; their toplevels by host. */
  build(hosts: string[]): Promise<Record<string, string>>;
  stop(): Promise<void>;
}

/**
 * `systems`: another NixOS-shaped fixture flake than system-flake (a
 * benchmark's fleet, the demo's hosts); `repo`: the builder's name for it.
 */
export async function startDeployFixture(systems?: FixtureFlake, repo = "systems"): Promise<DeployFixture> {
  const dir = await mkdtemp(join(tmpdir(), "hd-deploy-"));
  const cache = join(dir, "cache");
  const [nats, flake] = await Promise.all([startNatsServer(), systems ?? createFixtureFlake("system-flake")]);
  await run("nix-store", ["--generate-binary-cache-key", "homelab-deploy-test-1", join(dir, "key.sec"), join(dir, "key.pub")]);
  const publicKey = (await readFile(join(dir, "key.pub"), "utf8")).trim();
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { [repo]: flake.url },
    build: { timeout: "5m", copyTo: `file://${cache}?secret-key=${join(dir, "key.sec")}`, copyTimeout: "2m" },
  });
  return {
    dir,
    repo,
    nats,
    flake,
    builder,
    cache,
    publicKey,
    async build(hosts) {
      const toplevels: Record<string, string> = {};
      for (const host of hosts) {
        const result = await runCli(["build", repo, host, "--json"], {
          HOMELAB_DEPLOY_NATS_URL: nats.url,
          HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile,
        });
        const finished = jsonLines(result.stdout).find((m) => m.type === "host_finished");
        if (result.exitCode !== 0 || !finished || !(finished["copy"] as { ok?: boolean } | undefined)?.ok) {
          throw new Error(`building ${host} failed:\n${result.stdout}\n${result.stderr}`);
        }
        toplevels[host] = finished["storePath"] as string;
      }
      return toplevels;
    },
    async stop() {
      await builder.stop();
      await nats.stop();
    },
  };
}

export interface ListenerSetup {
  host: string;
  tier?: string;
  roles?: string[];
  /** The NATS user it connects as (default: its tier's listener user). */
  role?: Role;
  /** Default: a flake URL that does not exist, so any evaluation on the host fails. */
  repoUrl?: string;
  health?: Record<string, unknown>;
  rollback?: boolean;
  /**
   * Use the shared store, without substituters, instead of a store of its
   * own: for deploys evaluated on the host (a chroot store cannot build
   * without a sandbox).
   */
  sharedStore?: boolean;
  extra?: Record<string, unknown>;
}

export interface ListenerHost {
  /** Its temp dir: profile, current, booted, the activations record, knobs, state. */
  root: string;
  /** The listener's own store (a chroot store): where fetched paths land. */
  storeRoot: string;
  env: Record<string, string>;
  configFile: string;
  process: BuilderProcess;
  /** Starts the listener (again), on the same config and state. */
  start(): Promise<BuilderProcess>;
  /** Fetches `toplevel` into this host's store and makes it the installed, running and booted system (generation 1). */
  install(toplevel: string): Promise<void>;
  current(): Promise<string | null>;
  booted(): Promise<string | null>;
  profile(): Promise<string | null>;
  /** What the fixture's switch-to-configuration was asked to do, in order: [action, system]. */
  activations(): Promise<Array<[string, string]>>;
  /** Lists `toplevel` in the knob file `knob` (test/fixtures/system-flake/flake.nix says what each does). */
  knob(knob: "fail-switch" | "pause-nats" | "kill-listener" | "slow-switch", toplevel: string): Promise<void>;
  /** Whether this host's own store has the path (fetched from the cache). */
  hasPath(path: string): boolean;
  /** Runs nix-store / nix-env on this host's store. */
  nix(bin: "nix-store" | "nix-env", args: string[]): Promise<unknown>;
}

/** A listener user per tier in test/support/nats-server.ts. */
function listenerRole(tier: string): Role {
  if (tier === "test") return "testListener";
  if (tier === "prod") return "prodListener";
  throw new Error(`no listener user for tier ${tier}`);
}

export async function createListener(fixture: DeployFixture, setup: ListenerSetup): Promise<ListenerHost> {
  const root = await mkdtemp(join(tmpdir(), `hd-listener-${setup.host}-`));
  const storeRoot = join(root, "store");
  await mkdir(join(root, "profiles"), { recursive: true });
  await writeFile(join(root, "activations"), "");
  const tier = setup.tier ?? "test";
  const nixConfig = setup.sharedStore
    ? (process.env["NIX_CONFIG"] ?? "")
    : [
        process.env["NIX_CONFIG"] ?? "",
        `store = local?root=${storeRoot}`,
        `substituters = file://${fixture.cache}`,
        `trusted-public-keys = ${fixture.publicKey}`,
        "require-sigs = true",
        // No build users: see test/support/nix-store.ts.
        "build-users-group =",
      ].join("\n");
  const env = { NIX_CONFIG: nixConfig, HOMELAB_DEPLOY_FIXTURE_ROOT: root };
  const config = {
    host: setup.host,
    tier,
    roles: setup.roles ?? [],
    repo: { name: fixture.repo, url: setup.repoUrl ?? `git+file://${join(root, "no-such-repo")}` },
    nats: { url: fixture.nats.url, nkeySeedFile: fixture.nats.identities[setup.role ?? listenerRole(tier)].seedFile },
    stateDir: join(root, "state"),
    metrics: { listen: "127.0.0.1:0" },
    health: { commands: [["/bin/true"]], timeout: "20s", confirmTimeout: "20s", ...setup.health },
    rollback: setup.rollback ?? true,
    system: { profile: join(root, "profiles", "system"), current: join(root, "current"), booted: join(root, "booted") },
    timeouts: { fetch: "2m", build: "2m", switch: "1m" },
    // The fixture systems carry the listener's unit, as NixOS's /etc does.
    selfUnit: join(root, "current", "etc", "systemd", "system", "homelab-deploy-listener.service"),
    killGrace: "1s",
    log: { level: "debug" },
    ...setup.extra,
  };
  const configFile = join(root, "listener.json");
  await writeFile(configFile, JSON.stringify(config, null, 2));
  const nix = (bin: string, args: string[]) => run(bin, args, { env: { ...process.env, NIX_CONFIG: nixConfig } });
  const target = (link: string) => readlink(join(root, link)).catch(() => null);
  const host: ListenerHost = {
    root,
    storeRoot,
    env,
    configFile,
    process: undefined as unknown as BuilderProcess,
    async start() {
      host.process = await spawnBuilder(configFile, env, { command: [process.execPath, CLI, "listener", "--config", configFile], readyMessage: "listener ready" });
      return host.process;
    },
    async install(toplevel) {
      await nix("nix-store", ["--realise", toplevel]);
      await nix("nix-env", ["-p", join(root, "profiles", "system"), "--set", toplevel]);
      for (const link of ["current", "booted"]) {
        await rm(join(root, link), { force: true });
        await symlink(toplevel, join(root, link));
      }
    },
    current: () => target("current"),
    booted: () => target("booted"),
    async profile() {
      const generation = await target("profiles/system");
      return generation === null ? null : readlink(join(root, "profiles", generation)).catch(() => null);
    },
    async activations() {
      const text = await readFile(join(root, "activations"), "utf8");
      return text
        .split("\n")
        .filter(Boolean)
        .map((line) => line.split(" ") as [string, string]);
    },
    async knob(knob, toplevel) {
      await writeFile(join(root, knob), `${toplevel}\n`, { flag: "a" });
    },
    hasPath: (path) => existsSync(join(storeRoot, path)),
    nix,
  };
  return host;
}
