/**
 * A real nats-server (Debian package `nats-server`) on a loopback port,
 * configured like production: the DEPLOY account of the plan with NKey users
 * and its permission table (docs/nats-permissions.md shows the same).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createUser } from "nkeys.js";

export interface Permissions {
  publish: string[];
  subscribe: string[];
}

/** The plan's permission table, plus the scheduler user of Phase 5. */
export const PLAN_PERMISSIONS = {
  builder: { publish: ["build.responses.>"], subscribe: ["build.>"] },
  testDeployer: {
    publish: ["deploy.test.>", "deploy.discover", "build.>"],
    subscribe: ["deploy.responses.>", "deploy.discover", "build.responses.>"],
  },
  adminDeployer: { publish: ["deploy.>", "build.>"], subscribe: ["deploy.>", "build.responses.>"] },
  scheduler: { publish: ["build.>"], subscribe: ["build.responses.>"] },
  /** Deploy listeners (issue 21), one user per tier: they take their tier's requests and only answer. */
  testListener: { publish: ["deploy.responses.>"], subscribe: ["deploy.test.>", "deploy.discover"] },
  prodListener: { publish: ["deploy.responses.>"], subscribe: ["deploy.prod.>", "deploy.discover"] },
  /** Not in the plan (and not in the docs): a user with no rights under build.>, to see the server refuse it. */
  outsider: { publish: ["other.>"], subscribe: ["other.>"] },
} satisfies Record<string, Permissions>;

export type Role = keyof typeof PLAN_PERMISSIONS;

export interface Identity {
  role: Role;
  seed: string;
  publicKey: string;
  seedFile: string;
}

/** Who each user is, as a comment above it in the server config (and in docs/nats-permissions.md). */
export const ROLE_COMMENTS: Record<Role, string> = {
  builder: "Builder (homelab-deploy builder on nix-cache02): takes requests on build.>, answers on build.responses.>",
  testDeployer: "Test deployer: deploys test hosts, requests builds",
  adminDeployer: "Admin deployer: deploys everything, requests builds",
  scheduler: "Scheduler (scheduled-build timer on nix-cache02): requests builds, reads their answers",
  testListener: "Deploy listener of the test tier (homelab-deploy listener on each test host): takes deploy.test.> and deploy.discover, answers on deploy.responses.>",
  prodListener: "Deploy listener of the prod tier (homelab-deploy listener on each prod host): takes deploy.prod.> and deploy.discover, answers on deploy.responses.>",
  outsider: "Not in the plan: a user with no rights under build.>",
};

/** The plan's users, in the order docs/nats-permissions.md lists them. */
export const PLAN_ROLES = ["builder", "testDeployer", "adminDeployer", "scheduler", "testListener", "prodListener"] as const satisfies readonly Role[];

export interface AccountUser {
  role?: Role;
  publicKey: string;
  permissions: Permissions;
}

function quote(list: string[]): string {
  return `[${list.map((s) => JSON.stringify(s)).join(", ")}]`;
}

function userEntry(user: AccountUser): string {
  const comment = user.role ? [`      # ${ROLE_COMMENTS[user.role]}`] : [];
  return [
    ...comment,
    "      {",
    `        nkey: ${JSON.stringify(user.publicKey)}`,
    "        permissions: {",
    `          publish: { allow: ${quote(user.permissions.publish)} }`,
    `          subscribe: { allow: ${quote(user.permissions.subscribe)} }`,
    "        }",
    "      }",
  ].join("\n");
}

/** The DEPLOY account block: what docs/nats-permissions.md shows and every test server runs. */
export function deployAccountConfig(users: AccountUser[]): string {
  return `accounts {
  DEPLOY {
    users: [
${users.map(userEntry).join("\n")}
    ]
  }
}
`;
}

/** docs/nats-permissions.md's block: the plan's users, with placeholders where each public key goes. */
export function documentedAccountConfig(): string {
  return deployAccountConfig(PLAN_ROLES.map((role) => ({ role, publicKey: publicKeyPlaceholder(role), permissions: PLAN_PERMISSIONS[role] })));
}

export function publicKeyPlaceholder(role: Role): string {
  return `<${role} public key>`;
}

export function natsServerConfig(port: number | "-1", users: AccountUser[], accounts = deployAccountConfig(users), maxPayload = 1048576): string {
  return `listen: "127.0.0.1:${port}"
max_payload: ${maxPayload}
${accounts}`;
}

export interface NatsServer {
  url: string;
  port: number;
  dir: string;
  identities: Record<Role, Identity>;
  /** The running server's process id (a test pauses it with SIGSTOP to cut NATS off without closing connections). */
  pid(): number;
  /** Everything the server logged so far (permission violations show up here). */
  log(): string;
  /** With `monitor`: the base URL of the monitoring endpoints (e.g. `${monitorUrl}/connz`). */
  monitorUrl?: string;
  /** Kills the server (SIGKILL unless told otherwise). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port with the same users. */
  start(): Promise<void>;
  /**
   * Gives `role` a new key pair (seed file rewritten, `identities[role]`
   * updated) and has the running server reload its config, as an operator
   * rotating a key does. Connections with the old key are closed by the server.
   * `beforeReload` runs once the new key exists and before the server knows it.
   */
  rotate(role: Role, options?: { beforeReload?: (identity: Identity) => void | Promise<void> }): Promise<Identity>;
}

