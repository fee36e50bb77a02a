/**
 * The deploy listener end to end: a real nats-server with the plan's
 * permissions (the listeners connect as their tier's listener user, the
 * requests come from the test deployer), the real builder building the
 * fixture systems and copying them to a signed file:// cache, and listener
 * processes (`node dist/cli.js listener`) that fetch from that cache into
 * stores of their own and activate with the fixture's switch-to-configuration.
 *
 * No evaluation on the host: every listener's repo URL names a flake that
 * does not exist, so any evaluation would fail the deploy.
 */
import type { NatsConnection } from "nats";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { Inbox, connectAs, type Message } from "../support/nats-client.js";
import { createListener, startDeployFixture, type DeployFixture, type ListenerHost, type ListenerSetup } from "../support/listener.js";
import { eventually, metricsBaseUrl, scrape, valueOf } from "../support/metrics.js";

let fixture: DeployFixture;
let deployer: NatsConnection;
/** The systems the builder built: v1 (installed at the start of each test) and v2, by host. */
let v1: Record<string, string>;
let v2: Record<string, string>;
const cleanups = cleanupsAfterEach();

beforeAll(async () => {
  fixture = await startDeployFixture();
  deployer = await connectAs(fixture.nats.url, fixture.nats.identities.testDeployer);
  v1 = await fixture.build(["web1", "web2"]);
  await fixture.flake.bump();
  v2 = await fixture.build(["web1", "web2"]);
}, 240_000);

afterAll(async () => {
  await deployer?.close();
  await fixture?.stop();
});

/** A listener for `host` running v1 (installed as generation 1), started. */
async function listenerOn(host: string, setup: Partial<ListenerSetup> = {}): Promise<ListenerHost> {
  const listener = await createListener(fixture, { host, ...setup });
  await listener.install(v1[host] as string);
  await listener.start();
  cleanups.push(() => listener.process.stop("SIGKILL"));
  return listener;
}

async function deploy(subject: string, body?: object): Promise<{ inbox: Inbox; final: Message }> {
  const inbox = await Inbox.open(deployer, "deploy.responses.");
  cleanups.push(async () => inbox.close());
  inbox.send(subject, body);
  return { inbox, final: await inbox.final(90_000) };
}

const tempDir = () => mkdtemp(join(tmpdir(), "hd-listener-test-"));
const types = (inbox: Inbox) => inbox.messages.filter((m) => m.type !== "progress").map((m) => m.type);

