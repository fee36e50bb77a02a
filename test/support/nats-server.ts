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
  /** Not in the plan: a user with no rights under build.>, to see the server refuse it. */
  outsider: { publish: ["other.>"], subscribe: ["other.>"] },
} satisfies Record<string, Permissions>;

export type Role = keyof typeof PLAN_PERMISSIONS;

export interface Identity {
  role: Role;
  seed: string;
  publicKey: string;
  seedFile: string;
}

function quote(list: string[]): string {
  return `[${list.map((s) => JSON.stringify(s)).join(", ")}]`;
}

export function natsServerConfig(port: number | "-1", users: Array<{ publicKey: string; permissions: Permissions }>): string {
  const userLines = users
    .map(
      (u) =>
        `      { nkey: ${JSON.stringify(u.publicKey)}, permissions: { publish: { allow: ${quote(u.permissions.publish)} }, subscribe: { allow: ${quote(u.permissions.subscribe)} } } }`,
    )
    .join("\n");
  return `listen: "127.0.0.1:${port}"
max_payload: 1048576
accounts {
  DEPLOY {
    users: [
${userLines}
    ]
  }
}
`;
}

export interface NatsServer {
  url: string;
  port: number;
  dir: string;
  identities: Record<Role, Identity>;
  /** Everything the server logged so far (permission violations show up here). */
  log(): string;
  /** Kills the server (SIGKILL unless told otherwise). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port with the same users. */
  start(): Promise<void>;
}

async function makeIdentities(dir: string): Promise<Record<Role, Identity>> {
  const entries = await Promise.all(
    (Object.keys(PLAN_PERMISSIONS) as Role[]).map(async (role) => {
      const kp = createUser();
      const seed = new TextDecoder().decode(kp.getSeed());
      const seedFile = join(dir, `${role}.nk`);
      // A trailing newline, as `nk -gen user > file` writes it.
      await writeFile(seedFile, `${seed}\n`, { mode: 0o600 });
      return [role, { role, seed, publicKey: kp.getPublicKey(), seedFile }] as const;
    }),
  );
  return Object.fromEntries(entries) as Record<Role, Identity>;
}

function waitForListening(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${output}`)), 10_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /Listening for client connections on [\d.]+:(\d+)/.exec(output);
      if (match && output.includes("Server is ready")) {
        clearTimeout(timer);
        child.stderr?.off("data", onData);
        resolve(Number(match[1]));
      }
    };
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited with ${code}:\n${output}`));
    });
  });
}

export async function startNatsServer(): Promise<NatsServer> {
  const dir = await mkdtemp(join(tmpdir(), "hd-nats-"));
  const identities = await makeIdentities(dir);
  const users = Object.values(identities).map((id) => ({ publicKey: id.publicKey, permissions: PLAN_PERMISSIONS[id.role] }));
  let child: ChildProcess | undefined;
  let port: number | "-1" = "-1";
  let log = "";
  const launch = async () => {
    const configFile = join(dir, "nats.conf");
    await writeFile(configFile, natsServerConfig(port, users));
    child = spawn("nats-server", ["-c", configFile], { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr?.on("data", (chunk: Buffer) => (log += chunk.toString()));
    const actual = await waitForListening(child);
    port = actual;
    return actual;
  };
  const first = await launch();
  const server: NatsServer = {
    url: `nats://127.0.0.1:${first}`,
    port: first,
    dir,
    identities,
    log: () => log,
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
  };
  return server;
}
