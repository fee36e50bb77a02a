/**
 * Nothing accepted is lost, with real processes: the builder is killed
 * (SIGKILL) or stopped (SIGTERM) in the middle of a build and started
 * again; NATS is restarted in the middle of `all`. Requesters see
 * `interrupted`/`resumed` and every job completes; a killed builder's nix
 * build is ended before the next build starts.
 */
import { execFileSync } from "node:child_process";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult, Progress } from "@modelcontextprotocol/sdk/types.js";
import { describe, expect, it } from "vitest";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { savedQueue } from "../support/jobs-file.js";
import { CLI, jsonLines, spawnCli } from "../support/cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { Inbox, connectAs, sleep, type Message } from "../support/nats-client.js";
import { startNatsServer } from "../support/nats-server.js";
import { metricsBaseUrl } from "../support/metrics.js";
import { processesMatching } from "../support/processes.js";

const cleanups = cleanupsAfterEach();
async function setup(build: Record<string, unknown> = {}) {
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const flake = await createFixtureFlake("restart-flake");
  const setupOf = { natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url }, build: { timeout: "2m", ...build } };
  let builder = await startBuilder(setupOf);
  cleanups.push(() => builder.stop("SIGKILL"));
  const nc = await connectAs(nats.url, nats.identities.adminDeployer);
  cleanups.push(() => nc.close());
  const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
  return {
    nats,
    flake,
    nc,
    env,
    get builder() {
      return builder;
    },
    /** Starts the builder again on the same config (and state directory). */
    async restart(): Promise<BuilderProcess> {
      builder = await spawnBuilder(builder.configFile);
      return builder;
    },
    async request(subject: string): Promise<Inbox> {
      const inbox = await Inbox.open(nc);
      inbox.send(subject);
      expect(await inbox.waitFor((m) => m.type === "accepted" || m.type === "rejected", 20_000)).toMatchObject({ type: "accepted" });
      return inbox;
    },
  };
}

interface Run {
  host: string;
  pid: string;
  start: number;
  end: number;
}

/** Each build the fixture saw, by the pid of its shell; a build cut short ends at +inf. */
async function runs(flake: FixtureFlake): Promise<Run[]> {
  const text = await readFile(join(flake.eventsDir, "events.log"), "utf8");
  const byPid = new Map<string, Run>();
  for (const line of text.split("\n").filter(Boolean)) {
    const [what, host, at, pid] = line.split(" ") as [string, string, string, string];
    if (what === "start") byPid.set(pid, { host, pid, start: Number(at), end: Number.POSITIVE_INFINITY });
    else {
      const run = byPid.get(pid);
      if (run) run.end = Number(at);
    }
  }
  return [...byPid.values()].sort((a, b) => a.start - b.start);
}

/** Waits until the fixture has seen `count` builds of `host` start. */
async function buildStarted(flake: FixtureFlake, host: string, count: number): Promise<void> {
  for (let waited = 0; (await runs(flake)).filter((r) => r.host === host).length < count; waited += 50) {
    if (waited > 60_000) throw new Error(`build ${count} of ${host} never started`);
    await sleep(50);
  }
}

function expectNoOverlap(all: Run[]): void {
  const finished = all.filter((r) => Number.isFinite(r.end));
  for (let i = 1; i < finished.length; i++) {
    const [previous, current] = [finished[i - 1] as Run, finished[i] as Run];
    expect(previous.end, `${previous.host} overlaps ${current.host}`).toBeLessThanOrEqual(current.start);
  }
}

const types = (inbox: Inbox) => inbox.messages.map((m) => m.type);

/** Lets h07 (and every later build of it) finish. */
const go = (flake: FixtureFlake) => writeFile(join(flake.eventsDir, "go"), "");

