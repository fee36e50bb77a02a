/**
 * Failures say why, and nothing gets stuck (issue 13), end to end: a real
 * nats-server, real nix, the real CLI and builder. A "hanging" git server
 * is a loopback TCP server that accepts connections and never answers.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsConnection } from "nats";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { metricsBaseUrl } from "../support/metrics.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { Inbox, connectAs } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const run = promisify(execFile);

interface Hanging {
  url: string;
  close(): Promise<void>;
}

/** Accepts every connection and never sends a byte. */
async function hangingGitServer(): Promise<Hanging> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `git+http://127.0.0.1:${port}/x`,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

let nats: NatsServer;
let deployer: NatsConnection;
let tiny: FixtureFlake;
let hanging: Hanging;
const cleanups = cleanupsAfterEach();
const env = () => ({ HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile });

beforeAll(async () => {
  [nats, tiny, hanging] = await Promise.all([startNatsServer(), createFixtureFlake("tiny-flake"), hangingGitServer()]);
  deployer = await connectAs(nats.url, nats.identities.testDeployer);
});

afterAll(async () => {
  await deployer?.close();
  await hanging?.close();
  await nats?.stop();
});

async function builderFor(repos: Record<string, string>, build: Record<string, unknown> = {}): Promise<BuilderProcess> {
  const builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos, build });
  cleanups.push(() => builder.stop());
  return builder;
}

describe("a repo whose git server hangs", () => {
  it("does not hold up discovery: each repo answers with its own state", async () => {
    const builder = await builderFor({ hung: hanging.url, tiny: tiny.url }, { fetchTimeout: "10m" });
    await builder.waitForLog((l) => l.msg === "loaded the repo's hosts" && l.repo === "tiny", 60_000);
    const listed = await runCli(["build", "--list", "tiny"], env());
    expect(listed).toMatchObject({ exitCode: 0 });
    expect(listed.stdout.split("\n")).toEqual(expect.arrayContaining([expect.stringMatching(/^tiny \(git\+file:.*\) at [0-9a-f]+: 2 hosts$/), "  a", "  b"]));

    const inbox = await Inbox.open(deployer);
    inbox.send("build.discover", { refresh: true });
    const answer = await inbox.waitFor((m) => m.type === "discover" || m.type === "rejected", 10_000);
    const repos = Object.fromEntries((answer.repos as Array<{ name: string }>).map((r) => [r.name, r]));
    expect(repos["hung"]).toMatchObject({ hosts: [], fetchedAt: null, loading: true });
    expect(repos["tiny"]).toMatchObject({ hosts: ["a", "b"], fetchedAt: expect.any(String) });
    inbox.close();
  });

  it("lists every repo without waiting for it: build --list shows the hung one as still fetching", async () => {
    // The fetch of `hung` is bounded only by a 10 min fetchTimeout: its git server never answers in this test.
    const builder = await builderFor({ hung: hanging.url, tiny: tiny.url }, { fetchTimeout: "10m" });
    await builder.waitForLog((l) => l.msg === "loaded the repo's hosts" && l.repo === "tiny", 60_000);

    const listed = await runCli(["build", "--list", "--json"], env());
    expect(listed.exitCode).toBe(0);
    const [answer, ...more] = jsonLines(listed.stdout);
    expect(more).toEqual([]);
    expect(answer).toMatchObject({ type: "discover" });
    const repos = Object.fromEntries((answer?.repos as Array<{ name: string }>).map((r) => [r.name, r]));
    expect(repos["hung"]).toMatchObject({ hosts: [], fetchedAt: null, loading: true });
    expect(repos["tiny"]).toMatchObject({ hosts: ["a", "b"], fetchedAt: expect.any(String) });
    expect(repos["tiny"]).not.toHaveProperty("loading");

    const human = await runCli(["build", "--list"], env());
    expect(human.exitCode).toBe(0);
    expect(human.stdout.split("\n")).toEqual(expect.arrayContaining([expect.stringMatching(/^hung \(git\+http:.*\): 0 hosts — still fetching \(ask again\)$/), "  a"]));

    // Both commands ended while the hang went on: the builder is still fetching `hung`.
    const inbox = await Inbox.open(deployer);
    inbox.send("build.discover");
    const after = await inbox.waitFor((m) => m.type === "discover", 10_000);
    expect((after.repos as Array<{ name: string; loading?: boolean }>).find((r) => r.name === "hung")).toMatchObject({ loading: true });
    inbox.close();
  });

  it("holds the build slot for build.fetchTimeout at most, and says the fetch timed out", async () => {
    await builderFor({ hung: hanging.url, tiny: tiny.url }, { fetchTimeout: "3s" });
    const hung = spawnCli(["build", "hung", "all", "--json"], env());
    const healthy = spawnCli(["build", "tiny", "a", "--json"], env());
    const [hungResult, healthyResult] = await Promise.all([hung, healthy]);
    const hungFinal = jsonLines(String(hungResult.stdout)).at(-1);
    expect(hungResult.exitCode).toBe(1);
    expect(hungFinal).toMatchObject({ type: "completed", status: "failure" });
    expect(String(hungFinal?.error)).toMatch(/^fetching git\+http:\/\/127\.0\.0\.1:\d+\/x: timed out after 3s; the nix process tree was killed \(build\.fetchTimeout\)$/);
    expect(healthyResult.exitCode).toBe(0);
    expect(jsonLines(String(healthyResult.stdout)).at(-1)).toMatchObject({ type: "completed", status: "success" });
  });
});

