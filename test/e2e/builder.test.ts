/**
 * The builder end to end: a real nats-server with the plan's NKey users and
 * permissions, the daemon as a child process, real nix building a fixture
 * flake, and the real CLI as the requester.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsConnection } from "nats";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { Inbox, connectAs, sleep, type Message } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { isRunning, processesMatching } from "../support/processes.js";

let nats: NatsServer;
let flake: FixtureFlake;
let builder: BuilderProcess;
let deployer: NatsConnection;

function clientEnv(role: "testDeployer" | "adminDeployer" | "scheduler" = "testDeployer"): Record<string, string> {
  return { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities[role].seedFile };
}

async function buildJson(args: string[], role?: "testDeployer" | "adminDeployer" | "scheduler") {
  const result = await runCli(["build", ...args, "--json"], clientEnv(role));
  return { ...result, messages: jsonLines(result.stdout) };
}

function finalOf(messages: Message[]): Message {
  const final = messages.at(-1);
  expect(final?.type === "completed" || final?.type === "rejected").toBe(true);
  return final as Message;
}

beforeAll(async () => {
  nats = await startNatsServer();
  flake = await createFixtureFlake();
  builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flake.url, "other-repo": flake.url },
    build: { timeout: "2s" },
  });
  deployer = await connectAs(nats.url, nats.identities.testDeployer);
});

afterAll(async () => {
  await deployer?.close();
  await builder?.stop();
  await nats?.stop();
});

describe("a single host", () => {
  it("builds and reports the store path and the locked revision", async () => {
    const revision = await flake.bump();
    const { exitCode, messages, stderr } = await buildJson(["fixture", "alpha"]);
    expect(stderr).toBe("");
    expect(exitCode).toBe(0);
    const events = messages.filter((m) => m.type !== "progress" && m.type !== "heartbeat");
    expect(events.map((m) => m.type)).toEqual(["accepted", "job_started", "host_started", "host_finished", "completed"]);
    const [accepted, started, , finished, completed] = events as Message[];
    expect(accepted).toMatchObject({ repo: "fixture", target: "alpha", ref: null, position: 0, joined: false });
    expect(started).toMatchObject({ revision, hosts: ["alpha"] });
    expect(finished).toMatchObject({ host: "alpha", status: "success", index: 1, total: 1 });
    expect(completed).toMatchObject({ status: "success", revision, jobId: accepted?.jobId });
    const storePath = (finished as { storePath: string }).storePath;
    expect(storePath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-alpha$/);
    // The build output is real: it holds the nonce of the revision we committed.
    const nonce = await readFile(join(flake.dir, "nonce"), "utf8");
    expect(await readFile(join(storePath, "nonce"), "utf8")).toContain(nonce);
  });

  it("prints readable lines and a summary table without --json", async () => {
    const { exitCode, stdout } = await runCli(["build", "fixture", "beta"], clientEnv());
    expect(exitCode).toBe(0);
    expect(stdout).toMatch(/^accepted: job j[0-9a-f]+, starting now$/m);
    expect(stdout).toMatch(/^\[1\/1\] beta: success in .* → \/nix\/store\/.*-beta$/m);
    expect(stdout).toMatch(/^HOST\s+STATUS\s+DURATION\s+CHANGES\s+RESULT$/m);
    expect(stdout).toMatch(/^beta\s+success\s+\S+\s+(-|none|\d+ packages?.*)\s+\/nix\/store\/.*-beta$/m);
  });

  it("kills the whole nix process tree when a host outlives build.timeout", async () => {
    await flake.clearPid();
    const { exitCode, messages } = await buildJson(["fixture", "slow"]);
    expect(exitCode).toBe(1);
    const finished = messages.find((m) => m.type === "host_finished");
    expect(finished).toMatchObject({ host: "slow", status: "timeout" });
    expect(finished?.error).toBe("timed out after 2s; the nix process tree was killed");
    expect(finalOf(messages)).toMatchObject({ status: "failure", results: [{ host: "slow", status: "timeout" }] });
    const pid = await flake.slowPid();
    expect(pid).toBeGreaterThan(1);
    expect(isRunning(pid)).toBe(false);
    expect(await processesMatching(flake.dir)).toEqual([]);
  });
});

describe("target all", () => {
  it("builds every host in turn, reports each, and exits 1 when any failed", async () => {
    const revision = await flake.bump();
    const { exitCode, messages } = await buildJson(["fixture", "all"]);
    expect(exitCode).toBe(1);
    const started = messages.find((m) => m.type === "job_started");
    expect(started?.hosts).toEqual(["alpha", "beta", "broken", "delta", "gamma", "slow"]);
    const completed = finalOf(messages) as { status: string; revision: string; results: Array<Record<string, unknown>> };
    expect(completed.status).toBe("failure");
    expect(completed.revision).toBe(revision);
    const byHost = Object.fromEntries(completed.results.map((r) => [r.host, r]));
    for (const host of ["alpha", "beta", "delta", "gamma"]) {
      expect(byHost[host]).toMatchObject({ status: "success", storePath: expect.stringMatching(new RegExp(`-${host}$`)) });
    }
    expect(byHost["broken"]).toMatchObject({ status: "failure", error: expect.stringMatching(/failed with exit code 1/) });
    expect(byHost["slow"]).toMatchObject({ status: "timeout" });
    // The failure carries the end of the build log, in order.
    const brokenDone = messages.find((m) => m.type === "host_finished" && m.host === "broken") as unknown as { logTail: string[] };
    const outputLines = brokenDone.logTail.filter((l) => l.startsWith("broken> broken output line"));
    expect(outputLines.at(-1)).toBe("broken> broken output line 80");
    expect(brokenDone.logTail.length).toBeLessThanOrEqual(50);
    expect(brokenDone.logTail.some((l) => l.includes("broken: giving up"))).toBe(true);
    // One host after another, in the order the job_started message gave.
    const order = messages.filter((m) => m.type === "host_started").map((m) => m.host);
    expect(order).toEqual(started?.hosts);
  });
});

describe("rejections", () => {
  it("names the known repos for an unknown repo", async () => {
    const { exitCode, messages } = await buildJson(["nope", "alpha"]);
    expect(exitCode).toBe(2);
    expect(messages).toEqual([
      expect.objectContaining({ type: "rejected", code: "unknown_repo", known: ["fixture", "other-repo"] }),
    ]);
  });

  it("does not mistake Object.prototype's keys for repos", async () => {
    for (const repo of ["constructor", "toString", "hasOwnProperty", "valueOf"]) {
      const inbox = await Inbox.open(deployer);
      inbox.send(`build.${repo}.alpha`);
      expect(await inbox.final(10_000)).toMatchObject({ type: "rejected", code: "unknown_repo" });
      inbox.close();
    }
  });

  it("names the repo's hosts for an unknown host", async () => {
    const { exitCode, messages, stdout } = await buildJson(["fixture", "nosuchhost"]);
    expect(exitCode).toBe(2);
    expect(messages[0]).toMatchObject({ type: "rejected", code: "unknown_host" });
    expect(messages[0]?.known).toEqual(["alpha", "beta", "broken", "delta", "gamma", "slow"]);
    expect(stdout).toContain("nosuchhost");
  });

  it("answers malformed payloads with malformed_payload and keeps serving", async () => {
    const payloads = ["not json", "[1,2]", '{"ref": 5}', '{"ref": "main", "extra": true}', "null", "x".repeat(5000)];
    for (const payload of payloads) {
      const inbox = await Inbox.open(deployer);
      inbox.send("build.fixture.alpha", payload);
      expect(await inbox.final(10_000)).toMatchObject({ type: "rejected", code: "malformed_payload" });
      inbox.close();
    }
    const { exitCode } = await buildJson(["fixture", "alpha"]);
    expect(exitCode).toBe(0);
  });

  it("rejects hostile host names, refs and subjects before running anything", async () => {
    const hostileTargets = ["-rf", "a;b", "$(id)", "a|b", "`id`", "a&&b", "x".repeat(64), "-", "a'b", 'a"b', "a\\b", "ä"];
    const hostileRefs = ["--upload-pack=touch /tmp/pwned", "a..b", "main; rm -rf /", "$(id)", " main", "-main", "main.lock", "a//b", "feature/", "x".repeat(201), "ma\nin"];
    const hostileSubjects = ["build.fixture.alpha.extra", "build.fixture", "build.fix$ture.alpha", "build.-x.alpha"];
    const before = builder.logs.length;
    const answers: Message[] = [];
    for (const target of hostileTargets) {
      const inbox = await Inbox.open(deployer);
      inbox.send(`build.fixture.${target}`);
      answers.push(await inbox.final(10_000));
      inbox.close();
    }
    for (const ref of hostileRefs) {
      const inbox = await Inbox.open(deployer);
      inbox.send("build.fixture.alpha", { ref });
      answers.push(await inbox.final(10_000));
      inbox.close();
    }
    for (const subject of hostileSubjects) {
      const inbox = await Inbox.open(deployer);
      inbox.send(subject);
      answers.push(await inbox.final(10_000));
      inbox.close();
    }
    for (const answer of answers) expect(answer).toMatchObject({ type: "rejected", code: "invalid_name" });
    expect(builder.logs.slice(before).filter((l) => l.msg === "job queued")).toEqual([]);

    // The CLI refuses the same names itself, without asking anyone.
    const cli = await runCli(["build", "fixture", "a;b"], clientEnv());
    expect(cli.exitCode).toBe(2);
    expect(cli.stderr).toContain("invalid host name");
    const cliRef = await runCli(["build", "fixture", "alpha", "--ref", "--upload-pack=x"], clientEnv());
    expect(cliRef.exitCode).toBe(2);
  });
});

describe("the queue", () => {
  it("runs jobs one at a time in arrival order, never overlapping", async () => {
    await flake.bump();
    const hosts = ["gamma", "delta", "alpha", "beta"];
    const inboxes: Inbox[] = [];
    for (const host of hosts) {
      const inbox = await Inbox.open(deployer);
      inbox.send(`build.fixture.${host}`);
      await inbox.waitFor((m) => m.type === "accepted");
      inboxes.push(inbox);
    }
    const positions = inboxes.map((inbox) => inbox.messages[0]?.position);
    expect(positions).toEqual([0, 1, 2, 3]);
    const finals = await Promise.all(inboxes.map((inbox) => inbox.final()));
    for (const final of finals) expect(final).toMatchObject({ type: "completed", status: "success" });
    inboxes.forEach((inbox) => inbox.close());

    const intervals = (await flake.intervals()).filter((i) => hosts.includes(i.host)).slice(-hosts.length);
    expect(intervals.map((i) => i.host)).toEqual(hosts);
    for (let i = 1; i < intervals.length; i++) {
      const previous = intervals[i - 1] as { end: number };
      expect(previous.end).toBeLessThanOrEqual((intervals[i] as { start: number }).start);
    }
    // Queued requesters heard their position move up as jobs started.
    expect(inboxes[3]?.messages.filter((m) => m.type === "queued").map((m) => m.position)).toEqual([2, 1]);
  });

  it("never overlaps builds across the whole run (from the builds' own start/end times)", async () => {
    const intervals = (await flake.intervals()).sort((a, b) => a.start - b.start);
    expect(intervals.length).toBeGreaterThan(5);
    for (let i = 1; i < intervals.length; i++) {
      const previous = intervals[i - 1] as { end: number; host: string };
      const current = intervals[i] as { start: number; host: string };
      if (previous.end === Number.POSITIVE_INFINITY) continue; // a killed build never wrote its end
      expect(previous.end, `${previous.host} overlaps ${current.host}`).toBeLessThanOrEqual(current.start);
    }
  });

  it("joins an identical queued request and tells both requesters everything", async () => {
    const blocker = await Inbox.open(deployer);
    blocker.send("build.fixture.slow");
    await blocker.waitFor((m) => m.type === "host_started");
    const first = await Inbox.open(deployer);
    const second = await Inbox.open(deployer);
    const other = await Inbox.open(deployer);
    first.send("build.fixture.delta");
    const a = await first.waitFor((m) => m.type === "accepted");
    second.send("build.fixture.delta");
    const b = await second.waitFor((m) => m.type === "accepted");
    other.send("build.fixture.delta", { ref: "main" });
    const c = await other.waitFor((m) => m.type === "accepted");
    expect(a).toMatchObject({ joined: false, position: 1 });
    expect(b).toMatchObject({ joined: true, jobId: a.jobId, position: 1 });
    // Same host, different ref: a different job.
    expect(c).toMatchObject({ joined: false, position: 2 });
    expect(c.jobId).not.toBe(a.jobId);
    const [fa, fb] = await Promise.all([first.final(), second.final(), other.final(), blocker.final()]);
    expect(fa).toMatchObject({ type: "completed", status: "success", jobId: a.jobId });
    expect(fb).toEqual(fa);
    const typesOf = (inbox: Inbox) => inbox.messages.filter((m) => m.type !== "accepted").map((m) => m.type);
    expect(typesOf(second)).toEqual(typesOf(first));
    for (const inbox of [blocker, first, second, other]) inbox.close();
  });
});

describe("refs", () => {
  it("builds the named branch instead of the default branch", async () => {
    const branchRev = await flake.branch("flake-update");
    const main = await buildJson(["fixture", "gamma"]);
    const branch = await buildJson(["fixture", "gamma", "--ref", "flake-update"]);
    expect(branch.exitCode).toBe(0);
    const completed = finalOf(branch.messages);
    expect(completed).toMatchObject({ status: "success", ref: "flake-update", revision: branchRev });
    const mainPath = (finalOf(main.messages).results as Array<{ storePath: string }>)[0]?.storePath;
    const branchPath = (completed.results as Array<{ storePath: string }>)[0]?.storePath;
    expect(branchPath).not.toBe(mainPath);
    expect(await readFile(join(branchPath as string, "nonce"), "utf8")).toContain("flake-update-");
  });

  it("builds a full commit id", async () => {
    const rev = await flake.branch("pinned");
    const { exitCode, messages } = await buildJson(["fixture", "alpha", "--ref", rev]);
    expect(exitCode, JSON.stringify(messages)).toBe(0);
    expect(finalOf(messages)).toMatchObject({ revision: rev });
  });

  it("reports a ref that does not exist as a failed job, not a crash", async () => {
    const { exitCode, messages } = await buildJson(["fixture", "alpha", "--ref", "no-such-branch"]);
    expect(exitCode).toBe(1);
    expect(finalOf(messages)).toMatchObject({ type: "completed", status: "failure", results: [{ host: "alpha", status: "failure" }] });
    expect(String(finalOf(messages).error)).toMatch(/no-such-branch/);
  });
});

describe("subjects the builder must not answer", () => {
  it("ignores build.responses traffic, even when it looks like a request", async () => {
    const listener = await Inbox.open(deployer);
    const before = builder.logs.length;
    deployer.publish("build.responses.someone", new TextEncoder().encode('{"ref":"main"}'), { reply: listener.subject });
    deployer.publish("build.responses.fixture.alpha", new Uint8Array(), { reply: listener.subject });
    deployer.publish("build.responses", new Uint8Array(), { reply: listener.subject });
    await deployer.flush();
    await sleep(700);
    expect(listener.messages).toEqual([]);
    const newLogs = builder.logs.slice(before);
    expect(newLogs.filter((l) => l.msg === "job queued" || l.msg === "request rejected")).toEqual([]);
    listener.close();
  });

  it("drops requests it cannot answer: no reply subject, or one outside build.responses.", async () => {
    const before = builder.logs.length;
    deployer.publish("build.fixture.alpha", new Uint8Array());
    deployer.publish("build.fixture.alpha", new Uint8Array(), { reply: "_INBOX.abc" });
    deployer.publish("build.fixture.alpha", new Uint8Array(), { reply: "deploy.responses.x" });
    await deployer.flush();
    const drops = async () => builder.logs.slice(before).filter((l) => String(l.msg).startsWith("dropping a request"));
    for (let i = 0; i < 50 && (await drops()).length < 3; i++) await sleep(100);
    expect((await drops()).map((l) => l.reply)).toEqual([null, "_INBOX.abc", "deploy.responses.x"]);
    expect(builder.logs.slice(before).filter((l) => l.msg === "job queued")).toEqual([]);
  });
});

describe("identities", () => {
  it.each(["adminDeployer", "scheduler"] as const)("lets the %s trigger a build and read its answers", async (role) => {
    const { exitCode, messages } = await buildJson(["fixture", "delta"], role);
    expect(exitCode).toBe(0);
    expect(finalOf(messages)).toMatchObject({ status: "success" });
  });

  it("is refused by the server without a valid NKey", async () => {
    const { createUser } = await import("nkeys.js");
    const { writeFile } = await import("node:fs/promises");
    const unknown = join(nats.dir, "unknown.nk");
    await writeFile(unknown, new TextDecoder().decode(createUser().getSeed()));
    const result = await runCli(["build", "fixture", "alpha"], { ...clientEnv(), HOMELAB_DEPLOY_NKEY_SEED_FILE: unknown });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/refused NKey user U[A-Z0-9]{55}/);
    expect(result.stderr).toMatch(/authorization violation/i);

    const garbage = join(nats.dir, "garbage.nk");
    await writeFile(garbage, "SUnot-a-seed\n");
    const bad = await runCli(["build", "fixture", "alpha"], { ...clientEnv(), HOMELAB_DEPLOY_NKEY_SEED_FILE: garbage });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain("malformed NKey seed");
    expect(bad.stderr).not.toContain("SUnot-a-seed");
  });

  it("never writes the builder's seed to its log", () => {
    expect(builder.output()).not.toContain(nats.identities.builder.seed);
    expect(builder.logs.find((l) => l.msg === "connected to NATS")?.user).toBe(nats.identities.builder.publicKey);
  });
});

describe("a requester with no builder", () => {
  it("says so plainly and exits 2", async () => {
    const lonely = await startNatsServer();
    try {
      const env = { HOMELAB_DEPLOY_NATS_URL: lonely.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: lonely.identities.testDeployer.seedFile };
      const t0 = Date.now();
      // --wait-for-builder 0: not asking again (that wait is wait-for-builder.test.ts's).
      const none = await runCli(["build", "fixture", "alpha", "--ack-timeout", "5s", "--wait-for-builder", "0"], env);
      expect(none.exitCode).toBe(2);
      expect(none.stderr).toMatch(/no builder is listening on build\.fixture\.alpha/);
      // NATS's no-responders answer comes at once; we do not wait for the timeout.
      expect(Date.now() - t0).toBeLessThan(4_000);
      const down = await runCli(["build", "fixture", "alpha", "--wait-for-builder", "0"], { ...env, HOMELAB_DEPLOY_NATS_URL: "nats://127.0.0.1:1" });
      expect(down.exitCode).toBe(2);
      expect(down.stderr).toMatch(/cannot reach NATS at nats:\/\/127\.0\.0\.1:1/);
    } finally {
      await lonely.stop();
    }
  });
});

describe("shutdown", () => {
  it("with build.resume false, on SIGTERM answers running and queued requesters cancelled, kills nix and exits 0 within 10 s", async () => {
    // Only this builder may see the requests: stop the shared one first.
    await builder.stop();
    const own = await startBuilder({
      natsUrl: nats.url,
      seedFile: nats.identities.builder.seedFile,
      repos: { fixture: flake.url },
      build: { timeout: "10m", resume: false },
    });
    try {
      await flake.clearPid();
      const running = spawnCli(["build", "fixture", "slow", "--json"], clientEnv());
      await own.waitForLog((l) => l.msg === "building host" && l.host === "slow");
      const queued = spawnCli(["build", "fixture", "alpha", "--json"], clientEnv());
      await own.waitForLog((l) => l.msg === "job queued" && l.target === "alpha");
      const pid = await flake.slowPid();
      expect(isRunning(pid)).toBe(true);
      const { code, ms } = await own.stop("SIGTERM");
      expect(code).toBe(0);
      expect(ms).toBeLessThan(10_000);
      const [r1, r2] = await Promise.all([running, queued]);
      const final1 = finalOf(jsonLines(String(r1.stdout)));
      const final2 = finalOf(jsonLines(String(r2.stdout)));
      expect(final1).toMatchObject({ type: "completed", status: "cancelled", results: [{ host: "slow", status: "cancelled" }] });
      expect(final2).toMatchObject({ type: "completed", status: "cancelled", error: expect.stringContaining("shutting down") });
      expect(r1.exitCode).toBe(1);
      expect(r2.exitCode).toBe(1);
      await sleep(200);
      expect(isRunning(pid)).toBe(false);
      expect(await processesMatching(flake.dir)).toEqual([]);
    } finally {
      await own.stop("SIGKILL");
    }
  });
});