describe("the builder is killed (SIGKILL) with one job running and two queued", () => {
  it("the restarted builder ends the killed build first, then completes all three; their requesters saw resumed", async () => {
    const t = await setup();
    const running = await t.request("build.fixture.h07");
    await t.builder.waitForLog((l) => l.msg === "building host" && l.host === "h07");
    const queued = [await t.request("build.fixture.h01"), await t.request("build.fixture.h02")];
    // Wait until the build itself runs, so there is a nix tree to leave behind.
    await buildStarted(t.flake, "h07", 1);
    await t.builder.stop("SIGKILL");
    expect(await processesMatching(t.flake.dir)).not.toEqual([]);

    const builder = await t.restart();
    await builder.waitForLog((l) => l.msg === "building host" && l.host === "h07");
    // Nothing was built before the leftover was ended.
    const reaped = builder.logs.findIndex((l) => l.msg === "ending a nix process left running by a builder that was killed");
    expect(reaped).toBeGreaterThanOrEqual(0);
    expect(builder.logs.findIndex((l) => l.msg === "building host")).toBeGreaterThan(reaped);
    // A leftover still running would now finish too, and write its end line.
    await go(t.flake);
    for (const inbox of [running, ...queued]) expect(await inbox.final(90_000)).toMatchObject({ type: "completed", status: "success" });

    for (const inbox of [running, ...queued]) {
      expect(types(inbox)).toContain("resumed");
      expect(types(inbox).filter((type) => type === "completed")).toHaveLength(1);
    }
    expect(running.messages.find((m) => m.type === "resumed")).toMatchObject({ position: 0, interruptions: 1 });
    expect(queued.map((inbox) => inbox.messages.find((m) => m.type === "resumed"))).toMatchObject([
      { position: 1, interruptions: 0 },
      { position: 2, interruptions: 0 },
    ]);

    const all = await runs(t.flake);
    const h07 = all.filter((r) => r.host === "h07");
    // The killed build was ended (it never wrote its end line, though it was let go), the resumed one ran to the end.
    expect(h07.map((r) => Number.isFinite(r.end))).toEqual([false, true]);
    expect(all.map((r) => r.host)).toEqual(["h07", "h07", "h01", "h02"]);
    expectNoOverlap(all);
    expect(await processesMatching(t.flake.dir)).toEqual([]);
    // Counted once, when it completed after the resume.
    const metrics = await metricsText(builder);
    expect(metrics).toMatch(/^homelab_deploy_builds_total\{repo="fixture",status="success"[^}]*\} 3$/m);
    expect(metrics).toMatch(/^homelab_deploy_jobs_resumed_total(\{[^}]*\})? 3$/m);
  });

  it("a job cut short 3 times completes as a failure that says so", async () => {
    const t = await setup();
    const inbox = await t.request("build.fixture.h07");
    for (let kill = 1; kill <= 3; kill++) {
      await buildStarted(t.flake, "h07", kill);
      await t.builder.stop("SIGKILL");
      await t.restart();
    }
    const final = await inbox.final(30_000);
    expect(final).toMatchObject({
      type: "completed",
      status: "failure",
      results: [{ host: "h07", status: "failure" }],
      error: expect.stringMatching(/cut short 3 times .*last on host h07.*not trying it again/),
    });
    expect(types(inbox).filter((type) => type === "resumed")).toHaveLength(2);
    // And the builder goes on serving.
    const next = await t.request("build.fixture.h01");
    expect(await next.final(60_000)).toMatchObject({ type: "completed", status: "success" });
  });

  it("a saved job whose repo the new config no longer has completes as a failure with that reason", async () => {
    const t = await setup();
    await t.request("build.fixture.h07");
    await t.builder.waitForLog((l) => l.msg === "building host" && l.host === "h07");
    const inbox = await t.request("build.fixture.h01");
    await t.builder.stop("SIGKILL");
    const config = JSON.parse(await readFile(t.builder.configFile, "utf8")) as { repos: Record<string, unknown> };
    config.repos = { other: config.repos["fixture"] };
    await writeFile(t.builder.configFile, JSON.stringify(config));
    await t.restart();
    expect(await inbox.final(30_000)).toMatchObject({
      type: "completed",
      status: "failure",
      error: expect.stringContaining("the builder's config no longer has repo fixture"),
    });
  });
});

