/**
 * Target `all` on a fleet-shaped flake (test/fixtures/fleet-flake): hosts
 * evaluated by a pool of nix eval workers, built one at a time in order as
 * soon as their .drv is known; evalMaxMemory enforced while a host
 * evaluates (test/fixtures/memory-hosts: hosts that hold a known amount of
 * memory, and one that allocates without end), a worker killed
 * mid-evaluation costing one host, eval errors with their
 * file:line, cancel during evaluation. A host whose evaluation never ends
 * (a fetch from a loopback server that never answers) lets the tests act
 * while a worker is known to be on it, without depending on timing.
 */
import { createServer, type Server, type Socket } from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { createServer as createHttpServer, type ServerResponse } from "node:http";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess, type LogLine } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { startNatsServer } from "../support/nats-server.js";
import { metricsBaseUrl, scrape, valueOf } from "../support/metrics.js";
import { isRunning, processesMatching } from "../support/processes.js";

const HOSTS = ["host01", "host02", "host03", "host04", "host05"];

const cleanups = cleanupsAfterEach();
async function setup(build: Record<string, unknown> = {}) {
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const flake = await createFixtureFlake(["fleet-flake", "memory-hosts"]);
  const builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fleet: flake.url }, build });
  cleanups.push(() => builder.stop("SIGKILL"));
  const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile };
  const buildAll = async () => {
    const result = await runCli(["build", "fleet", "all", "--json"], env);
    const lines = jsonLines(result.stdout);
    return { exitCode: result.exitCode, lines, final: lines.at(-1) as unknown as Final };
  };
  return { flake, builder, env, buildAll };
}

interface Final {
  type: string;
  status: string;
  results: Array<{ host: string; status: string; error?: string; location?: { file: string; line?: number } }>;
}

/** A loopback server that accepts connections and never answers: a fetch from it blocks its nix until killed. */
async function silentServer(): Promise<string> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no port");
  return `http://127.0.0.1:${address.port}/never`;
}

/**
 * A loopback server that holds every request until `open()`, then answers
 * with `body`: a host fetching from it evaluates once the test lets it.
 */
async function gatedServer(body: string): Promise<{ url: string; sha256: string; open(): void }> {
  const waiting: ServerResponse[] = [];
  let opened = false;
  const answer = (res: ServerResponse) => res.end(body);
  const server = createHttpServer((_req, res) => (opened ? answer(res) : waiting.push(res)));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no port");
  return {
    url: `http://127.0.0.1:${address.port}/gated`,
    sha256: createHash("sha256").update(body).digest("hex"),
    open() {
      opened = true;
      for (const res of waiting.splice(0)) answer(res);
    },
  };
}

/** Adds hosts to the fixture's `extra` attrset (Nix source, one `name = …;` each). */
function addHosts(flake: FixtureFlake, hosts: string): Promise<string> {
  return flake.editFlake((text) => text.replace("extra = { };", `extra = {\n${hosts}\n      };`));
}

/** Adds hosts of test/fixtures/memory-hosts/memory-hosts.nix to the fleet. */
function addMemoryHosts(flake: FixtureFlake, hosts: string[]): Promise<string> {
  return flake.editFlake((text) => text.replace("extra = { };", `extra = { inherit (import ./memory-hosts.nix { inherit system nonce; }) ${hosts.join(" ")}; };`));
}

/** A host whose evaluation blocks on a fetch that never completes (any hash: the path never exists). */
function stuckHost(name: string, url: string): string {
  return `        ${name}.config.system.build.toplevel = derivation { name = "${name}"; inherit system; builder = "/bin/sh"; src = builtins.fetchurl { url = "${url}"; sha256 = "${randomBytes(32).toString("hex")}"; }; };`;
}

/** A host whose evaluation fetches from `gate` (and so waits until it opens). */
function gatedHost(name: string, gate: { url: string; sha256: string }): string {
  return `        ${name}.config.system.build.toplevel = derivation { name = "${name}"; inherit system; builder = "/bin/sh"; args = [ "-c" "/bin/mkdir $out" ]; src = builtins.fetchurl { url = "${gate.url}"; sha256 = "${gate.sha256}"; }; };`;
}