describe("deploying a prebuilt system", () => {
  it("keeps the deployed system as a GC root: a garbage collection while it activates, or after a `test` deploy (no profile), leaves it in the store", async () => {
    const web1 = await listenerOn("web1");
    // The switch sleeps 5 s: the collection runs while the new system is
    // fetched but held by neither a profile nor a running system's link.
    await web1.knob("slow-switch", v2["web1"]!);
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    inbox.send("deploy.test.web1", { action: "test", toplevel: v2["web1"] });
    await inbox.waitFor((m) => m.type === "activating", 60_000);
    await web1.nix("nix-store", ["--gc"]);
    expect(web1.hasPath(v2["web1"]!)).toBe(true);
    expect(await inbox.final(60_000)).toMatchObject({ type: "completed", status: "success", toplevel: v2["web1"] });
    await web1.nix("nix-store", ["--gc"]);
    expect(web1.hasPath(v2["web1"]!)).toBe(true);
    expect(await readlink(join(web1.root, "state", "last-deployed-system"))).toBe(v2["web1"]);
  }, 120_000);

  it("switches each listener to exactly the builder's store path, fetched from the signed cache", async () => {
    const [web1, web2] = await Promise.all([listenerOn("web1"), listenerOn("web2")]);
    for (const [listener, host] of [
      [web1, "web1"],
      [web2, "web2"],
    ] as const) {
      expect(listener.hasPath(v2[host] as string)).toBe(false);
      const { inbox, final } = await deploy(`deploy.test.${host}`, { action: "switch", toplevel: v2[host] });
      expect(types(inbox)).toEqual(["accepted", "started", "activating", "health", "completed"]);
      // nix's progress while it fetched, if it said any: a snapshot repeating started's number.
      for (const progress of inbox.messages.filter((m) => m.type === "progress")) expect(progress).toMatchObject({ phase: "fetching", seq: 2 });
      const [accepted, started, activating, health] = inbox.messages.filter((m) => m.type !== "progress");
      expect(accepted).toMatchObject({ seq: 1, host, action: "switch", toplevel: v2[host] });
      expect(started).toMatchObject({ seq: 2, prebuilt: true, toplevel: v2[host] });
      expect(activating).toMatchObject({ seq: 3, previous: v1[host], generation: 2 });
      expect(health).toMatchObject({ seq: 4, ok: true, natsConfirmed: true, checks: [{ argv: ["/bin/true"], ok: true, exitCode: 0 }] });
      expect(final).toMatchObject({
        type: "completed",
        seq: 5,
        deployId: accepted?.deployId,
        host,
        status: "success",
        toplevel: v2[host],
        previous: v1[host],
        generation: 2,
        rebootRequired: false,
        changes: { against: v1[host], packages: expect.any(Array) },
      });
      expect(await listener.current()).toBe(v2[host]);
      expect(await listener.profile()).toBe(v2[host]);
      expect(await listener.activations()).toEqual([["switch", v2[host]]]);
      // nix put it into the listener's own store from the cache (trusting only the test key).
      expect(listener.hasPath(v2[host] as string)).toBe(true);
    }
    // The new systems carry the same listener unit: the listeners keep running.
    expect(web1.process.child.exitCode).toBeNull();
    const metrics = await scrape(await metricsBaseUrl(web1.process));
    expect(valueOf(metrics, "homelab_deploy_deploys_total", { tier: "test", host: "web1", action: "switch", status: "success" })).toBe(1);
    expect(valueOf(metrics, "homelab_deploy_deploy_last_success_timestamp", { tier: "test", host: "web1" })).toBeGreaterThan(0);
    expect(valueOf(metrics, "homelab_deploy_reboot_required", { tier: "test", host: "web1" })).toBe(0);
  }, 180_000);

  it("answers deploy.discover with what runs, what is booted and whether it is busy", async () => {
    await listenerOn("web1", { roles: ["web"] });
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    inbox.send("deploy.discover");
    const answer = await inbox.waitFor((m) => m.type === "discover");
    expect(answer).toMatchObject({ host: "web1", tier: "test", roles: ["web"], repo: { name: "systems" }, current: v1["web1"], booted: v1["web1"], rebootRequired: false, busy: null });
  }, 60_000);

  it("boot sets the profile only; test switches without the profile; dry-activate changes neither", async () => {
    const web1 = await listenerOn("web1");
    const boot = await deploy("deploy.test.web1", { action: "boot", toplevel: v2["web1"] });
    expect(types(boot.inbox)).toEqual(["accepted", "started", "activating", "completed"]);
    expect(boot.final).toMatchObject({ status: "success", action: "boot", generation: 2, rebootRequired: true });
    expect(await web1.profile()).toBe(v2["web1"]);
    expect(await web1.current()).toBe(v1["web1"]);
    expect(await web1.activations()).toEqual([["boot", v2["web1"]]]);

    const web2 = await listenerOn("web2");
    const test = await deploy("deploy.test.web2", { action: "test", toplevel: v2["web2"] });
    expect(types(test.inbox)).toEqual(["accepted", "started", "activating", "health", "completed"]);
    expect(test.final).toMatchObject({ status: "success", action: "test", generation: null });
    expect(await web2.profile()).toBe(v1["web2"]);
    expect(await web2.current()).toBe(v2["web2"]);
    expect(await web2.activations()).toEqual([["test", v2["web2"]]]);
    await web2.process.stop("SIGKILL");

    const again = await listenerOn("web2");
    const dry = await deploy("deploy.test.web2", { action: "dry-activate", toplevel: v2["web2"] });
    expect(types(dry.inbox)).toEqual(["accepted", "started", "activating", "completed"]);
    expect(dry.final).toMatchObject({ status: "success", action: "dry-activate" });
    expect(await again.profile()).toBe(v1["web2"]);
    expect(await again.current()).toBe(v1["web2"]);
    expect(await again.activations()).toEqual([["dry-activate", v2["web2"]]]);
  }, 120_000);

  it("rejects a second deploy while one runs, naming the running one", async () => {
    const release = join(await tempDir(), "release");
    // The health command waits for a file the test creates once it saw the rejection.
    const held = await listenerOn("web1", { health: { commands: [["/bin/sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', release]] } });
    const first = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => first.close());
    first.send("deploy.test.web1", { toplevel: v2["web1"] });
    const accepted = await first.waitFor((m) => m.type === "activating");
    const { final: busy } = await deploy("deploy.test.web1", { toplevel: v2["web1"] });
    expect(busy).toMatchObject({ type: "rejected", host: "web1", code: "busy", runningDeployId: accepted.deployId });
    await writeFile(release, "");
    expect(await first.final()).toMatchObject({ type: "completed", status: "success" });
    expect(await held.activations()).toEqual([["switch", v2["web1"]]]);
  }, 120_000);
});

describe("rollback", () => {
  it("a failing switch-to-configuration is rolled back to the previous generation", async () => {
    const web1 = await listenerOn("web1");
    await web1.knob("fail-switch", v2["web1"] as string);
    const { inbox, final } = await deploy("deploy.test.web1", { toplevel: v2["web1"] });
    expect(types(inbox)).toEqual(["accepted", "started", "activating", "completed"]);
    expect(final).toMatchObject({ status: "rolled_back", toplevel: v2["web1"], previous: v1["web1"], generation: 1, error: { code: "switch_failed" } });
    expect((final.error as { cause: string }).cause).toMatch(/exited with code 4[\s\S]*fixture knob fail-switch/);
    expect(await web1.activations()).toEqual([
      ["switch", v2["web1"]],
      ["switch", v1["web1"]],
    ]);
    expect(await web1.current()).toBe(v1["web1"]);
    expect(await web1.profile()).toBe(v1["web1"]);
    const metrics = await scrape(await metricsBaseUrl(web1.process));
    expect(valueOf(metrics, "homelab_deploy_deploys_total", { tier: "test", host: "web1", action: "switch", status: "rolled_back" })).toBe(1);
  }, 120_000);

  it("a failing health command is rolled back; with rollback off the failure is reported and the system left", async () => {
    const healthy = (listener: string) => ({ health: { commands: [["/usr/bin/test", "-e", `/nonexistent/${listener}-healthy`]] } });
    const web1 = await listenerOn("web1", healthy("web1"));
    const { inbox, final } = await deploy("deploy.test.web1", { toplevel: v2["web1"] });
    expect(types(inbox)).toEqual(["accepted", "started", "activating", "health", "completed"]);
    expect(inbox.messages.find((m) => m.type === "health")).toMatchObject({ ok: false, natsConfirmed: true, checks: [{ ok: false, exitCode: 1 }] });
    expect(final).toMatchObject({ status: "rolled_back", error: { code: "health_failed", message: `health command /usr/bin/test -e /nonexistent/web1-healthy failed` } });
    expect(await web1.activations()).toEqual([
      ["switch", v2["web1"]],
      ["switch", v1["web1"]],
    ]);
    expect(await web1.current()).toBe(v1["web1"]);

    const web2 = await listenerOn("web2", { ...healthy("web2"), rollback: false });
    const kept = await deploy("deploy.test.web2", { toplevel: v2["web2"] });
    expect(kept.final).toMatchObject({ status: "failure", error: { code: "health_failed" } });
    expect(await web2.activations()).toEqual([["switch", v2["web2"]]]);
    expect(await web2.current()).toBe(v2["web2"]);
  }, 120_000);

  it("NATS unreachable after the switch: rolled back, and the answer arrives once NATS is back", async () => {
    const web1 = await listenerOn("web1", { health: { confirmTimeout: "2s" } });
    await writeFile(join(web1.root, "nats.pid"), String(fixture.nats.pid()));
    await web1.knob("pause-nats", v2["web1"] as string);
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    cleanups.push(async () => process.kill(fixture.nats.pid(), "SIGCONT"));
    inbox.send("deploy.test.web1", { toplevel: v2["web1"] });
    // The listener gives up on NATS and rolls back while the server is stopped.
    await eventually(async () => ((await web1.activations()).length === 2 ? true : undefined), "the rollback's switch", 60_000).catch(async (err: Error) => {
      // Failed once in a fresh-clone run and never again: say what the listener did.
      const said = web1.process.logs.slice(-20).map((l) => [l.msg, l["code"] ?? l["err"] ?? l["error"] ?? ""].filter(Boolean).join(" "));
      throw new Error(`${err.message}; activations: ${JSON.stringify(await web1.activations())}; deploy messages: ${JSON.stringify(inbox.messages.map((m) => m.type))}; the listener's last log lines: ${said.join(" | ")}`);
    });
    process.kill(fixture.nats.pid(), "SIGCONT");
    const final = await inbox.final(60_000);
    expect(final).toMatchObject({ status: "rolled_back", error: { code: "nats_unconfirmed" } });
    expect(inbox.messages.find((m) => m.type === "health")).toMatchObject({ ok: false, natsConfirmed: false });
    expect(await web1.activations()).toEqual([
      ["switch", v2["web1"]],
      ["switch", v1["web1"]],
    ]);
    expect(await web1.current()).toBe(v1["web1"]);
    expect(await web1.profile()).toBe(v1["web1"]);
  }, 120_000);
});

describe("restarts", () => {
  it("a listener killed by its own switch answers the requester after its restart", async () => {
    const web1 = await listenerOn("web1");
    await web1.knob("kill-listener", v2["web1"] as string);
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    inbox.send("deploy.test.web1", { toplevel: v2["web1"] });
    expect(await web1.process.exited).toBeNull(); // killed by SIGKILL
    // systemd's Restart=always, played by the test.
    await web1.start();
    cleanups.push(() => web1.process.stop("SIGKILL"));
    const final = await inbox.final();
    expect(types(inbox)).toEqual(["accepted", "started", "activating", "resumed", "health", "completed"]);
    expect(inbox.messages.find((m) => m.type === "resumed")).toMatchObject({ activated: true, deployId: final.deployId });
    expect(final).toMatchObject({ status: "success", toplevel: v2["web1"], previous: v1["web1"], generation: 2 });
    expect(await web1.activations()).toEqual([["switch", v2["web1"]]]);
    expect(await web1.current()).toBe(v2["web1"]);
  }, 120_000);

  it("a deploy left mid-switch whose system is not running is rolled back by the restarted listener", async () => {
    // What a listener killed inside switch-to-configuration leaves (before
    // the new system's activation got far): the profile at the new
    // generation, deploy.json at "activating", the old system still running.
    const listener = await createListener(fixture, { host: "web1" });
    await listener.install(v1["web1"] as string);
    await listener.nix("nix-store", ["--realise", v2["web1"] as string]);
    await listener.nix("nix-env", ["-p", join(listener.root, "profiles", "system"), "--set", v2["web1"] as string]);
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    await mkdir(join(listener.root, "state"), { recursive: true });
    const saved = {
      version: 1,
      deployId: "d0123456789",
      action: "switch",
      ref: null,
      requested: v2["web1"],
      requesters: [inbox.subject],
      seq: 3,
      startedAt: Date.now(),
      phase: "activating",
      toplevel: v2["web1"],
      previous: v1["web1"],
      previousGeneration: 1,
      generation: 2,
      restarts: 0,
    };
    await writeFile(join(listener.root, "state", "deploy.json"), JSON.stringify(saved));
    await listener.start();
    cleanups.push(() => listener.process.stop("SIGKILL"));
    const final = await inbox.final();
    expect(inbox.messages.map((m) => [m.type, m.seq])).toEqual([
      ["resumed", 4],
      ["completed", 5],
    ]);
    expect(inbox.messages[0]).toMatchObject({ deployId: "d0123456789", activated: false });
    expect(final).toMatchObject({ status: "rolled_back", generation: 1, error: { code: "interrupted" } });
    expect(await listener.activations()).toEqual([["switch", v1["web1"]]]);
    expect(await listener.profile()).toBe(v1["web1"]);
    // The final answer goes out before the saved deploy is removed (a listener that dies in
    // between answers again after its restart, rather than never): wait for the removal.
    await eventually(async () => (existsSync(join(listener.root, "state", "deploy.json")) ? undefined : true), "deploy.json removed after the final answer");

    // A deploy cut short while fetching changed nothing: it fails, nothing is switched.
    await listener.process.stop("SIGKILL");
    const second = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => second.close());
    await writeFile(join(listener.root, "state", "deploy.json"), JSON.stringify({ ...saved, deployId: "d0123456780", phase: "preparing", seq: 2, requesters: [second.subject] }));
    await listener.start();
    expect(await second.final()).toMatchObject({ seq: 4, status: "failure", error: { code: "interrupted", message: expect.stringContaining("nothing was switched") } });
    expect(await listener.activations()).toEqual([["switch", v1["web1"]]]);
  }, 120_000);
});

describe("refusals", () => {
  it("refuses another host's system, a path outside the store and a path no cache has; nothing is switched", async () => {
    const web1 = await listenerOn("web1");
    const other = await deploy("deploy.test.web1", { toplevel: v2["web2"] });
    expect(other.final).toMatchObject({ type: "rejected", host: "web1", code: "wrong_host" });
    expect(other.final.error).toContain("is not a NixOS system of web1");

    const outside = await deploy("deploy.test.web1", { toplevel: "/etc/nixos-system-web1-1" });
    expect(outside.final).toMatchObject({ type: "rejected", code: "invalid_request" });
    expect(outside.final.error).toMatch(/^malformed request body: toplevel: expected a nix store path/);
    // Shaped like a store path, but in another directory: never handed to nix.
    const elsewhere = await deploy("deploy.test.web1", { toplevel: `${web1.root}/${"a".repeat(32)}-nixos-system-web1-1` });
    expect(elsewhere.final).toMatchObject({ type: "rejected", code: "invalid_request" });
    expect(elsewhere.final.error).toBe(`${web1.root}/${"a".repeat(32)}-nixos-system-web1-1 is not in this host's Nix store (/nix/store); nothing was switched`);

    const missing = (v2["web1"] as string).replace(/\/[0-9a-z]{32}-/, "/00000000000000000000000000000000-");
    const unknown = await deploy("deploy.test.web1", { toplevel: missing });
    expect(types(unknown.inbox)).toEqual(["accepted", "started", "completed"]);
    expect(unknown.final).toMatchObject({ status: "failure", error: { code: "realise_failed" } });
    expect((unknown.final.error as { message: string }).message).toContain(`cannot fetch ${missing} from the substituters`);

    expect(await web1.activations()).toEqual([]);
    expect(await web1.current()).toBe(v1["web1"]);
    expect(await web1.profile()).toBe(v1["web1"]);
  }, 120_000);

  it("ignores requests whose reply subject it may not answer on", async () => {
    const web1 = await listenerOn("web1");
    const inbox = await Inbox.open(deployer, "build.responses.");
    cleanups.push(async () => inbox.close());
    inbox.send("deploy.test.web1", { toplevel: v2["web1"] });
    const metrics = await eventually(async () => {
      const exposition = await scrape(await metricsBaseUrl(web1.process));
      return valueOf(exposition, "homelab_deploy_listener_requests_ignored_total") === 1 ? exposition : undefined;
    }, "the ignored request counted");
    expect(valueOf(metrics, "homelab_deploy_deploys_total", { tier: "test", host: "web1", action: "switch", status: "success" })).toBe(0);
    expect(await web1.activations()).toEqual([]);
  }, 60_000);

  it("a listener user of one tier never gets another tier's requests", async () => {
    // A prod listener started with the test tier's credentials: the server refuses its subscriptions.
    const impostor = await listenerOn("web1", { tier: "prod", role: "testListener" });
    const admin = await connectAs(fixture.nats.url, fixture.nats.identities.adminDeployer);
    cleanups.push(() => admin.close());
    await eventually(async () => (/Subscription Violation.*"deploy\.prod\.web1"/.test(fixture.nats.log()) ? true : undefined), "the server refusing the subscription");
    const inbox = await Inbox.open(admin, "deploy.responses.");
    inbox.send("deploy.prod.web1", { toplevel: v2["web1"] });
    // NATS itself answers: nobody may (and so nobody does) subscribe to it.
    expect(await inbox.waitFor(() => true)).toEqual({ type: "(empty)", status: 503 });
    expect(await impostor.activations()).toEqual([]);
  }, 60_000);
});

describe("systems that change more", () => {
  it("without a toplevel, builds the host's configuration from its repo (at a ref) and switches to it", async () => {
    const web1 = await listenerOn("web1", { sharedStore: true, repoUrl: fixture.flake.url });
    const { inbox, final } = await deploy("deploy.test.web1");
    expect(types(inbox)).toEqual(["accepted", "started", "activating", "health", "completed"]);
    expect(inbox.messages[0]).toMatchObject({ action: "switch", toplevel: null, ref: null });
    expect(inbox.messages.find((m) => m.type === "started")).toMatchObject({ prebuilt: false, toplevel: null });
    // The repo's head is what the builder built last: the same system.
    expect(final).toMatchObject({ status: "success", toplevel: v2["web1"] });

    await fixture.flake.branch("feature");
    const onBranch = await deploy("deploy.test.web1", { ref: "feature" });
    expect(onBranch.final).toMatchObject({ status: "success", previous: v2["web1"] });
    expect(onBranch.final.toplevel).toMatch(/-nixos-system-web1-26\.05\.feature-[0-9a-f]+$/);
    expect(await web1.activations()).toEqual([
      ["switch", v2["web1"]],
      ["switch", onBranch.final.toplevel],
    ]);
  }, 180_000);

  it("a new kernel is a pending reboot; a new listener unit makes the listener exit once it has answered", async () => {
    await fixture.flake.editFlake((text) => text.replace('kernelVersion = "6.6.1"', 'kernelVersion = "6.6.2"').replace('unitVersion = "1"', 'unitVersion = "2"'));
    const { web1: v3 } = await fixture.build(["web1"]);
    const web1 = await listenerOn("web1");
    const { final } = await deploy("deploy.test.web1", { toplevel: v3 });
    expect(final).toMatchObject({ status: "success", toplevel: v3, rebootRequired: true });
    // The unit changed: exit 0 after the final answer, so that systemd starts the new version.
    expect(await web1.process.exited).toBe(0);
    expect(web1.process.logs.some((l) => l.msg === "the deploy changed the listener's own unit; exiting so that systemd starts the new version")).toBe(true);

    await web1.start();
    const inbox = await Inbox.open(deployer, "deploy.responses.");
    cleanups.push(async () => inbox.close());
    inbox.send("deploy.discover");
    expect(await inbox.waitFor((m) => m.type === "discover")).toMatchObject({ current: v3, booted: v1["web1"], rebootRequired: true });
    const metrics = await scrape(await metricsBaseUrl(web1.process));
    expect(valueOf(metrics, "homelab_deploy_reboot_required", { tier: "test", host: "web1" })).toBe(1);
    expect(valueOf(metrics, "homelab_deploy_reboot_required_since_timestamp", { tier: "test", host: "web1" })).toBeGreaterThan(0);
    expect(valueOf(metrics, "homelab_deploy_deploys_total", { tier: "test", host: "web1", action: "switch", status: "success" })).toBe(0);
    expect(valueOf(metrics, "homelab_deploy_deploy_last_success_timestamp", { tier: "test", host: "web1" })).toBeGreaterThan(0);
  }, 180_000);
});
