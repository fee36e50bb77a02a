/**
 * Faults, with real processes: NATS restarts mid-build, a nix that fails
 * oddly, 200 concurrent requesters, SIGTERM with a full queue. The promise:
 * every accepted request gets a final answer, nothing crashes the daemon,
 * builds never overlap. (The fuzzer is in test/e2e/fuzz.test.ts.)
 */
import { chmod, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import type { NatsConnection } from "nats";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { ROOT, jsonLines, runCli, spawnCli } from "../support/cli.js";
import { startBuilder } from "../support/daemon.js";
import { createFixtureFlake, type BuildInterval, type FixtureFlake } from "../support/flake.js";
import { Inbox, connectAs, sleep, type Message } from "../support/nats-client.js";
import { startNatsServer } from "../support/nats-server.js";
import { isRunning, processesMatching } from "../support/processes.js";

const cleanups = cleanupsAfterEach();
async function setup(options: { fixture?: string | readonly string[]; build?: Record<string, unknown>; env?: Record<string, string> } = {}) {
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const flake = await createFixtureFlake(options.fixture);
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flake.url },
    build: { timeout: "1m", ...options.build },
    env: options.env,
  });
  cleanups.push(() => builder.stop("SIGKILL"));
  const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
  return { nats, flake, builder, env };
}

function finalOf(stdout: string): Message {
  return jsonLines(stdout).at(-1) as Message;
}

/** No two intervals [start, end] of the builds' own log overlap. */
async function expectNoOverlap(flake: FixtureFlake): Promise<number> {
  const intervals = (await flake.intervals()).filter((i) => Number.isFinite(i.end)).sort((a, b) => a.start - b.start);
  for (let i = 1; i < intervals.length; i++) {
    const previous = intervals[i - 1] as BuildInterval;
    const current = intervals[i] as BuildInterval;
    expect(previous.end, `${previous.host} overlaps ${current.host}`).toBeLessThanOrEqual(current.start);
  }
  return intervals.length;
}

describe("NATS restarted in the middle of a build", () => {
  // The demo flake (laid over the fixture system it builds on, as examples/demo.ts does): three hosts of about a second each.
  const demoFlake = ["system-flake", join(ROOT, "examples", "demo-flake")];

  it("the build goes on and the requester gets the final message after the reconnect", async () => {
    const { nats, flake, builder, env } = await setup({ fixture: demoFlake });
    await flake.bump();
    const client = spawnCli(["build", "fixture", "all", "--json"], env);
    await builder.waitForLog((l) => l.msg === "building host" && l.index === 1);
    await nats.stop("SIGKILL");
    await builder.waitForLog((l) => l.msg === "disconnected from NATS");
    await sleep(1_000);
    await nats.start();
    const result = await client;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    const final = finalOf(String(result.stdout)) as { status: string; results: Array<{ status: string }> };
    expect(final).toMatchObject({ type: "completed", status: "success" });
    expect(final.results.map((r) => r.status)).toEqual(["success", "success", "success"]);
    await builder.waitForLog((l) => l.msg === "reconnected to NATS");
    expect(builder.child.exitCode).toBeNull();
  });

  it("a final message sent while NATS was down still arrives once it is back", async () => {
    const { nats, flake, builder, env } = await setup({ fixture: demoFlake });
    await flake.bump();
    const client = spawnCli(["build", "fixture", "all", "--json"], env);
    await builder.waitForLog((l) => l.msg === "building host" && l.index === 1);
    await nats.stop("SIGKILL");
    // The rest of the job ends while the server is down: the builder keeps the answer.
    await builder.waitForLog((l) => l.msg === "job completed", 20_000);
    await sleep(500);
    await nats.start();
    const result = await client;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    expect(finalOf(String(result.stdout))).toMatchObject({ type: "completed", status: "success" });
    // And the daemon still serves new requests.
    expect((await runCli(["build", "fixture", "web01"], env)).exitCode).toBe(0);
  });
});

