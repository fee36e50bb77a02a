/**
 * The production permission model: a real nats-server running exactly the
 * DEPLOY account block docs/nats-permissions.md shows (test keys filled in),
 * a real builder daemon, the real CLI as each requester, and raw
 * connections to see what the server refuses.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { NatsConnection, NatsError } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, jsonLines, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake } from "../support/flake.js";
import { Inbox, connectAs, sleep } from "../support/nats-client.js";
import {
  PLAN_ROLES,
  documentedAccountConfig,
  publicKeyPlaceholder,
  startNatsServer,
  type Identity,
  type NatsServer,
  type Role,
} from "../support/nats-server.js";

type PermissionRefusal = { operation: string; subject: string };

let documented: string;
let nats: NatsServer;
let builder: BuilderProcess;
const connections: NatsConnection[] = [];

async function documentedBlock(): Promise<string> {
  const page = await readFile(join(ROOT, "docs", "nats-permissions.md"), "utf8");
  const block = /```conf\n([\s\S]*?)```/.exec(page)?.[1];
  if (!block) throw new Error("docs/nats-permissions.md has no ```conf block");
  return block;
}

function withKeys(block: string, identities: Record<Role, Identity>): string {
  return PLAN_ROLES.reduce((text, role) => text.replace(publicKeyPlaceholder(role), identities[role].publicKey), block);
}

async function connect(role: Role): Promise<NatsConnection> {
  const nc = await connectAs(nats.url, nats.identities[role]);
  connections.push(nc);
  return nc;
}

/** The permission errors the server sends this connection. */
function refusals(nc: NatsConnection): PermissionRefusal[] {
  const seen: PermissionRefusal[] = [];
  void (async () => {
    for await (const status of nc.status()) {
      const context = (status as { permissionContext?: PermissionRefusal }).permissionContext;
      if (status.type === "error" && context) seen.push({ operation: context.operation, subject: context.subject });
    }
  })();
  return seen;
}

async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  for (const started = Date.now(); !condition(); await sleep(25)) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
  }
}

beforeAll(async () => {
  documented = await documentedBlock();
  const [server, flake] = await Promise.all([startNatsServer({ accounts: (ids) => withKeys(documented, ids) }), createFixtureFlake()]);
  nats = server;
  builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url } });
});

afterAll(async () => {
  await Promise.all(connections.map((nc) => nc.close()));
  await builder?.stop();
  await nats?.stop();
});

describe("docs/nats-permissions.md", () => {
  it("shows exactly the DEPLOY account every test nats-server runs", () => {
    expect(documented).toBe(documentedAccountConfig());
  });

  it("is what this server runs, with the plan's four users, the two tiers' listeners and nobody else", async () => {
    const running = await readFile(join(nats.dir, "nats.conf"), "utf8");
    expect(running).toContain(withKeys(documented, nats.identities));
    expect(running).not.toMatch(/<\w+ public key>/);
    expect(running.match(/nkey: "U[A-Z0-9]{55}"/g)).toHaveLength(6);
    expect(running).not.toContain(nats.identities.outsider.publicKey);
  });
});