describe("a host that exists only on a branch", () => {
  it("builds with --ref and is still unknown without it", async () => {
    const flake = await createFixtureFlake("tiny-flake");
    const git = (...args: string[]) => run("git", ["-C", flake.dir, "-c", "user.name=t", "-c", "user.email=t@e", ...args]);
    await git("checkout", "-q", "-b", "extra");
    const file = join(flake.dir, "flake.nix");
    await writeFile(file, (await readFile(file, "utf8")).replace('b = host "b";', 'b = host "b";\n        c = host "c";'));
    await git("commit", "-q", "-am", "add host c");
    await git("checkout", "-q", "main");
    const builder = await builderFor({ branchy: flake.url });
    await builder.waitForLog((l) => l.msg === "loaded the repo's hosts" && l.repo === "branchy", 60_000);

    const withRef = await runCli(["build", "branchy", "c", "--ref", "extra", "--json"], env());
    expect(withRef.exitCode).toBe(0);
    expect(jsonLines(withRef.stdout).at(-1)).toMatchObject({ type: "completed", status: "success", ref: "extra" });
    const without = await runCli(["build", "branchy", "c", "--json"], env());
    expect(without.exitCode).toBe(2);
    expect(jsonLines(without.stdout).at(-1)).toMatchObject({ type: "rejected", code: "unknown_host", known: ["a", "b"] });
  });
});

describe("a flake that does not evaluate", () => {
  it("reports a syntax error as an eval_error with nix's message and location, for a host and for all", async () => {
    const broken = await createFixtureFlake("tiny-flake");
    await broken.editFlake((text) => text.replace(/\}\s*$/, ""));
    const deep = await createFixtureFlake("tiny-flake");
    await deep.editFlake((text) => text.replace("nixosConfigurations = {", "nixosConfigurations = let f = n: 1 + f (n + 1); in builtins.seq (f 0) {"));
    const builder = await builderFor({ broken: broken.url, deep: deep.url });
    await builder.waitForLog((l) => l.msg === "could not list the repo's hosts" && l.repo === "broken", 60_000);

    const one = await runCli(["build", "broken", "a", "--json"], env());
    expect(one.exitCode).toBe(1);
    const oneFinal = jsonLines(one.stdout).at(-1);
    expect(oneFinal?.results).toEqual([
      expect.objectContaining({ host: "a", status: "eval_error", error: expect.stringMatching(/syntax error, unexpected end of file/), location: { file: "flake.nix", line: 22, column: 7 } }),
    ]);

    const all = await runCli(["build", "broken", "all"], env());
    expect(all.exitCode).toBe(1);
    expect(all.stdout).toMatch(/completed: failure, .*: fetching git\+file:.*: syntax error, unexpected end of file \(at flake\.nix:22:7\)/);

    const overflow = await runCli(["build", "deep", "a", "--json"], env());
    expect(overflow.exitCode).toBe(1);
    expect(jsonLines(overflow.stdout).at(-1)?.results).toEqual([
      expect.objectContaining({ host: "a", status: "eval_error", error: "stack overflow (possible infinite recursion)" }),
    ]);
  });
});

describe("hostile request floods", () => {
  it("answers every rejected request but logs rejections through the throttle", async () => {
    const builder = await builderFor({ tiny: tiny.url });
    const inbox = await Inbox.open(deployer);
    for (let i = 0; i < 60; i++) inbox.send("build.nope.a");
    await inbox.waitFor(() => inbox.messages.length >= 60, 30_000);
    expect(inbox.messages.every((m) => m.type === "rejected" && m.code === "unknown_repo")).toBe(true);
    const logged = builder.logs.filter((l) => l.msg === "request rejected" && l.code === "unknown_repo");
    expect(logged.length).toBe(10);
    inbox.close();
  });
});