const logged = (builder: BuilderProcess, msg: string) => builder.logs.filter((l) => l.msg === msg);
const evaluatingHost = (host: string) => (l: LogLine) => l.msg === "evaluating host" && l["host"] === host;

/** Two workers, each stuck on its first host, while `build fleet all --json …cliArgs` runs. */
async function bothWorkersStuck(cliArgs: string[] = []) {
  const { flake, builder, env } = await setup({ evalWorkers: 2 });
  await addHosts(flake, [stuckHost("host00a", await silentServer()), stuckHost("host00b", await silentServer())].join("\n"));
  const building = spawnCli(["build", "fleet", "all", "--json", ...cliArgs], env);
  const first = (await builder.waitForLog(evaluatingHost("host00a"), 60_000)) as LogLine & { pid: number };
  const second = (await builder.waitForLog(evaluatingHost("host00b"), 60_000)) as LogLine & { pid: number };
  return { flake, builder, env, building, first, second };
}

describe("target all: evaluation by a pool of workers", () => {
  it("evaluates more hosts than workers side by side, reports progress first, and builds them one at a time in order", async () => {
    const { flake, builder, buildAll } = await setup({ evalWorkers: 2 });
    await flake.bump();
    const { exitCode, lines, final } = await buildAll();
    expect(exitCode).toBe(0);
    expect(lines.find((l) => l.type === "job_started")).toMatchObject({ hosts: HOSTS });
    const types = lines.map((l) => l.type);
    const firstEvaluating = types.indexOf("evaluating");
    expect(firstEvaluating).toBeGreaterThan(types.indexOf("job_started"));
    expect(firstEvaluating).toBeLessThan(types.indexOf("host_started"));
    const evaluating = lines.filter((l) => l.type === "evaluating");
    expect(evaluating[0]).toMatchObject({ evaluated: 0, total: 5, failed: 0 });
    expect(evaluating.at(-1)).toMatchObject({ evaluated: 5, total: 5, failed: 0 });
    expect(evaluating.map((l) => l["evaluated"])).toEqual([0, 1, 2, 3, 4, 5]);

    expect(lines.filter((l) => l.type === "host_started").map((l) => l["host"])).toEqual(HOSTS);
    expect(final.results.map((r) => [r.host, r.status])).toEqual(HOSTS.map((h) => [h, "success"]));
    // From the builds themselves: in order, never two at once.
    const intervals = await flake.intervals();
    expect(intervals.map((i) => i.host)).toEqual(HOSTS);
    for (let i = 1; i < intervals.length; i++) expect(intervals[i]?.start).toBeGreaterThanOrEqual(intervals[i - 1]?.end as number);

    const [summary] = logged(builder, "evaluated every host");
    expect(summary).toMatchObject({ hosts: 5, failed: [], workers: 2, processes: 2, replacedForMemory: 0, lost: 0 });
    expect(logged(builder, "evaluating host").map((l) => l["host"]).sort()).toEqual(HOSTS);
    expect(new Set(logged(builder, "evaluating host").map((l) => l["pid"])).size).toBe(2);

    // An unchanged revision evaluates nothing.
    const again = await buildAll();
    expect(again.exitCode).toBe(0);
    expect(again.lines.filter((l) => l.type === "evaluating")).toEqual([]);
    expect(logged(builder, "evaluating hosts")).toHaveLength(1);
    expect(logged(builder, "every host's toplevel .drv is known from an earlier evaluation of this revision")).toHaveLength(1);
  });

  it("build.evalHostsPerWorker 1 evaluates each host in a process of its own", async () => {
    const { flake, builder, buildAll } = await setup({ evalWorkers: 1, evalHostsPerWorker: 1 });
    await flake.bump();
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(0);
    expect(final.results.map((r) => r.status)).toEqual(HOSTS.map(() => "success"));
    expect(logged(builder, "evaluated every host")[0]).toMatchObject({ processes: 5, replacedForMemory: 0, lost: 0 });
    const evaluating = logged(builder, "evaluating host");
    expect(evaluating.map((l) => l["host"])).toEqual(HOSTS);
    expect(new Set(evaluating.map((l) => l["pid"])).size).toBe(5);
    expect(logged(builder, "evaluation worker started").map((l) => l["hosts"])).toEqual([1, 1, 1, 1, 1]);
    const metrics = await scrape(await metricsBaseUrl(builder));
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "started" })).toBe(5);
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "replaced" })).toBe(0);
  });

  it("a worker past build.evalMaxMemory while it evaluates a host is replaced, and a fresh worker evaluates that host", async () => {
    // One big host (about 170 MiB) fits in 256 MiB in a fresh worker; a
    // second one on top of it does not, so it is evaluated again alone.
    const { flake, builder, buildAll } = await setup({ evalWorkers: 1, evalMaxMemory: "256MiB" });
    await addMemoryHosts(flake, ["big01", "big02", "big03"]);
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(0);
    expect(final.results.map((r) => [r.host, r.status])).toEqual(["big01", "big02", "big03", ...HOSTS].map((h) => [h, "success"]));
    const replaced = logged(builder, "evaluation worker replaced: over build.evalMaxMemory");
    expect(replaced.map((l) => l["during"])).toEqual(["big02", "big03"]);
    expect(replaced[0]).toMatchObject({ evalMaxMemory: "256MiB" });
    expect(logged(builder, "evaluated every host")[0]).toMatchObject({ processes: 3, replacedForMemory: 2, lost: 0 });
    const pidsOn = (host: string) => logged(builder, "evaluating host").filter((l) => l["host"] === host).map((l) => l["pid"]);
    expect(new Set(pidsOn("big02")).size).toBe(2);
    expect(pidsOn("big03")[1]).toBe(pidsOn("host05")[0]);
    const metrics = await scrape(await metricsBaseUrl(builder));
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "started" })).toBe(3);
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "replaced" })).toBe(2);
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "lost" })).toBe(0);
    expect(valueOf(metrics, "homelab_deploy_eval_worker_peak_rss_bytes", { repo: "fleet" })).toBeGreaterThan(128 * 1024 ** 2);
  });

  it("a host whose evaluation allocates without end fails on its own past build.evalMaxMemory; the others build", async () => {
    // The build timeout is far away: only the memory ceiling can stop it.
    const { flake, builder, buildAll } = await setup({ evalWorkers: 2, evalMaxMemory: "256MiB", timeout: "10m" });
    await addMemoryHosts(flake, ["hungry"]);
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(1);
    expect(final.results.map((r) => r.host)).toEqual([...HOSTS, "hungry"]);
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["hungry"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^evaluation exceeded evalMaxMemory \(256MiB\): /) });
    for (const host of HOSTS) expect(byHost[host]).toMatchObject({ status: "success" });
    // Worker 2 had evaluated host02 and host04 first: it is replaced, and a fresh worker finds hungry to blame.
    expect(logged(builder, "evaluation worker replaced: over build.evalMaxMemory").map((l) => l["during"])).toEqual(["hungry"]);
    const [exceeded] = logged(builder, "evaluation exceeded build.evalMaxMemory; a fresh worker goes on with the rest") as Array<LogLine & { pid: number }>;
    expect(exceeded).toMatchObject({ host: "hungry", evalMaxMemory: "256MiB" });
    expect(isRunning(exceeded?.pid as number)).toBe(false);
    expect(logged(builder, "evaluated every host")[0]).toMatchObject({ failed: ["hungry"], processes: 3, replacedForMemory: 1, lost: 1 });
    // Not remembered as this revision's answer: a larger evalMaxMemory could evaluate it.
    const again = await buildAll();
    expect(again.lines.filter((l) => l.type === "evaluating").at(-1)).toMatchObject({ evaluated: 6, total: 6, failed: 1 });
    expect(again.final.results.find((r) => r.host === "hungry")).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^evaluation exceeded evalMaxMemory/) });
  });

  it("a worker killed mid-evaluation costs only the host it was on; a fresh worker goes on with the rest", async () => {
    const { flake, builder, buildAll } = await setup({ evalWorkers: 2 });
    // Sorted between host02 and host03: worker 1 has host01, host02b, host04.
    await addHosts(flake, stuckHost("host02b", await silentServer()));
    const building = buildAll();
    const { pid } = (await builder.waitForLog(evaluatingHost("host02b"), 60_000)) as LogLine & { pid: number };
    process.kill(pid, "SIGKILL");
    const { exitCode, final } = await building;
    expect(exitCode).toBe(1);
    expect(final.results.map((r) => r.host)).toEqual(["host01", "host02", "host02b", "host03", "host04", "host05"]);
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["host02b"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/evaluation worker \(nix eval, pid \d+\) was killed by SIGKILL/) });
    for (const host of HOSTS) expect(byHost[host]).toMatchObject({ status: "success" });
    expect(logged(builder, "evaluation worker died; a fresh one goes on with the rest")).toMatchObject([{ host: "host02b", signal: "SIGKILL" }]);
    expect(logged(builder, "evaluating host").filter((l) => l["host"] === "host04")).toHaveLength(1);
    expect(logged(builder, "evaluating host").find((l) => l["host"] === "host04")?.["pid"]).not.toBe(pid);
    const metrics = await scrape(await metricsBaseUrl(builder));
    expect(valueOf(metrics, "homelab_deploy_eval_workers_total", { repo: "fleet", outcome: "lost" })).toBe(1);
  });

  it("reports each host that does not evaluate with nix's message and file:line, and builds the others", async () => {
    const { flake, buildAll } = await setup({ evalWorkers: 2 });
    await addHosts(
      flake,
      [
        '        asserted.config.system.build.toplevel = throw "Failed assertions:\\n- services.nginx needs a virtual host";',
        // A NixOS-style warning (a trace) before the error must not be taken for it.
        '        broken.config.system.build.toplevel = derivation { name = "broken"; inherit system; builder = "/bin/sh"; x = builtins.trace "warning: the option `foo` is deprecated" ({ }).services.missing; };',
      ].join("\n"),
    );
    const { exitCode, lines, final } = await buildAll();
    expect(exitCode).toBe(1);
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["asserted"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^Failed assertions:\n\s*- services\.nginx needs a virtual host/) });
    expect(byHost["broken"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^attribute 'services' missing/), location: { file: "flake.nix", line: expect.any(Number) } });
    const flakeText = await readFile(join(flake.dir, "flake.nix"), "utf8");
    expect(flakeText.split("\n")[(byHost["broken"]?.location?.line ?? 0) - 1]).toContain("services.missing");
    for (const host of HOSTS) expect(byHost[host]).toMatchObject({ status: "success" });
    expect(lines.filter((l) => l.type === "evaluating").at(-1)).toMatchObject({ evaluated: 7, total: 7, failed: 2 });
  });

  it("build.timeout bounds a host's evaluation: that host times out, the others build", async () => {
    const { flake, builder, buildAll } = await setup({ evalWorkers: 2, timeout: "6s" });
    await addHosts(flake, stuckHost("host02b", await silentServer()));
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(1);
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["host02b"]).toMatchObject({ status: "timeout", error: "evaluation timed out after 6s; the nix process tree was killed" });
    for (const host of HOSTS) expect(byHost[host]).toMatchObject({ status: "success" });
    const [timedOut] = logged(builder, "evaluation worker timed out; a fresh one goes on with the rest") as Array<LogLine & { pid: number }>;
    expect(timedOut).toMatchObject({ host: "host02b" });
    expect(isRunning(timedOut?.pid as number)).toBe(false);
  });

  it("SIGTERM during evaluation ends every worker's process tree before the daemon exits", async () => {
    // The job is saved and resumes when the builder returns (build.resume): the
    // requester hears `interrupted`, and gives up after its idle timeout.
    const { builder, building, first, second } = await bothWorkersStuck(["--idle-timeout", "5s"]);
    expect((await builder.stop("SIGTERM")).code).toBe(0);
    expect(isRunning(first.pid)).toBe(false);
    expect(isRunning(second.pid)).toBe(false);
    const done = await building;
    expect(jsonLines(String(done.stdout))).toContainEqual(expect.objectContaining({ type: "interrupted", resumes: true }));
    expect(done.exitCode).toBe(2);
  });

  it("a builder killed with SIGKILL during evaluation: the next start ends the workers it left before it builds anything", async () => {
    const { flake, builder, building, first, second } = await bothWorkersStuck(["--idle-timeout", "5s"]);
    await builder.stop("SIGKILL");
    // Each worker is its own process group: the builder's death does not end it.
    expect(isRunning(first.pid)).toBe(true);
    expect(isRunning(second.pid)).toBe(true);
    // The saved job resumes after the restart; a short timeout lets its stuck hosts fail fast.
    const config = JSON.parse(await readFile(builder.configFile, "utf8")) as { build: Record<string, unknown> };
    config.build = { ...config.build, timeout: "3s" };
    await writeFile(builder.configFile, JSON.stringify(config));
    const restarted = await spawnBuilder(builder.configFile);
    cleanups.push(() => restarted.stop("SIGKILL"));
    const reaped = logged(restarted, "ending a nix process left running by a builder that was killed").map((l) => l["pid"]);
    expect(reaped).toEqual(expect.arrayContaining([first.pid, second.pid]));
    const firstBuild = restarted.logs.findIndex((l) => l.msg === "building host");
    expect(firstBuild === -1 || firstBuild > restarted.logs.findIndex((l) => l.msg === "ending a nix process left running by a builder that was killed")).toBe(true);
    expect(isRunning(first.pid)).toBe(false);
    expect(isRunning(second.pid)).toBe(false);
    const completed = (await restarted.waitForLog((l) => l.msg === "job completed", 120_000)) as LogLine & { status: string };
    expect(completed.status).toBe("failure");
    await building;
    expect((await processesMatching(flake.dir)).filter((p) => p.cmdline.includes("nix"))).toEqual([]);
  });

  it("a job stopped during evaluation is evaluated by the pool again when it resumes, and completes", async () => {
    const { flake, builder, env } = await setup({ evalWorkers: 2 });
    const gate = await gatedServer(`homelab-deploy ${randomBytes(8).toString("hex")}\n`);
    await addHosts(flake, gatedHost("host00a", gate));
    const building = spawnCli(["build", "fleet", "all", "--json"], env);
    await builder.waitForLog(evaluatingHost("host00a"), 60_000);
    expect((await builder.stop("SIGTERM")).code).toBe(0);
    gate.open();
    const restarted = await spawnBuilder(builder.configFile);
    cleanups.push(() => restarted.stop("SIGKILL"));
    const result = await building;
    const lines = jsonLines(String(result.stdout));
    expect(result.exitCode).toBe(0);
    // No host was built before the stop (host00a comes first and never evaluated), so all six are evaluated again, side by side.
    expect(logged(restarted, "evaluating hosts")).toMatchObject([{ hosts: 6, workers: 2 }]);
    expect(new Set(logged(restarted, "evaluating host").map((l) => l["pid"])).size).toBe(2);
    const types = lines.map((l) => l.type);
    expect(types.indexOf("interrupted")).toBeLessThan(types.indexOf("resumed"));
    expect(lines.slice(types.indexOf("resumed")).some((l) => l.type === "evaluating")).toBe(true);
    const final = lines.at(-1) as unknown as Final;
    expect(final).toMatchObject({ type: "completed", status: "success" });
    expect(final.results.map((r) => r.host)).toEqual(["host00a", ...HOSTS]);
  });

  it("cancel during evaluation ends every worker's process tree", async () => {
    const { flake, builder, env, building, first, second } = await bothWorkersStuck();
    const started = builder.logs.find((l) => l.msg === "evaluating hosts") as LogLine & { jobId: string };
    // Both workers are stuck on their first host: nothing is evaluated yet, nothing building.
    const status = await runCli(["status", "--json"], env);
    expect(JSON.parse(status.stdout).running).toMatchObject({ jobId: started.jobId, currentHost: null, evaluation: { evaluated: 0, total: 7, failed: 0 } });
    expect((await runCli(["status"], env)).stdout).toContain("  0/7 hosts evaluated");
    expect((await runCli(["cancel", started.jobId], env)).exitCode).toBe(0);
    const result = await building;
    const final = jsonLines(String(result.stdout)).at(-1) as unknown as Final;
    expect(final).toMatchObject({ type: "completed", status: "cancelled" });
    expect(final.results.every((r) => r.status === "cancelled")).toBe(true);
    expect(isRunning(first.pid)).toBe(false);
    expect(isRunning(second.pid)).toBe(false);
    expect((await processesMatching(flake.dir)).filter((p) => p.cmdline.includes("nix"))).toEqual([]);
  });
});