describe("the builder is stopped (SIGTERM) in the middle of `all`", () => {
  it("tells every requester interrupted, exits within 10 s, and resumes at the first unfinished host; the CLI rides through and exits 0", async () => {
    const t = await setup();
    const all = spawnCli(["build", "fixture", "all", "--json"], t.env);
    await t.builder.waitForLog((l) => l.msg === "building host" && l.host === "h07", 90_000);
    // h07 waits for the test, so every host's evaluation ends meanwhile.
    await t.builder.waitForLog((l) => l.msg === "evaluated every host", 60_000);
    const queued = spawnCli(["build", "fixture", "h01"], t.env);
    await t.builder.waitForLog((l) => l.msg === "job queued" && l.target === "h01");
    // 0, not 1: the daemon met its own stop deadline (9.5 s; past it, it exits 1 saying
    // "graceful stop took too long"). Timing the exit from here would also time this machine.
    const { code } = await t.builder.stop("SIGTERM");
    expect(code).toBe(0);
    expect(await processesMatching(t.flake.dir)).toEqual([]);
    const saved = savedQueue(JSON.parse(await readFile(t.builder.configFile, "utf8")).stateDir as string);
    expect(saved.jobs.map((j: { target: string; running: boolean }) => [j.target, j.running])).toEqual([
      ["all", true],
      ["h01", false],
    ]);
    const restarted = await t.restart();
    await restarted.waitForLog((l) => l.msg === "building host" && l.host === "h07", 60_000);
    // Every .drv was kept when the evaluation ended: the resumed job evaluates nothing again.
    expect(restarted.logs.filter((l) => l.msg === "evaluating hosts" || l.msg === "evaluating host")).toEqual([]);
    await go(t.flake);

    const [allResult, queuedResult] = await Promise.all([all, queued]);
    const messages = jsonLines(String(allResult.stdout));
    const at = (type: string) => messages.findIndex((m) => m.type === type);
    expect(at("interrupted")).toBeGreaterThan(0);
    expect(messages[at("interrupted")]).toMatchObject({ resumes: true, reason: expect.stringContaining("SIGTERM") });
    expect(at("resumed")).toBeGreaterThan(at("interrupted"));
    // The hosts built before the stop are not built again: h07 is the first host after the resume.
    const startedAfter = messages.slice(at("resumed")).filter((m) => m.type === "host_started");
    expect(startedAfter[0]).toMatchObject({ host: "h07", index: 7, total: 13 });
    const finishedHosts = messages.filter((m) => m.type === "host_finished").map((m) => m.host);
    expect(finishedHosts).toEqual(["h01", "h02", "h03", "h04", "h05", "h06", "h07", "h08", "h09", "h10", "h11", "h12", "h13"]);
    const final = messages.at(-1) as Message & { results: Array<{ host: string; status: string }> };
    expect(final).toMatchObject({ type: "completed", status: "failure" });
    expect(final.results.map((r) => `${r.host}:${r.status}`)).toEqual(
      ["h01", "h02", "h03", "h04", "h05", "h06", "h07", "h08", "h09", "h10", "h11", "h12", "h13"].map((h) => `${h}:${h === "h03" ? "failure" : "success"}`),
    );
    expect(allResult.exitCode).toBe(1);
    // The queued requester, in plain text: told what happens, and a success.
    expect(queuedResult.exitCode, String(queuedResult.stderr)).toBe(0);
    expect(String(queuedResult.stdout)).toMatch(/interrupted: the builder is shutting down \(it received SIGTERM\); the job is saved and resumes when the builder is back/);
    expect(String(queuedResult.stdout)).toMatch(/resumed: the builder is back/);
    expect(String(queuedResult.stdout)).toMatch(/completed: success/);
    expectNoOverlap(await runs(t.flake));
  });

  it("a builder that does not come back: the CLI exits 2 saying the job is saved", async () => {
    const t = await setup();
    const client = spawnCli(["build", "fixture", "h07", "--idle-timeout", "3s"], t.env);
    await t.builder.waitForLog((l) => l.msg === "building host" && l.host === "h07");
    await t.builder.stop("SIGTERM");
    const result = await client;
    expect(result.exitCode).toBe(2);
    expect(String(result.stderr)).toMatch(/stopped for a restart and has not come back within 3s; job j[0-9a-f]{10} is saved and will run when the builder returns/);
  });
});

describe("the MCP server's build, through a builder restart", () => {
  it("keeps waiting through interrupted, says the builder is restarting, and answers with the resumed job's success", async () => {
    const t = await setup();
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [CLI, "mcp", "--enable-builds"],
      env: { HOMELAB_DEPLOY_LOG_LEVEL: "info", ...t.env },
      stderr: "pipe",
    });
    const client = new Client({ name: "homelab-deploy-test", version: "1.0.0" });
    await client.connect(transport);
    cleanups.push(() => client.close());
    const notes: Progress[] = [];
    const call = client.callTool({ name: "build", arguments: { repo: "fixture", target: "h07" } }, undefined, {
      timeout: 120_000,
      onprogress: (p) => notes.push(p),
    }) as Promise<CallToolResult>;
    await buildStarted(t.flake, "h07", 1);
    await t.builder.stop("SIGTERM");
    await (await t.restart()).waitForLog((l) => l.msg === "building host" && l.host === "h07");
    await go(t.flake);
    const result = await call;
    expect(result.isError).toBeFalsy();
    expect(result.structuredContent).toMatchObject({ outcome: "success", hosts: [{ host: "h07", status: "success" }] });
    const messages = notes.map((n) => n.message ?? "");
    const interrupted = messages.findIndex((m) => /^interrupted: the builder is shutting down \(it received SIGTERM\)/.test(m));
    expect(interrupted).toBeGreaterThan(-1);
    expect(messages.findIndex((m) => m.startsWith("resumed: the builder is back"))).toBeGreaterThan(interrupted);
  });
});

