/**
 * Issue 5 end to end: live progress from nix's internal-json log, failure
 * tails, evaluation errors, discovery, status, cancel and heartbeats, over a
 * real nats-server with the plan's permissions and real nix.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsConnection } from "nats";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { startBuildEnvironment, type BuildEnvironment } from "../support/environment.js";
import type { FixtureFlake } from "../support/flake.js";
import { Inbox, type Message } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { isRunning } from "../support/processes.js";

let nats: NatsServer;
let progressFlake: FixtureFlake;
let flake: FixtureFlake;
let builder: BuilderProcess;
let deployer: NatsConnection;

const env = () => ({ HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile });

async function cli(args: string[]) {
  const result = await runCli(args, env());
  return { ...result, messages: jsonLines(result.stdout) as Message[] };
}

let environment: BuildEnvironment | undefined;

beforeAll(async () => {
  environment = await startBuildEnvironment();
  ({ nats, progressFlake, flake, builder, deployer } = environment);
});

afterAll(async () => {
  await environment?.stop();
});

describe("progress", () => {
  it("reports derivations built out of the right total, never going backwards, a few times a second at most", async () => {
    await progressFlake.bump();
    const { exitCode, messages } = await cli(["build", "progress", "multi", "--json"]);
    expect(exitCode).toBe(0);
    const progress = messages.filter((m) => m.type === "progress") as unknown as Array<{
      elapsedMs: number;
      derivations: { done: number; expected: number };
      building: { drv: string; phase: string | null } | null;
    }>;
    expect(progress.length).toBeGreaterThanOrEqual(3);
    const done = progress.map((p) => p.derivations.done);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    // multi-system and its four dependencies.
    expect(Math.max(...progress.map((p) => p.derivations.expected))).toBe(5);
    expect(progress.at(-1)?.derivations).toMatchObject({ done: 5, expected: 5 });
    const built = new Set(progress.map((p) => p.building?.drv).filter(Boolean));
    expect([...built].some((drv) => /^dep[1-4]$|^multi-system$/.test(String(drv)))).toBe(true);
    // Rate limit: snapshots go out at least the builder's 250 ms apart (the last one is flushed at
    // the end). Exact, not approximate: a message's elapsedMs is the clock reading the throttle
    // counts the interval from (it used to read the clock a second time, so a builder descheduled
    // between the two readings stamped two messages less than 240 ms apart).
    const gaps = progress.slice(0, -1).map((p, i) => (progress[i + 1]?.elapsedMs ?? 0) - p.elapsedMs);
    for (const gap of gaps.slice(0, -1)) expect(gap).toBeGreaterThanOrEqual(250);
    // Progress comes between host_started and host_finished.
    const types = messages.map((m) => m.type);
    expect(types.indexOf("host_started")).toBeLessThan(types.indexOf("progress"));
    expect(types.lastIndexOf("progress")).toBeLessThan(types.indexOf("host_finished"));
  });

  it("sends the last lines of the log with a failed host, and prints them", async () => {
    const { exitCode, messages } = await cli(["build", "progress", "failing", "--json"]);
    expect(exitCode).toBe(1);
    const finished = messages.find((m) => m.type === "host_finished") as unknown as { status: string; error: string; logTail: string[] };
    expect(finished.status).toBe("failure");
    expect(finished.error).toMatch(/^builder for '.*-failing-system\.drv' failed with exit code 2$/);
    expect(finished.logTail).toHaveLength(50);
    const output = finished.logTail.filter((l) => l.startsWith("failing-system> failing line"));
    expect(output.at(-1)).toBe("failing-system> failing line 120");
    expect(finished.logTail).toContain("failing-system> error: the service failed to start");

    const human = await runCli(["build", "progress", "failing"], env());
    expect(human.exitCode).toBe(1);
    expect(human.stdout).toContain("    │ failing-system> failing line 120");
    expect(human.stdout).not.toContain("\u001b[");
  });

  it("reports an evaluation error as eval_error with nix's message and location, without ANSI codes", async () => {
    const { exitCode, messages } = await cli(["build", "progress", "evalfail", "--json"]);
    expect(exitCode).toBe(1);
    const finished = messages.find((m) => m.type === "host_finished") as unknown as {
      status: string;
      error: string;
      location: { file: string; line: number; column: number };
      logTail?: string[];
    };
    expect(finished.status).toBe("eval_error");
    expect(finished.error).toMatch(/^attribute 'services' missing/);
    expect(finished.error).not.toContain("\u001b");
    expect(finished.location).toMatchObject({ file: "flake.nix", line: expect.any(Number), column: expect.any(Number) });
    const flakeText = await readFile(join(progressFlake.dir, "flake.nix"), "utf8");
    expect(flakeText.split("\n")[finished.location.line - 1]).toContain("services.missing");
    expect(messages.at(-1)).toMatchObject({ type: "completed", status: "failure", results: [{ host: "evalfail", status: "eval_error" }] });

    const human = await runCli(["build", "progress", "evalfail"], env());
    expect(human.stdout).toMatch(/\[1\/1\] evalfail: eval_error in \S+ \(flake\.nix:\d+\): attribute 'services' missing/);
  });
});

describe("discovery", () => {
  it("lists the builder's repos and their hosts", async () => {
    const { exitCode, messages } = await cli(["build", "--list", "--json"]);
    expect(exitCode).toBe(0);
    const [discover] = messages;
    expect(discover).toMatchObject({ type: "discover", version: expect.stringMatching(/^\d+\.\d+\.\d+/) });
    const repos = Object.fromEntries((discover?.repos as Array<{ name: string; hosts: string[] }>).map((r) => [r.name, r]));
    expect(repos["progress"]?.hosts).toEqual(["evalfail", "failing", "multi"]);
    expect(repos["fixture"]?.hosts).toEqual(["alpha", "beta", "broken", "delta", "gamma", "slow"]);

    const human = await runCli(["build", "--list", "fixture"], env());
    expect(human.exitCode).toBe(0);
    expect(human.stdout.split("\n")).toContain("  gamma");
    expect(human.stdout).not.toContain("multi");
  });

  it("re-evaluates on refresh and otherwise answers from its cache", async () => {
    await progressFlake.editFlake((text) => text.replace("multi.config", "newhost.config = self.nixosConfigurations.multi.config;\n        multi.config"));
    const cached = await cli(["build", "--list", "progress", "--json"]);
    const cachedHosts = (cached.messages[0]?.repos as Array<{ name: string; hosts: string[] }>).find((r) => r.name === "progress")?.hosts;
    expect(cachedHosts).not.toContain("newhost");
    const refreshed = await cli(["build", "--list", "progress", "--refresh", "--json"]);
    const hosts = (refreshed.messages[0]?.repos as Array<{ name: string; hosts: string[] }>).find((r) => r.name === "progress")?.hosts;
    expect(hosts).toEqual(["evalfail", "failing", "multi", "newhost"]);
  });
});

describe("status, heartbeats and cancel", () => {
  it("shows the running and queued jobs, keeps their requesters informed, and cancels both", async () => {
    await flake.clearPid();
    const running = await Inbox.open(deployer);
    running.send("build.fixture.slow");
    const runningAccepted = await running.waitFor((m) => m.type === "accepted");
    await running.waitFor((m) => m.type === "host_started");
    const queued = await Inbox.open(deployer);
    queued.send("build.fixture.alpha");
    const queuedAccepted = await queued.waitFor((m) => m.type === "accepted");

    const status = await cli(["status", "--json"]);
    expect(status.exitCode).toBe(0);
    expect(status.messages[0]).toMatchObject({
      type: "status",
      running: { jobId: runningAccepted.jobId, repo: "fixture", target: "slow", currentHost: "slow", hostIndex: 1, totalHosts: 1 },
      queued: [{ jobId: queuedAccepted.jobId, repo: "fixture", target: "alpha", position: 1, requesters: 1 }],
    });
    const human = await runCli(["status"], env());
    expect(human.stdout).toContain(`running: job ${String(runningAccepted.jobId)} fixture slow`);
    expect(human.stdout).toContain(`1. job ${String(queuedAccepted.jobId)} fixture alpha`);

    // Heartbeats (every second in this test's config) reach both requesters.
    await queued.waitFor((m) => m.type === "heartbeat" && m.state === "queued" && m.position === 1, 5_000);
    await running.waitFor((m) => m.type === "heartbeat" && m.state === "running" && m.host === "slow", 5_000);

    const removeQueued = await cli(["cancel", String(queuedAccepted.jobId), "--json"]);
    expect(removeQueued.exitCode).toBe(0);
    expect(removeQueued.messages[0]).toEqual({ type: "cancel", jobId: queuedAccepted.jobId, outcome: "removed" });
    expect(await queued.final(5_000)).toMatchObject({ type: "completed", status: "cancelled", results: [{ host: "alpha", status: "cancelled" }] });

    const pid = await flake.slowPid();
    expect(isRunning(pid)).toBe(true);
    const stopRunning = await runCli(["cancel", String(runningAccepted.jobId)], env());
    expect(stopRunning.exitCode).toBe(0);
    expect(stopRunning.stdout).toContain("stopping");
    expect(await running.final(10_000)).toMatchObject({ type: "completed", status: "cancelled", results: [{ host: "slow", status: "cancelled" }] });
    expect(running.messages.find((m) => m.type === "host_finished")).toMatchObject({ status: "cancelled" });
    expect(isRunning(pid)).toBe(false);

    const idle = await cli(["status", "--json"]);
    expect(idle.messages[0]).toMatchObject({ running: null, queued: [] });
    running.close();
    queued.close();
  });

  it("says plainly when there is no such job", async () => {
    const unknown = await runCli(["cancel", "j0000000000"], env());
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toMatch(/no queued or running job j0000000000/);
    const invalid = await runCli(["cancel", "; rm -rf /"], env());
    expect(invalid.exitCode).toBe(2);
    expect(invalid.stderr).toContain("invalid job id");
    const inbox = await Inbox.open(deployer);
    inbox.send("build.cancel", { jobId: "$(id)" });
    expect(await inbox.final(5_000)).toMatchObject({ type: "rejected", code: "malformed_payload" });
    inbox.send("build.status", "not json");
    inbox.close();
  });
});

describe("a builder that goes silent", () => {
  it("makes the waiting client give up after --idle-timeout, exit 2", async () => {
    const lonely = await startNatsServer();
    const own = await startBuilder({ natsUrl: lonely.url, seedFile: lonely.identities.builder.seedFile, repos: { fixture: flake.url }, build: { timeout: "5m" } });
    await flake.clearPid();
    try {
      const client = spawnCli(["build", "fixture", "slow", "--idle-timeout", "2s"], {
        HOMELAB_DEPLOY_NATS_URL: lonely.url,
        HOMELAB_DEPLOY_NKEY_SEED_FILE: lonely.identities.testDeployer.seedFile,
      });
      await own.waitForLog((l) => l.msg === "building host");
      await own.stop("SIGKILL");
      const result = await client;
      // The idle timeout ended the wait (the CLI's own words say which timer fired); a client
      // that waited on would hit the test's timeout instead.
      expect(result.exitCode).toBe(2);
      expect(String(result.stderr)).toMatch(/sent nothing for 2s; it may have restarted/);
    } finally {
      await own.stop("SIGKILL");
      await lonely.stop();
      // The killed builder's nix is an orphan now; end it like systemd's KillMode would.
      const pid = await flake.slowPid().catch(() => 0);
      if (pid > 1 && isRunning(pid)) process.kill(pid, "SIGKILL");
    }
  });
});