async function makeIdentity(dir: string, role: Role): Promise<Identity> {
  const kp = createUser();
  const seed = new TextDecoder().decode(kp.getSeed());
  const seedFile = join(dir, `${role}.nk`);
  // A trailing newline, as `nk -gen user > file` writes it.
  await writeFile(seedFile, `${seed}\n`, { mode: 0o600 });
  return { role, seed, publicKey: kp.getPublicKey(), seedFile };
}

async function makeIdentities(dir: string): Promise<Record<Role, Identity>> {
  const entries = await Promise.all((Object.keys(PLAN_PERMISSIONS) as Role[]).map(async (role) => [role, await makeIdentity(dir, role)] as const));
  return Object.fromEntries(entries) as Record<Role, Identity>;
}

/** Resolves when `output()` matches `pattern`, checking whenever `child` writes to stderr. */
function waitForOutput(child: ChildProcess, output: () => string, pattern: RegExp, what: string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const match = pattern.exec(output());
      if (!match) return false;
      clearTimeout(timer);
      child.stderr?.off("data", check);
      child.off("exit", onExit);
      resolve(match);
      return true;
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited with ${code} before ${what}:\n${output()}`));
    };
    const timer = setTimeout(() => reject(new Error(`nats-server: timed out waiting for ${what}:\n${output()}`)), 10_000);
    child.stderr?.on("data", check);
    child.once("exit", onExit);
    check();
  });
}

export interface NatsServerOptions {
  /**
   * The accounts block to run instead of the generated one, e.g. the one
   * docs/nats-permissions.md shows; `{role}` public keys are filled in by the caller.
   */
  accounts?: (identities: Record<Role, Identity>) => string;
  /** The server's max_payload in bytes (default 1 MiB, nats-server's own default). */
  maxPayload?: number;
  /** Also serve the HTTP monitoring endpoints (/connz …) on a free loopback port: `monitorUrl`. */
  monitor?: boolean;
}

export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = await mkdtemp(join(tmpdir(), "hd-nats-"));
  const identities = await makeIdentities(dir);
  const configFile = join(dir, "nats.conf");
  let child: ChildProcess | undefined;
  let output = "";
  let port: number | "-1" = "-1";
  const writeConfig = async () => {
    const users = Object.values(identities).map((id) => ({ role: id.role, publicKey: id.publicKey, permissions: PLAN_PERMISSIONS[id.role] }));
    const accounts = options.accounts?.(identities) ?? deployAccountConfig(users);
    await writeFile(configFile, natsServerConfig(port, users, accounts, options.maxPayload));
  };
  const launch = async () => {
    await writeConfig();
    output = "";
    const running = spawn("nats-server", ["-c", configFile, ...(options.monitor ? ["-m", "-1"] : [])], { stdio: ["ignore", "ignore", "pipe"] });
    child = running;
    running.stderr?.setEncoding("utf8");
    running.stderr?.on("data", (chunk: string) => (output += chunk));
    const ready = await waitForOutput(running, () => output, /Listening for client connections on [\d.]+:(\d+)[\s\S]*Server is ready/, "start-up");
    port = Number(ready[1]);
    return port;
  };
  const first = await launch();
  const monitorPort = options.monitor ? /Starting http monitor on [\d.]+:(\d+)/.exec(output)?.[1] : undefined;
  const server: NatsServer = {
    url: `nats://127.0.0.1:${first}`,
    port: first,
    ...(monitorPort ? { monitorUrl: `http://127.0.0.1:${monitorPort}` } : {}),
    dir,
    identities,
    log: () => output,
    pid() {
      if (!child?.pid || child.exitCode !== null) throw new Error("nats-server is not running");
      return child.pid;
    },
    async stop(signal = "SIGKILL") {
      const running = child;
      if (!running || running.exitCode !== null) return;
      const exited = new Promise((resolve) => running.once("exit", resolve));
      running.kill(signal);
      await exited;
    },
    async start() {
      await launch();
    },
    async rotate(role, rotateOptions = {}) {
      const running = child;
      if (!running || running.exitCode !== null) throw new Error("nats-server is not running");
      identities[role] = await makeIdentity(dir, role);
      // An operator stores the new seed (in Vault) before the server stops accepting the old key.
      await rotateOptions.beforeReload?.(identities[role]);
      await writeConfig();
      const from = output.length;
      running.kill("SIGHUP");
      await waitForOutput(running, () => output.slice(from), /Reloaded server configuration/, "the config reload");
      return identities[role];
    },
  };
  return server;
}