describe("NATS restarted in the middle of `all`", () => {
  it("no host_finished is lost: each host's arrives exactly once, the failed one with its log tail", async () => {
    const t = await setup();
    await go(t.flake);
    const client = spawnCli(["build", "fixture", "all", "--json"], t.env);
    await t.builder.waitForLog((l) => l.msg === "building host" && l.index === 2, 90_000);
    await t.nats.stop("SIGKILL");
    // The outage lasts until the failing host h03 has finished in it (however long that takes).
    const before = new Set(t.builder.logs.filter((l) => l.msg === "host finished"));
    await t.builder.waitForLog((l) => l.msg === "disconnected from NATS");
    await t.builder.waitForLog((l) => !before.has(l) && l.msg === "host finished" && l.host === "h03", 60_000);
    await t.nats.start();
    const result = await client;
    const messages = jsonLines(String(result.stdout));
    const finished = messages.filter((m) => m.type === "host_finished");
    expect(finished.map((m) => m.host)).toEqual(["h01", "h02", "h03", "h04", "h05", "h06", "h07", "h08", "h09", "h10", "h11", "h12", "h13"]);
    expect(finished[2]).toMatchObject({ host: "h03", status: "failure", logTail: expect.arrayContaining([expect.stringContaining("h03 output line 60")]) });
    // Every numbered message once, in a run without gaps.
    const seqs = messages.filter((m) => !["progress", "heartbeat", "evaluating"].includes(m.type)).map((m) => m.seq as number);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(Math.max(...seqs)).toBe(seqs.length);
    expect(messages.at(-1)).toMatchObject({ type: "completed", status: "failure" });
    expect(result.exitCode).toBe(1);
    expect(t.builder.logs.some((l) => l.msg === "reconnected: sending recent messages again")).toBe(true);
    // The test means something only if hosts finished while NATS was down.
    const logs = t.builder.logs.map((l) => l.msg);
    const during = logs.slice(logs.indexOf("disconnected from NATS"), logs.indexOf("reconnected to NATS")).filter((msg) => msg === "host finished");
    expect(during.length).toBeGreaterThanOrEqual(1);
  });
});

describe("a job queue that cannot be saved", () => {
  it("refuses the request as unavailable, saying why, and builds nothing for it", async () => {
    const t = await setup();
    const stateDir = JSON.parse(await readFile(t.builder.configFile, "utf8")).stateDir as string;
    // Something that is not a regular file where the queue is saved: the builder will not replace it.
    await rm(join(stateDir, "jobs.json"), { force: true });
    execFileSync("mkfifo", [join(stateDir, "jobs.json")]);
    const inbox = await Inbox.open(t.nc);
    inbox.send("build.fixture.h01");
    const answer = await inbox.waitFor((m) => m.type === "accepted" || m.type === "rejected", 20_000);
    expect(answer).toMatchObject({ type: "rejected", code: "unavailable", error: expect.stringContaining("cannot save its job queue") });
    expect(t.builder.logs.find((l) => l.msg === "cannot save the job queue; refusing the request")).toMatchObject({ err: expect.objectContaining({ message: expect.stringContaining("jobs.json is a FIFO") }) });
    // The refused job ends without a build: the builder is idle again and h01 never started.
    await t.builder.waitForLog((l) => l.msg === "job completed", 30_000);
    expect(t.builder.logs.some((l) => l.msg === "building host")).toBe(false);
    expect(await runs(t.flake)).toEqual([]);
    expect(inbox.messages.filter((m) => m.type !== "rejected")).toEqual([]);
  });
});

async function metricsText(builder: BuilderProcess): Promise<string> {
  return (await fetch(`${await metricsBaseUrl(builder)}/metrics`)).text();
}