describe("SIGHUP", () => {
  it("stops the builder gracefully: the running job's requester is told the job is saved and resumes", async () => {
    const flake = await createFixtureFlake();
    const builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url }, build: { timeout: "10m" } });
    cleanups.push(() => builder.stop("SIGKILL"));
    const inbox = await Inbox.open(deployer);
    inbox.send("build.fixture.slow");
    await builder.waitForLog((l) => l.msg === "building host" && l.host === "slow", 60_000);
    const { code } = await builder.stop("SIGHUP");
    expect(code).toBe(0);
    expect(await inbox.waitFor((m) => m.type === "interrupted", 5_000)).toMatchObject({ resumes: true, reason: expect.stringContaining("SIGHUP") });
    expect(inbox.messages.some((m) => m.type === "completed")).toBe(false);
    expect(builder.logs.some((l) => l.msg === "received signal" && l.signal === "SIGHUP")).toBe(true);
    inbox.close();
  });
});

describe("a NATS server with a small max_payload", () => {
  it("still gets every message, the final one cut to fit, when many hosts fail with long errors", async () => {
    const small = await startNatsServer({ maxPayload: 65_536 });
    cleanups.push(() => small.stop());
    const many = await createFixtureFlake("many-broken-flake");
    const builder = await startBuilder({ natsUrl: small.url, seedFile: small.identities.builder.seedFile, repos: { many: many.url } });
    cleanups.push(() => builder.stop());
    const result = await runCli(["build", "many", "all", "--json"], {
      HOMELAB_DEPLOY_NATS_URL: small.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: small.identities.testDeployer.seedFile,
      HOMELAB_DEPLOY_IDLE_TIMEOUT: "30s",
    });
    expect(result.exitCode).toBe(1);
    const messages = jsonLines(result.stdout);
    const finished = messages.filter((m) => m.type === "host_finished");
    expect(finished).toHaveLength(24);
    // Each host's own message carries its whole error.
    for (const m of finished) expect(m).toMatchObject({ status: "eval_error", error: expect.stringMatching(/check 39 of host\d+ failed/) });
    const final = messages.at(-1);
    expect(final).toMatchObject({ type: "completed", status: "failure" });
    expect(final?.results).toHaveLength(24);
    expect((final?.results as Array<{ status: string }>).every((r) => r.status === "eval_error")).toBe(true);
    for (const line of result.stdout.split("\n")) expect(Buffer.byteLength(line)).toBeLessThanOrEqual(65_536);
    expect(builder.logs.some((l) => l.msg === "message cut to fit the NATS server's max_payload" && l.type === "completed")).toBe(true);
  });
});

describe("a FIFO where a state file belongs", () => {
  it("is refused without blocking start-up; /readyz stays ready but degraded, and a metric counts the failed writes", async () => {
    const stateDir = join(await mkdtemp(join(tmpdir(), "hd-fifo-")), "state");
    await mkdir(stateDir);
    const files = ["metrics.json", "toplevels.json", "history.json", "gcroots.json"];
    await run("mkfifo", files.map((file) => join(stateDir, file)));
    const builder = await startBuilder({
      natsUrl: nats.url,
      seedFile: nats.identities.builder.seedFile,
      repos: { tiny: tiny.url },
      extra: { metrics: { listen: "127.0.0.1:0" }, stateDir },
    });
    cleanups.push(() => builder.stop());
    const baseUrl = await metricsBaseUrl(builder);
    const ready = await fetch(`${baseUrl}/readyz`);
    expect(ready.status).toBe(200);
    const report = (await ready.json()) as { ready: boolean; degraded: boolean; checks: { state: { ok: boolean; detail: string } } };
    expect(report).toMatchObject({ ready: true, degraded: true, checks: { state: { ok: false } } });
    expect(report.checks.state.detail).toContain(`cannot save metrics.json: ${join(stateDir, "metrics.json")} is a FIFO, not a regular file; remove it`);
    for (const file of files.slice(1)) {
      expect(report.checks.state.detail).toContain(`cannot save ${file}: ${join(stateDir, file)} is a FIFO, not a regular file`);
    }

    await tiny.bump();
    expect((await runCli(["build", "tiny", "all"], env())).exitCode).toBe(0);
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(/^homelab_deploy_state_writable\{file="metrics\.json"(,builder="[^"]*")?\} 0$/m);
    expect(metrics).toMatch(/^homelab_deploy_state_write_failures_total\{file="metrics\.json"(,builder="[^"]*")?\} [1-9]\d*$/m);
  });
});