describe("NATS not there at start-up", () => {
  it("the builder waits for it, logging why, and then serves", async () => {
    const nats = await startNatsServer();
    cleanups.push(() => nats.stop());
    await nats.stop("SIGKILL");
    const flake = await createFixtureFlake("tiny-flake");
    const builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url } }, { waitReady: false });
    cleanups.push(() => builder.stop("SIGKILL"));
    const waiting = await builder.waitForLog((l) => l.msg === "NATS not reachable yet; waiting for it");
    expect(waiting).toMatchObject({ servers: [nats.url], retryInMs: expect.any(Number) });
    await sleep(1_500);
    expect(builder.child.exitCode).toBeNull();
    await nats.start();
    await builder.waitForLog((l) => l.msg === "builder ready: listening on build.>", 20_000);
    const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
    expect((await runCli(["build", "fixture", "a"], env)).exitCode).toBe(0);
  });
});

describe("a nix that fails oddly", () => {
  async function oddNix() {
    const realNix = execFileSync("sh", ["-c", "command -v nix"]).toString().trim();
    const dir = await mkdtemp(join(tmpdir(), "hd-oddnix-"));
    const modeFile = join(dir, "mode");
    await writeFile(modeFile, "pass");
    const misbehave = `case "$(cat ${modeFile})" in
  137) echo "building..." >&2; exit 137 ;;
  garbage) printf '@nix {"action":\\n\\001\\002 garbage \\033[31m on stdout\\n'; printf '@nix {{{{\\nnot json\\n\\377\\376\\n' >&2; exit 0 ;;
  garbage-fail) head -c 3000 /dev/urandom >&2; exit 1 ;;
esac`;
    // "nix build" and "nix-store --realise" misbehave; everything else is the
    // real nix (in mode slow-fetch, "nix flake ..." only once the test opens the gate).
    const gate = join(dir, "gate");
    const slowFetch = `if [ "$1" = flake ] && [ "$(cat ${modeFile})" = slow-fetch ]; then while [ ! -e ${gate} ]; do sleep 0.1; done; fi`;
    await writeFile(join(dir, "nix"), `#!/bin/sh\n${slowFetch}\nif [ "$1" = build ]; then\n${misbehave}\nfi\nexec ${realNix} "$@"\n`);
    await writeFile(join(dir, "nix-store"), `#!/bin/sh\n${misbehave}\nexec ${realNix}-store "$@"\n`);
    await chmod(join(dir, "nix"), 0o755);
    await chmod(join(dir, "nix-store"), 0o755);
    return { dir, mode: (mode: string) => writeFile(modeFile, mode), openGate: () => writeFile(gate, "") };
  }

  it("reports exit 137, garbage output and a missing nix as clear per-host failures, and keeps serving", async () => {
    const odd = await oddNix();
    const { flake, builder, env } = await setup({ fixture: "tiny-flake", env: { PATH: `${odd.dir}:${process.env["PATH"]}` } });
    const build = async (target: string) => {
      await flake.bump();
      const result = await runCli(["build", "fixture", target, "--json"], env);
      return { exitCode: result.exitCode, final: finalOf(result.stdout) as { status: string; results: Array<{ host: string; status: string; error: string }> } };
    };

    await odd.mode("137");
    for (const target of ["a", "all"]) {
      const { exitCode, final } = await build(target);
      expect(exitCode).toBe(1);
      expect(final.results.length).toBeGreaterThan(0);
      for (const result of final.results) {
        expect(result).toMatchObject({ status: "failure", error: "nix exited with code 137 (killed, perhaps out of memory)" });
      }
    }

    await odd.mode("garbage");
    for (const target of ["a", "all"]) {
      const { exitCode, final } = await build(target);
      expect(exitCode).toBe(1);
      for (const result of final.results) {
        expect(result.status).toBe("failure");
        expect(result.error).toMatch(/printed no store path/);
      }
    }

    await odd.mode("garbage-fail");
    const { final: garbageFail } = await build("a");
    expect(garbageFail.results[0]).toMatchObject({ status: "failure", error: expect.stringMatching(/^nix exited with code 1/) });

    await odd.mode("pass");
    const healthy = await build("all");
    expect(healthy.exitCode).toBe(0);
    expect(healthy.final.results.map((r) => r.status)).toEqual(["success", "success"]);
    expect(builder.child.exitCode).toBeNull();
    expect(builder.logs.filter((l) => l.msg === "job crashed" || l.msg === "unexpected error while handling a request")).toEqual([]);
  });

  it("accepts a request while the host list is still being fetched", async () => {
    const odd = await oddNix();
    await odd.mode("slow-fetch");
    // Whatever happens, no fetch is left waiting on the gate.
    cleanups.push(() => odd.openGate());
    const nats = await startNatsServer();
    cleanups.push(() => nats.stop());
    const flake = await createFixtureFlake("tiny-flake");
    const builder = await startBuilder({
      natsUrl: nats.url,
      seedFile: nats.identities.builder.seedFile,
      repos: { fixture: flake.url },
      env: { PATH: `${odd.dir}:${process.env["PATH"]}` },
    });
    cleanups.push(() => builder.stop("SIGKILL"));
    const nc = await connectAs(nats.url, nats.identities.testDeployer);
    cleanups.push(() => nc.close());
    // The host list is loading, and its fetch cannot end before the test opens the gate: the
    // answer must not wait for it. An order of events, not a time: accepted comes first.
    const inbox = await Inbox.open(nc);
    inbox.send("build.fixture.a");
    expect(await inbox.waitFor((m) => m.type === "accepted" || m.type === "rejected", 30_000)).toMatchObject({ type: "accepted", repo: "fixture", target: "a" });
    expect(builder.logs.some((l) => l.msg === "loaded the repo's hosts" && l.repo === "fixture")).toBe(false);
    expect(builder.logs.find((l) => l.msg === "the host list is still loading; accepting the request unchecked")).toMatchObject({ repo: "fixture" });
    await odd.openGate();
    expect(await inbox.final(60_000)).toMatchObject({ type: "completed", status: "success" });
    // The catalog's fetch and the build ran side by side once the gate opened: either may end first.
    expect(await builder.waitForLog((l) => l.msg === "loaded the repo's hosts" && l.repo === "fixture", 60_000)).toMatchObject({ repo: "fixture" });
  });

  it("says nix is missing from PATH, per host", async () => {
    const { env, builder } = await setup({ fixture: "tiny-flake", env: { PATH: "/nonexistent" } });
    const result = await runCli(["build", "fixture", "a", "--json"], env);
    expect(result.exitCode).toBe(1);
    const final = finalOf(result.stdout);
    expect(final).toMatchObject({ type: "completed", status: "failure", results: [{ host: "a", status: "failure" }] });
    expect(String(final.error)).toMatch(/cannot run nix: .*ENOENT.*is nix on the builder's PATH/);
    expect(builder.child.exitCode).toBeNull();
  });
});

describe("200 concurrent requesters", () => {
  it("answers every one, joins identical requests, rejects beyond maxQueue, never overlaps builds", async () => {
    const { nats, flake, builder } = await setup({ build: { maxQueue: 6 } });
    const refs = [null, "b1", "b2", "b3"];
    for (const ref of refs.slice(1)) await flake.branch(ref as string);
    await flake.bump();
    const hosts = ["alpha", "beta", "gamma", "delta", "broken"];
    const connections: NatsConnection[] = [];
    for (let i = 0; i < 10; i++) connections.push(await connectAs(nats.url, i % 2 ? nats.identities.scheduler : nats.identities.testDeployer));
    cleanups.push(async () => Promise.all(connections.map((nc) => nc.close())));
    const requesters = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const inbox = await Inbox.open(connections[i % connections.length] as NatsConnection);
        const host = hosts[i % hosts.length] as string;
        const ref = refs[Math.floor(i / hosts.length) % refs.length] ?? null;
        return { inbox, host, ref };
      }),
    );
    for (const { inbox, host, ref } of requesters) inbox.send(`build.fixture.${host}`, ref ? { ref } : undefined);
    const finals = await Promise.all(requesters.map(({ inbox }) => inbox.final(120_000)));
    requesters.forEach(({ inbox }) => inbox.close());

    const firsts = requesters.map(({ inbox }) => inbox.messages[0] as Message);
    const accepted = firsts.filter((m) => m.type === "accepted");
    const rejected = firsts.filter((m) => m.type === "rejected");
    expect(accepted.length + rejected.length).toBe(200);
    expect(rejected.length).toBeGreaterThan(0);
    for (const r of rejected) expect(r).toMatchObject({ code: "queue_full", error: expect.stringContaining("the queue is full (6 jobs waiting)") });
    // Each job was created once; everyone else with the same host and ref joined it.
    const byJob = new Map<string, Message[]>();
    for (const a of accepted) byJob.set(String(a.jobId), [...(byJob.get(String(a.jobId)) ?? []), a]);
    for (const [, joins] of byJob) {
      expect(joins.filter((a) => a.joined === false)).toHaveLength(1);
      expect(new Set(joins.map((a) => `${String(a.target)}@${String(a.ref)}`)).size).toBe(1);
    }
    // 20 distinct (host, ref) pairs arrive at once: maxQueue of them are
    // queued (one more if the first had already started), the rest refused.
    expect(byJob.size).toBeGreaterThanOrEqual(6);
    expect(byJob.size).toBeLessThanOrEqual(7);
    // Every accepted requester got its job's completed, identical for all of a job's requesters.
    requesters.forEach(({ inbox }, i) => {
      const first = firsts[i] as Message;
      const final = finals[i] as Message;
      if (first.type === "rejected") expect(final).toBe(first);
      else expect(final).toMatchObject({ type: "completed", jobId: first.jobId });
    });
    for (const [jobId] of byJob) {
      const completions = finals.filter((f) => f.jobId === jobId).map((f) => JSON.stringify(f));
      expect(new Set(completions).size).toBe(1);
    }
    expect(await expectNoOverlap(flake)).toBeGreaterThanOrEqual(byJob.size - 1);
    expect(builder.child.exitCode).toBeNull();
  });
});

