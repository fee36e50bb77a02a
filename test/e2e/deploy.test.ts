/**
 * The deployer (`homelab-deploy deploy`) end to end: a real nats-server
 * with the plan's permissions and the listener users, the real builder
 * building the fixture systems (test/fixtures/system-flake) into a signed
 * file:// cache, real listeners fetching from it into stores of their own
 * (test/support/listener.ts), and the real CLI as the test deployer.
 * Hosts: web1 (role web) and web2 in tier test, db1 in prod. No listener
 * can evaluate (their repo URL names no flake), so every deploy here is the
 * builder's prebuilt system or fails.
 */
import { chmod, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { connectAs } from "../support/nats-client.js";
import { createListener, startDeployFixture, type DeployFixture, type ListenerHost, type ListenerSetup } from "../support/listener.js";

const REPO = "systems";
let fixture: DeployFixture;
const hosts = new Map<string, ListenerHost>();

function deployer(identity: "testDeployer" | "adminDeployer" = "testDeployer"): Record<string, string> {
  return {
    HOMELAB_DEPLOY_NATS_URL: fixture.nats.url,
    HOMELAB_DEPLOY_NKEY_SEED_FILE: fixture.nats.identities[identity].seedFile,
    HOMELAB_DEPLOY_ACK_TIMEOUT: "10s",
  };
}

const current = (host: string) => hosts.get(host)!.current();
const activations = async (host: string) => (await hosts.get(host)!.activations()).map((a) => a.join(" "));

/** The builder's newest successful default-branch build of each host, from `history --json`. */
async function builtPaths(): Promise<Record<string, string>> {
  const result = await runCli(["history", REPO, "--json"], deployer());
  expect(result.exitCode, result.stderr).toBe(0);
  const [history] = jsonLines(result.stdout) as unknown as Array<{ entries: Array<{ host: string; status: string; storePath?: string; ref: string | null }> }>;
  const paths: Record<string, string> = {};
  for (const entry of history!.entries) if (entry.status === "success" && entry.ref === null && entry.storePath && !paths[entry.host]) paths[entry.host] = entry.storePath;
  return paths;
}

async function listener(host: string, installed: string, setup: Partial<ListenerSetup>): Promise<ListenerHost> {
  const created = await createListener(fixture, { host, ...setup });
  await created.install(installed);
  await created.start();
  return created;
}

beforeAll(async () => {
  fixture = await startDeployFixture();
  // What every host runs at the start; then the builder builds a newer revision of each.
  const v1 = await fixture.build(["web1", "web2", "db1"]);
  await fixture.flake.bump();
  await fixture.build(["web1", "web2", "db1"]);
  const started = await Promise.all([
    listener("web1", v1["web1"]!, { tier: "test", roles: ["web"] }),
    // Heartbeats every second (default 30 s), as the builder's tests set theirs: see the heartbeat test.
    listener("web2", v1["web2"]!, { tier: "test", extra: { heartbeatInterval: "1s" } }),
    listener("db1", v1["db1"]!, { tier: "prod" }),
  ]);
  for (const [i, host] of ["web1", "web2", "db1"].entries()) hosts.set(host, started[i]!);
}, 300_000);

afterAll(async () => {
  for (const host of hosts.values()) await host.process?.stop("SIGKILL").catch(() => undefined);
  await fixture?.stop();
});

describe("homelab-deploy deploy", () => {
  it("--list shows every host behind the builder's newest build, what it runs and booted", async () => {
    const built = await builtPaths();
    const result = await runCli(["deploy", "--list", "--json"], deployer());
    expect(result.exitCode, result.stderr).toBe(0);
    const rows = jsonLines(result.stdout) as unknown as Array<Record<string, unknown>>;
    expect(rows.map((r) => [r["host"], r["tier"], r["behind"]])).toEqual([
      ["db1", "prod", true],
      ["web1", "test", true],
      ["web2", "test", true],
    ]);
    const web1 = rows.find((r) => r["host"] === "web1")!;
    expect(web1).toMatchObject({ roles: ["web"], current: await current("web1"), booted: await current("web1"), built: built["web1"], rebootRequired: false, busy: null });
    const table = await runCli(["deploy", "--list", "test"], deployer());
    expect(table.exitCode).toBe(0);
    expect(table.stdout).toMatch(/^web1 +test +web +behind /m);
    expect(table.stdout).not.toContain("db1");
  });

  it("--list asks the builder for the hosts' builds while it is still gathering listeners", async () => {
    // A listener that answers deploy.discover only once the deployer has asked
    // the builders for their history: it is in the list only if discovery was
    // still open then. Asked one after the other, discovery has ended first.
    const seen: string[] = [];
    const sniffer: NatsConnection = await connectAs(fixture.nats.url, fixture.nats.identities.builder);
    const late: NatsConnection = await connectAs(fixture.nats.url, fixture.nats.identities.testListener);
    try {
      let discoverReply: string | undefined;
      const answer = () => {
        if (!discoverReply || !seen.includes("history")) return;
        seen.push("late answered");
        const body = { type: "discover", host: "late", tier: "test", roles: [], repo: { name: REPO, url: "git+file:///nonexistent" }, current: null, booted: null, rebootRequired: false, busy: null, version: "0.0.0" };
        late.publish(discoverReply, JSON.stringify(body));
        discoverReply = undefined;
      };
      sniffer.subscribe("build.history", { callback: () => (seen.push("history"), answer()) });
      late.subscribe("deploy.discover", { callback: (_err, msg) => ((discoverReply = msg.reply), answer()) });
      await Promise.all([sniffer.flush(), late.flush()]);
      const result = await runCli(["deploy", "--list", "test", "--json"], deployer());
      expect(result.exitCode, result.stderr).toBe(0);
      expect(seen.slice(0, 2)).toEqual(["history", "late answered"]);
      expect(jsonLines(result.stdout).map((r) => r["host"])).toEqual(["late", "web1", "web2"]);
    } finally {
      await Promise.all([sniffer.close(), late.close()]);
    }
  });

  it("deploy test all switches each test listener to exactly the builder's store path, prebuilt, and leaves prod alone", async () => {
    const built = await builtPaths();
    const dbBefore = await current("db1");
    const result = await runCli(["deploy", "test", "all", "--json"], deployer(), 300_000);
    expect(result.exitCode, result.stdout + result.stderr).toBe(0);
    const lines = jsonLines(result.stdout);
    for (const host of ["web1", "web2"]) {
      expect(lines).toContainEqual(expect.objectContaining({ type: "plan", host, toplevel: built[host], prebuilt: true }));
      expect(lines).toContainEqual(expect.objectContaining({ type: "started", host, toplevel: built[host], prebuilt: true }));
      expect(lines).toContainEqual(expect.objectContaining({ type: "completed", host, status: "success", toplevel: built[host] }));
      expect(await current(host)).toBe(built[host]);
      expect(await activations(host)).toEqual([`switch ${built[host]}`]);
      // Per host, the listener's messages arrive in seq order.
      const seqs = lines.filter((l) => l["host"] === host && typeof l["seq"] === "number").map((l) => l["seq"] as number);
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    }
    expect(await current("db1")).toBe(dbBefore);
    expect(await activations("db1")).toEqual([]);

    const listed = jsonLines((await runCli(["deploy", "--list", "test", "--json"], deployer())).stdout);
    expect(listed.map((r) => [r["host"], r["behind"]])).toEqual([
      ["web1", false],
      ["web2", false],
    ]);
  });

  it("the test deployer cannot deploy prod: the CLI says the server refused it, exit 2, nothing switched", async () => {
    const before = await current("db1");
    const result = await runCli(["deploy", "prod", "db1"], deployer("testDeployer"));
    expect(result.exitCode, result.stdout + result.stderr).toBe(2);
    expect(result.stderr).toMatch(/NATS refused the request on deploy\.prod\.db1/);
    expect(fixture.nats.log()).toMatch(/Publish Violation - Nkey "U[A-Z0-9]+", Subject "deploy\.prod\.db1"/);
    expect(await current("db1")).toBe(before);
    expect(await activations("db1")).toEqual([]);
  });

  it("a discovered host that never answers the deploy is reported as such (exit 1); the others deploy", async () => {
    // A listener that answered deploy.discover and then stopped answering: it still holds its
    // subscriptions (no "no responders"), as a hung listener does.
    const ghost: NatsConnection = await connectAs(fixture.nats.url, fixture.nats.identities.testListener);
    try {
      ghost.subscribe("deploy.discover", {
        callback: (_err, msg) => {
          const answer = { type: "discover", host: "ghost", tier: "test", roles: ["web"], repo: { name: REPO, url: "git+file:///nonexistent" }, current: null, booted: null, rebootRequired: false, busy: null, version: "0.0.0" };
          if (msg.reply) ghost.publish(msg.reply, JSON.stringify(answer));
        },
      });
      ghost.subscribe("deploy.test.ghost", { callback: () => undefined });
      await ghost.flush();
      const result = await runCli(["deploy", "test", "role:web", "--action", "test", "--ack-timeout", "3s"], deployer(), 120_000);
      expect(result.exitCode, result.stdout + result.stderr).toBe(1);
      expect(result.stdout).toContain("ghost: the builder has never built it; evaluating on the host (test)");
      expect(result.stdout).toMatch(/^ghost: no answer: no listener answered on deploy\.test\.ghost within 3s/m);
      expect(result.stdout).toMatch(/^web1 +success +test /m);
      expect(result.stdout).toMatch(/^ghost +no answer /m);
      expect((await activations("web1")).at(-1)).toMatch(/^test \/nix\/store\//);
    } finally {
      await ghost.close();
    }
  });

  it("a switch that stays silent longer than the deployer's --idle-timeout completes: the listener's heartbeats keep the deployer waiting", async () => {
    const built = await builtPaths();
    const web2 = hosts.get("web2")!;
    // The fixture's switch sleeps 5 s; the deployer gives up after 3 s of silence,
    // so only heartbeats (every second from web2) carry it to the final answer.
    await web2.knob("slow-switch", built["web2"]!);
    const result = await runCli(["deploy", "test", "web2", "--json", "--idle-timeout", "3s"], deployer(), 120_000);
    expect(result.exitCode, result.stdout + result.stderr).toBe(0);
    const lines = jsonLines(result.stdout).filter((l) => l["host"] === "web2");
    const activating = lines.findIndex((l) => l.type === "activating");
    const completed = lines.findIndex((l) => l.type === "completed");
    expect(activating).toBeGreaterThan(-1);
    expect(lines[completed]).toMatchObject({ status: "success", toplevel: built["web2"] });
    // During the switch: heartbeats of phase activating, each a snapshot repeating activating's seq.
    const beats = lines.slice(activating + 1, completed).filter((l) => l.type === "heartbeat");
    expect(beats.length).toBeGreaterThan(0);
    for (const beat of beats) expect(beat).toMatchObject({ phase: "activating", seq: lines[activating]!["seq"], deployId: lines[activating]!["deployId"] });
    expect((await activations("web2")).at(-1)).toBe(`switch ${built["web2"]}`);
    expect(await current("web2")).toBe(built["web2"]);
  });

  it("--build deploys each host as soon as it is built: web1's deploy is under way before web2's build ends", async () => {
    // web2's build waits (at most a minute) for the test's go-ahead, which the
    // test gives once the listener of web1 has accepted web1's deploy. Deploying
    // only after the whole build would never get there: web2's build would fail.
    const gateDir = await mkdtemp(join(tmpdir(), "hd-deploy-gate-"));
    await chmod(gateDir, 0o755);
    const gate = join(gateDir, "go");
    await fixture.flake.editFlake((text) =>
      text.replace(
        'extraCommands = name: "";',
        `extraCommands = name: if name == "web2" then ''i=0; while [ ! -e ${gate} ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done; [ -e ${gate} ] || exit 1'' else "";`,
      ),
    );
    const run = spawnCli(["deploy", "test", "all", "--build", "--json"], deployer(), 300_000);
    const seen: Array<Record<string, unknown>> = [];
    let buffered = "";
    run.stdout?.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      for (const line of parts.filter(Boolean)) {
        const message = JSON.parse(line) as Record<string, unknown>;
        seen.push(message);
        if (message["type"] === "accepted" && message["host"] === "web1") void writeFile(gate, "");
      }
    });
    const result = await run;
    expect(result.exitCode, `${String(result.stdout)}\n${String(result.stderr)}`).toBe(0);
    const index = (predicate: (m: Record<string, unknown>) => boolean) => seen.findIndex(predicate);
    const build = (type: string, host: string) => (m: Record<string, unknown>) =>
      m["type"] === "build" && (m["message"] as Record<string, unknown>)["type"] === type && (m["message"] as Record<string, unknown>)["host"] === host;
    const web1Built = index(build("host_finished", "web1"));
    const web1Accepted = index((m) => m["type"] === "accepted" && m["host"] === "web1");
    const web2Built = index(build("host_finished", "web2"));
    const web2Accepted = index((m) => m["type"] === "accepted" && m["host"] === "web2");
    expect(web1Built).toBeGreaterThan(-1);
    expect(web1Accepted).toBeGreaterThan(web1Built);
    expect(web2Built).toBeGreaterThan(web1Accepted);
    expect(web2Accepted).toBeGreaterThan(web2Built);
    // db1 is prod: built with the rest, not deployed.
    expect(index(build("host_finished", "db1"))).toBeGreaterThan(-1);
    expect(index((m) => m["host"] === "db1" && m["type"] === "accepted")).toBe(-1);
    const built = await builtPaths();
    expect(await current("web1")).toBe(built["web1"]);
    expect(await current("web2")).toBe(built["web2"]);
  });

  it("--build: a host that fails to build is not deployed (exit 1, `not built`), its listener untouched; the others are deployed", async () => {
    const web2 = hosts.get("web2")!;
    const before = { current: await current("web2"), profile: await web2.profile(), activations: await activations("web2") };
    await fixture.flake.bump();
    await fixture.flake.editFlake((text) => text.replace("brokenHosts = [ ];", 'brokenHosts = [ "web2" ];'));
    const result = await runCli(["deploy", "test", "all", "--build", "--json"], deployer(), 300_000);
    expect(result.exitCode, result.stdout + result.stderr).toBe(1);
    const lines = jsonLines(result.stdout);
    const web2Build = lines.find((m) => m["type"] === "build" && (m["message"] as Record<string, unknown>)["type"] === "host_finished" && (m["message"] as Record<string, unknown>)["host"] === "web2");
    expect(web2Build?.["message"]).toMatchObject({ status: "failure" });
    // web2's row: not built, with the builder's reason; nothing was sent to its listener.
    expect(lines).toContainEqual(expect.objectContaining({ type: "not_built", host: "web2", error: expect.stringMatching(/^the builder did not build it \(failure\)/) }));
    expect(lines.filter((m) => m["host"] === "web2" && ["plan", "accepted", "started", "activating", "completed", "rejected"].includes(m["type"] as string))).toEqual([]);
    expect(await current("web2")).toBe(before.current);
    expect(await web2.profile()).toBe(before.profile);
    expect(await activations("web2")).toEqual(before.activations);
    // web1 built and deployed from this very run.
    const web1Built = lines.find((m) => m["type"] === "build" && (m["message"] as Record<string, unknown>)["type"] === "host_finished" && (m["message"] as Record<string, unknown>)["host"] === "web1");
    const web1Path = (web1Built?.["message"] as Record<string, unknown> | undefined)?.["storePath"];
    expect(lines).toContainEqual(expect.objectContaining({ type: "completed", host: "web1", status: "success", toplevel: web1Path }));
    expect(await current("web1")).toBe(web1Path);

    // The plain summary table says the same.
    const plain = await runCli(["deploy", "test", "all", "--build"], deployer(), 300_000);
    expect(plain.exitCode, plain.stdout + plain.stderr).toBe(1);
    expect(plain.stdout).toMatch(/^web2 +not built /m);
    expect(plain.stdout).toMatch(/^web1 +success /m);
    expect(await current("web2")).toBe(before.current);
    expect(await activations("web2")).toEqual(before.activations);
  });
});