describe("the documented permissions", () => {
  it.each(["testDeployer", "adminDeployer", "scheduler"] as const)("let the %s request a build and read its answers", async (role) => {
    const result = await runCli(["build", "fixture", "alpha", "--json"], {
      HOMELAB_DEPLOY_NATS_URL: nats.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities[role].seedFile,
    });
    expect(result.exitCode).toBe(0);
    const events = jsonLines(result.stdout).filter((m) => m.type !== "progress" && m.type !== "heartbeat");
    expect(events.map((m) => m.type)).toEqual(["accepted", "job_started", "host_started", "host_finished", "completed"]);
  });

  it("refuse the builder's publishes outside build.responses.>", async () => {
    const asBuilder = await connect("builder");
    const refused = refusals(asBuilder);
    const inbox = await Inbox.open(await connect("scheduler"));
    const deploys: string[] = [];
    const admin = await connect("adminDeployer");
    admin.subscribe("deploy.>", { callback: (_err, msg) => deploys.push(msg.subject) });
    await admin.flush();

    // A build request the running builder would answer, a deploy request, and an answer.
    asBuilder.publish("build.fixture.alpha", new Uint8Array(), { reply: inbox.subject });
    asBuilder.publish("deploy.test.alpha", new TextEncoder().encode("{}"));
    asBuilder.publish(inbox.subject, new TextEncoder().encode(JSON.stringify({ type: "probe" })));
    await asBuilder.flush();

    await inbox.waitFor((m) => m.type === "probe", 5_000);
    await until(() => refused.length >= 2, "the server's permission errors");
    expect(refused).toEqual(
      expect.arrayContaining([
        { operation: "publish", subject: "build.fixture.alpha" },
        { operation: "publish", subject: "deploy.test.alpha" },
      ]),
    );
    expect(refused).toHaveLength(2);
    // Neither refused message went anywhere: the builder never saw the request, the admin no deploy.
    await sleep(500);
    expect(inbox.messages).toEqual([{ type: "probe" }]);
    expect(deploys).toEqual([]);
    expect(asBuilder.isClosed()).toBe(false);
  });

  it.each(["testDeployer", "scheduler"] as const)("refuse the %s a subscription to build.> (requests stay private)", async (role) => {
    const nc = await connect(role);
    const refused = refusals(nc);
    const error = await new Promise<NatsError | null>((resolve) => {
      nc.subscribe("build.>", { callback: (err) => resolve(err) });
      setTimeout(() => resolve(null), 5_000);
    });
    expect(error?.code).toBe("PERMISSIONS_VIOLATION");
    expect(error?.message).toMatch(/Permissions Violation for Subscription to "build\.>"/);
    await until(() => refused.length >= 1, "the server's permission error");
    expect(refused).toEqual([{ operation: "subscription", subject: "build.>" }]);
  });
});

describe("the listener users", () => {
  it("take their own tier's deploy requests and deploy.discover, and may only answer under deploy.responses.>", async () => {
    const listener = await connect("testListener");
    const refused = refusals(listener);
    const got: string[] = [];
    for (const subject of ["deploy.test.>", "deploy.discover", "deploy.prod.>", "build.>"]) {
      listener.subscribe(subject, { callback: (err, msg) => (err ? undefined : got.push(msg.subject)) });
    }
    await listener.flush();
    const deployer = await connect("testDeployer");
    const answers = await Inbox.open(deployer, "deploy.responses.");
    listener.publish("deploy.test.web1", new Uint8Array());
    listener.publish("build.fixture.alpha", new Uint8Array(), { reply: "build.responses.x" });
    listener.publish(answers.subject, new TextEncoder().encode(JSON.stringify({ type: "probe" })));
    deployer.publish("deploy.test.web1", new Uint8Array(), { reply: answers.subject });
    deployer.publish("deploy.discover", new Uint8Array(), { reply: answers.subject });
    await deployer.flush();
    await answers.waitFor((m) => m.type === "probe", 5_000);
    await until(() => refused.length >= 4 && got.length >= 2, "the server's permission errors and the deliveries");
    expect(refused).toEqual(
      expect.arrayContaining([
        { operation: "subscription", subject: "deploy.prod.>" },
        { operation: "subscription", subject: "build.>" },
        { operation: "publish", subject: "deploy.test.web1" },
        { operation: "publish", subject: "build.fixture.alpha" },
      ]),
    );
    expect(got.sort()).toEqual(["deploy.discover", "deploy.test.web1"]);
  });
});

describe("a user outside the plan", () => {
  it("can neither subscribe to build.> nor request a build", async () => {
    // The outsider is not in the documented block: use a test server with the plan's users plus it.
    const other = await startNatsServer();
    try {
      const nc = await connectAs(other.url, other.identities.outsider);
      try {
        const refused = refusals(nc);
        nc.subscribe("build.>", { callback: () => undefined });
        nc.publish("build.fixture.alpha", new Uint8Array(), { reply: "build.responses.outsider" });
        await nc.flush();
        await until(() => refused.length >= 2, "the server's permission errors");
        expect(refused).toEqual(
          expect.arrayContaining([
            { operation: "subscription", subject: "build.>" },
            { operation: "publish", subject: "build.fixture.alpha" },
          ]),
        );
      } finally {
        await nc.close();
      }
    } finally {
      await other.stop();
    }
  });
});