describe("SIGTERM with a full queue", () => {
  it("tells every requester the job is saved (interrupted), leaves no nix process and exits 0 within 10 s", async () => {
    const { nats, flake, builder } = await setup({ build: { timeout: "10m" } });
    const nc = await connectAs(nats.url, nats.identities.adminDeployer);
    cleanups.push(() => nc.close());
    await flake.clearPid();
    const running = await Inbox.open(nc);
    running.send("build.fixture.all");
    await builder.waitForLog((l) => l.msg === "building host" && l.host === "slow", 60_000);
    const queued: Inbox[] = [];
    for (const host of ["alpha", "beta", "gamma", "alpha", "beta", "gamma"]) {
      const inbox = await Inbox.open(nc);
      inbox.send(`build.fixture.${host}`);
      await inbox.waitFor((m) => m.type === "accepted");
      queued.push(inbox);
    }
    const pid = await flake.slowPid();
    // 0, not 1: the daemon met its own stop deadline (9.5 s; past it, it exits 1 saying
    // "graceful stop took too long"). Timing the exit from here would also time this machine.
    const { code } = await builder.stop("SIGTERM");
    expect(code).toBe(0);
    const interrupted = { type: "interrupted", resumes: true, reason: expect.stringContaining("SIGTERM") };
    expect(await running.waitFor((m) => m.type === "interrupted", 5_000)).toMatchObject(interrupted);
    for (const inbox of queued) expect(await inbox.waitFor((m) => m.type === "interrupted", 5_000)).toMatchObject(interrupted);
    // Not final: nobody was told the job ended, and nothing of the cancelled nix run was reported.
    for (const inbox of [running, ...queued]) {
      expect(inbox.messages.some((m) => m.type === "completed" || (m.type === "host_finished" && m.host === "slow"))).toBe(false);
    }
    expect(isRunning(pid)).toBe(false);
    expect(await processesMatching(flake.dir)).toEqual([]);
  });
});
