/**
 * Issue 6 end to end: `homelab-deploy mcp` as a real child process, driven
 * by the MCP SDK's Client over stdio, against a real nats-server with the
 * plan's permissions and a real builder on the fixture flakes.
 */
import { spawn } from "node:child_process";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult, Progress } from "@modelcontextprotocol/sdk/types.js";
import type { NatsConnection } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BuildToolOutputSchema, MCP_TAIL_LINES } from "../../src/mcp/build-result.js";
import { CLI } from "../support/cli.js";
import type { BuilderProcess } from "../support/daemon.js";
import { startBuildEnvironment, type BuildEnvironment } from "../support/environment.js";
import type { FixtureFlake } from "../support/flake.js";
import { Inbox, sleep } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { isRunning } from "../support/processes.js";

let nats: NatsServer;
let progressFlake: FixtureFlake;
let flake: FixtureFlake;
let builder: BuilderProcess;
let deployer: NatsConnection;
const servers: McpSession[] = [];

interface McpSession {
  client: Client;
  pid: number;
  stderr(): string;
  /** Its JSON log lines (stderr), for their fields. */
  logs(): Array<Record<string, unknown>>;
  close(): Promise<void>;
}

function natsEnv(url = nats.url, seedFile = nats.identities.testDeployer.seedFile): Record<string, string> {
  return { HOMELAB_DEPLOY_NATS_URL: url, HOMELAB_DEPLOY_NKEY_SEED_FILE: seedFile };
}

/** `homelab-deploy mcp …` as a child process, connected to an SDK Client over its stdio. */
async function startMcp(args: string[], env: Record<string, string> = natsEnv()): Promise<McpSession> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, "mcp", ...args],
    env: { HOMELAB_DEPLOY_LOG_LEVEL: "info", ...env },
    stderr: "pipe",
  });
  let stderr = "";
  transport.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const client = new Client({ name: "homelab-deploy-test", version: "1.0.0" });
  await client.connect(transport);
  const logs = () =>
    stderr
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  const session: McpSession = { client, pid: transport.pid ?? 0, stderr: () => stderr, logs, close: () => client.close() };
  servers.push(session);
  return session;
}

function text(result: CallToolResult): string {
  return result.content.map((c) => (c.type === "text" ? c.text : "")).join("\n");
}

async function call(session: McpSession, name: string, args: Record<string, unknown> = {}, options: { onprogress?: (p: Progress) => void; signal?: AbortSignal } = {}) {
  return (await session.client.callTool({ name, arguments: args }, undefined, { timeout: 120_000, ...options })) as CallToolResult;
}

let environment: BuildEnvironment | undefined;

beforeAll(async () => {
  environment = await startBuildEnvironment();
  ({ nats, progressFlake, flake, builder, deployer } = environment);
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close().catch(() => undefined)));
  await environment?.stop();
});

describe("the tools offered", () => {
  it("offers only the read-only tools without --enable-builds, and refuses a call to build", async () => {
    const mcp = await startMcp([]);
    const { tools } = await mcp.client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(["build_history", "build_status", "list_build_targets"]);
    expect(tools.every((t) => t.annotations?.readOnlyHint === true)).toBe(true);
    const refused = await call(mcp, "build", { repo: "fixture", target: "alpha" });
    expect(refused.isError).toBe(true);
    expect(text(refused)).toMatch(/tool build not found/i);
    expect(builder.logs.some((l) => l.msg === "job queued" && l["target"] === "alpha")).toBe(false);
  });

  it("adds build and cancel_build with --enable-builds, with input and output schemas", async () => {
    const mcp = await startMcp(["--enable-builds"]);
    const { tools } = await mcp.client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(["build", "build_history", "build_status", "cancel_build", "list_build_targets"]);
    const build = tools.find((t) => t.name === "build");
    expect(build?.inputSchema).toMatchObject({ required: ["repo", "target"], properties: { ref: { type: "string" } } });
    expect(build?.outputSchema?.required).toEqual(expect.arrayContaining(["outcome", "hosts", "jobId"]));
  });
});

describe("build", () => {
  let mcp: McpSession;
  beforeAll(async () => {
    mcp = await startMcp(["--enable-builds"]);
  });

  it("builds, reports nix's progress as growing notifications, and answers with the store path", async () => {
    await progressFlake.bump();
    const notes: Progress[] = [];
    const result = await call(mcp, "build", { repo: "progress", target: "multi" }, { onprogress: (p) => notes.push(p) });
    expect(result.isError).toBeFalsy();
    const output = BuildToolOutputSchema.parse(result.structuredContent);
    expect(output).toMatchObject({ outcome: "success", repo: "progress", target: "multi", ref: null, jobId: expect.stringMatching(/^j[0-9a-f]{10}$/) });
    expect(output.revision).toBe(await progressFlake.head());
    expect(output.hosts).toEqual([
      { host: "multi", status: "success", durationMs: expect.any(Number), storePath: expect.stringMatching(/^\/nix\/store\/[a-z0-9]{32}-multi-system$/), gcRoot: true, changes: null },
    ]);
    expect(text(result)).toMatch(/^completed: success, 1 of 1 host built/);
    expect(text(result)).toContain(output.hosts[0]?.storePath);

    // accepted, job_started, host_started, several nix progress snapshots, host_finished.
    expect(notes.length).toBeGreaterThanOrEqual(5);
    const values = notes.map((n) => n.progress);
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1] as number);
    expect(notes.every((n) => n.total === 1 && n.progress <= 1)).toBe(true);
    expect(notes.some((n) => /^\[1\/1\] multi: \d\/5 derivations/.test(String(n.message)))).toBe(true);
    expect(notes.at(-1)).toMatchObject({ progress: 1, message: expect.stringMatching(/^\[1\/1\] multi: success in /) });
  });

  it("answers a host's next build with what changed since the last good one, and lists both in build_history", async () => {
    const before = (await call(mcp, "build_history", { repo: "progress", host: "multi" })).structuredContent as { entries: Array<{ storePath?: string; revision: string }> };
    const previous = before.entries.find((e) => e.storePath);
    expect(previous).toBeDefined();
    await progressFlake.bump();
    const result = await call(mcp, "build", { repo: "progress", target: "multi" });
    const output = BuildToolOutputSchema.parse(result.structuredContent);
    const changes = output.hosts[0]?.changes;
    expect(changes).toMatchObject({ against: previous?.storePath, againstRevision: previous?.revision });
    expect(text(result)).toMatch(/^multi: (no package changes|\d+ packages? changed)/m);

    const history = await call(mcp, "build_history", { repo: "progress", host: "multi" });
    expect(history.isError).toBeFalsy();
    const entries = (history.structuredContent as { entries: Array<{ jobId: string; status: string; storePath?: string }> }).entries;
    expect(entries[0]).toMatchObject({ jobId: output.jobId, status: "success", storePath: output.hosts[0]?.storePath });
    expect(entries[1]?.storePath).toBe(previous?.storePath);
    expect(text(history).split("\n")[0]).toMatch(/^HOST\s+STATUS\s+DURATION\s+REVISION/);
    const unknown = await call(mcp, "build_history", { repo: "nope" });
    expect(unknown.isError).toBe(true);
    expect(text(unknown)).toContain("unknown repo nope");
  });

  it("reports a failed host with the end of its nix log", async () => {
    const result = await call(mcp, "build", { repo: "progress", target: "failing" });
    expect(result.isError).toBe(true);
    const output = BuildToolOutputSchema.parse(result.structuredContent);
    expect(output.outcome).toBe("failure");
    const [host] = output.hosts;
    expect(host).toMatchObject({ host: "failing", status: "failure", error: expect.stringMatching(/failing-system\.drv' failed with exit code 2$/) });
    expect(host?.logTail?.length).toBeLessThanOrEqual(MCP_TAIL_LINES);
    expect(host?.logTail).toContain("failing-system> error: the service failed to start");
    expect(host?.logTail?.filter((l) => l.includes("failing line")).at(-1)).toBe("failing-system> failing line 120");
    expect(text(result)).toMatch(/^completed: failure, 0 of 1 host built/);
    expect(text(result)).toContain("    │ failing-system> failing line 120");
  });

  it("reports an evaluation error as eval_error with nix's message and where it is", async () => {
    const result = await call(mcp, "build", { repo: "progress", target: "evalfail" });
    expect(result.isError).toBe(true);
    const output = BuildToolOutputSchema.parse(result.structuredContent);
    expect(output.hosts).toEqual([
      expect.objectContaining({ host: "evalfail", status: "eval_error", error: expect.stringMatching(/^attribute 'services' missing/), location: expect.objectContaining({ file: "flake.nix", line: expect.any(Number) }) }),
    ]);
    expect(text(result)).toMatch(/\[1\/1\] evalfail: eval_error in \S+ \(flake\.nix:\d+\): attribute 'services' missing/);
  });

  it("answers a rejected request (unknown host) with what would have worked", async () => {
    const result = await call(mcp, "build", { repo: "fixture", target: "nosuchhost" });
    expect(result.isError).toBe(true);
    expect(BuildToolOutputSchema.parse(result.structuredContent)).toMatchObject({
      outcome: "rejected",
      jobId: null,
      hosts: [],
      rejection: { code: "unknown_host", known: expect.arrayContaining(["alpha", "slow"]) },
    });
    expect(text(result)).toMatch(/^rejected: unknown host nosuchhost in repo fixture/);
  });

  it("refuses hostile names before anything reaches NATS", async () => {
    const hostile = [
      { repo: "fixture", target: "a;b" },
      { repo: "fixture", target: "alpha", ref: "--upload-pack=x" },
      { repo: "responses", target: "alpha" },
      { repo: "fixture", target: "alpha", extra: "$(id)" },
    ];
    const logsBefore = mcp.logs().length;
    for (const args of hostile) {
      const result = await call(mcp, "build", args);
      expect(result.isError, JSON.stringify(args)).toBe(true);
      expect(text(result)).toMatch(/Input validation error/);
    }
    await sleep(300);
    const seen = builder.logs.filter((l) => JSON.stringify(l).includes("a;b") || JSON.stringify(l).includes("upload-pack") || l["repo"] === "responses");
    expect(seen).toEqual([]);
    // The session is shared: an earlier test's request (e.g. nosuchhost) may be logged late, so only these count.
    const requested = mcp.logs().slice(logsBefore).filter((l) => l["msg"] === "build requested over MCP");
    expect(requested.filter((l) => hostile.some((args) => args.repo === l["repo"] && args.target === l["target"]))).toEqual([]);
  });
});

describe("the read-only tools", () => {
  let mcp: McpSession;
  beforeAll(async () => {
    mcp = await startMcp(["--enable-builds"]);
  });

  it("lists the builder's repos and their hosts", async () => {
    const all = await call(mcp, "list_build_targets");
    expect(all.isError).toBeFalsy();
    const repos = (all.structuredContent as { repos: Array<{ name: string; hosts: string[] }> }).repos;
    expect(Object.fromEntries(repos.map((r) => [r.name, r.hosts]))).toMatchObject({
      progress: ["evalfail", "failing", "multi"],
      fixture: ["alpha", "beta", "broken", "delta", "gamma", "slow"],
    });
    const one = await call(mcp, "list_build_targets", { repo: "fixture" });
    expect((one.structuredContent as { repos: unknown[] }).repos).toHaveLength(1);
    expect(text(one).split("\n")).toContain("  gamma");
    expect(text(one)).not.toContain("multi");
    const unknown = await call(mcp, "list_build_targets", { repo: "nope" });
    expect(unknown.isError).toBe(true);
    expect(text(unknown)).toBe("unknown repo nope; this builder builds progress, fixture");
  });

  it("shows a running job started by another requester, and cancels it", async () => {
    await flake.clearPid();
    const other = await Inbox.open(deployer);
    other.send("build.fixture.slow");
    const accepted = await other.waitFor((m) => m.type === "accepted");
    await other.waitFor((m) => m.type === "host_started");

    const status = await call(mcp, "build_status");
    expect(status.isError).toBeFalsy();
    expect(status.structuredContent).toMatchObject({
      running: { jobId: accepted.jobId, repo: "fixture", target: "slow", currentHost: "slow", hostIndex: 1, totalHosts: 1 },
      queued: [],
    });
    expect(text(status)).toContain(`running: job ${String(accepted.jobId)} fixture slow`);

    const pid = await flake.slowPid();
    const cancelled = await call(mcp, "cancel_build", { jobId: accepted.jobId });
    expect(cancelled.isError).toBeFalsy();
    expect(cancelled.structuredContent).toEqual({ jobId: accepted.jobId, outcome: "stopping" });
    expect(text(cancelled)).toContain("stopping");
    expect(await other.final(10_000)).toMatchObject({ type: "completed", status: "cancelled" });
    expect(isRunning(pid)).toBe(false);
    other.close();

    const idle = await call(mcp, "build_status");
    expect(idle.structuredContent).toMatchObject({ running: null, queued: [] });
    const unknown = await call(mcp, "cancel_build", { jobId: accepted.jobId });
    expect(unknown.isError).toBe(true);
    expect(text(unknown)).toMatch(/no queued or running job/);
  });
});

describe("cancelling a build call", () => {
  it("stops waiting at once while the build goes on for its other requester", async () => {
    const mcp = await startMcp(["--enable-builds"]);
    await flake.clearPid();
    await flake.bump();
    // A running job ahead, so the MCP's job waits in the queue where another requester can join it.
    const ahead = await Inbox.open(deployer);
    ahead.send("build.fixture.slow");
    const aheadAccepted = await ahead.waitFor((m) => m.type === "accepted");
    await ahead.waitFor((m) => m.type === "host_started");

    const abort = new AbortController();
    const notes: Progress[] = [];
    const pending = call(mcp, "build", { repo: "fixture", target: "alpha" }, { signal: abort.signal, onprogress: (p) => notes.push(p) });
    await builder.waitForLog((l) => l.msg === "job queued" && l["target"] === "alpha");
    const joiner = await Inbox.open(deployer);
    joiner.send("build.fixture.alpha");
    expect(await joiner.waitFor((m) => m.type === "accepted")).toMatchObject({ joined: true });
    // A heartbeat reached the MCP call as a progress notification while it waited in the queue.
    for (let i = 0; i < 50 && !notes.some((n) => /^queued: 1 job ahead/.test(String(n.message))); i++) await sleep(100);
    expect(notes.map((n) => n.message)).toContain("queued: 1 job ahead");

    abort.abort();
    await expect(pending).rejects.toThrow();
    const stopped = () => mcp.logs().find((l) => l["repo"] === "fixture" && l["target"] === "alpha" && String(l["msg"]).startsWith("stopped waiting for the build"));
    for (let i = 0; i < 100 && !stopped(); i++) await sleep(100);
    expect(stopped()).toBeDefined();

    // Order, not time: the MCP server let go while the job was still queued, and the job stays
    // queued without it: cancelling the slow one ahead lets it build for the joiner.
    const status = await call(mcp, "build_status");
    expect(status.structuredContent).toMatchObject({ queued: [{ repo: "fixture", target: "alpha", position: 1 }] });
    expect((await call(mcp, "cancel_build", { jobId: aheadAccepted.jobId })).isError).toBeFalsy();
    expect(await joiner.final(30_000)).toMatchObject({ type: "completed", status: "success", results: [{ host: "alpha", status: "success" }] });
    ahead.close();
    joiner.close();
    // The server is fine after the cancelled call.
    expect((await call(mcp, "build_status")).isError).toBeFalsy();
  });
});

describe("when NATS or the builder is down", () => {
  it("says no builder is listening when none is, and keeps serving", async () => {
    const lonely = await startNatsServer();
    try {
      const mcp = await startMcp(["--enable-builds", "--wait-for-builder", "2s"], natsEnv(lonely.url, lonely.identities.testDeployer.seedFile));
      const build = await call(mcp, "build", { repo: "fixture", target: "alpha" });
      expect(build.isError).toBe(true);
      expect(text(build)).toMatch(/^no builder is listening on build\.fixture\.alpha \(NATS reported no responders\)/);
      // It asked again within --wait-for-builder before saying so.
      const logs = mcp.stderr().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { msg?: string; target?: string });
      expect(logs.filter((l) => l.msg === "no builder is listening yet; asking again" && l.target === "alpha").length).toBeGreaterThan(0);
      const list = await call(mcp, "list_build_targets");
      expect(list.isError).toBe(true);
      expect(text(list)).toMatch(/^no builder is listening on build\.discover/);
      expect((await mcp.client.listTools()).tools).toHaveLength(5);
      expect(isRunning(mcp.pid)).toBe(true);
    } finally {
      await lonely.stop();
    }
  });

  it("says NATS cannot be reached, connects once it is back, and never exits", async () => {
    const later = await startNatsServer();
    await later.stop();
    const mcp = await startMcp(["--enable-builds"], natsEnv(later.url, later.identities.testDeployer.seedFile));
    const down = await call(mcp, "build_status");
    expect(down.isError).toBe(true);
    expect(text(down)).toMatch(new RegExp(`^cannot reach NATS at ${later.url}`));
    expect(isRunning(mcp.pid)).toBe(true);
    expect((await mcp.client.listTools()).tools).toHaveLength(5);

    // NATS comes up: the next call connects (and finds no builder there).
    await later.start();
    const up = await call(mcp, "build_status");
    expect(text(up)).toMatch(/^no builder is listening on build\.status/);

    // NATS goes away under an open connection: calls are told, and work again after nats.js reconnects.
    await later.stop();
    await sleep(300);
    const lost = await call(mcp, "build_status");
    expect(text(lost)).toMatch(new RegExp(`^lost the connection to NATS at ${later.url}; reconnecting`));
    await later.start();
    let again = "";
    for (let i = 0; i < 60 && !again.startsWith("no builder"); i++) {
      again = text(await call(mcp, "build_status"));
      if (!again.startsWith("no builder")) await sleep(250);
    }
    expect(again).toMatch(/^no builder is listening on build\.status/);
    expect(isRunning(mcp.pid)).toBe(true);
    await later.stop();
  });

  it("says what is missing when no credentials are configured", async () => {
    const mcp = await startMcp([], { HOMELAB_DEPLOY_NATS_URL: nats.url });
    const result = await call(mcp, "build_status");
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(/^no NATS credentials: pass --nkey-seed-file FILE \(HOMELAB_DEPLOY_NKEY_SEED_FILE\), or get the seed from Vault with --vault-role-id-file/);
  });
});

describe("stdio and lifecycle", () => {
  /** The server without the SDK client, to see every byte it writes and how it exits. */
  function rawServer() {
    const child = spawn(process.execPath, [CLI, "mcp"], {
      env: { ...process.env, ...natsEnv(), HOMELAB_DEPLOY_LOG_LEVEL: "debug" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out = { stdout: "", stderr: "" };
    child.stdout.on("data", (c: Buffer) => (out.stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (out.stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    const send = (message: object) => child.stdin.write(`${JSON.stringify(message)}\n`);
    send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } } });
    send({ jsonrpc: "2.0", method: "notifications/initialized" });
    send({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "build_status", arguments: {} } });
    const answered = async () => {
      for (let i = 0; i < 100 && !out.stdout.includes('"id":2'); i++) await sleep(100);
    };
    const logs = () => out.stderr.split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown> & { msg: string });
    return { child, out, exited, answered, logs };
  }

  it("writes only protocol to stdout, logs to stderr, and exits 0 when the client closes stdin", async () => {
    const server = rawServer();
    await server.answered();
    server.child.stdin.end();
    expect(await server.exited).toBe(0);

    const lines = server.out.stdout.split("\n").filter((l) => l.length > 0);
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ jsonrpc: "2.0" });
    expect(JSON.parse(lines[1] as string)).toMatchObject({ id: 2, result: { structuredContent: { running: null } } });
    expect(server.logs().map((l) => l.msg)).toEqual(expect.arrayContaining(["MCP server ready on stdio", "connected to NATS", "stopping the MCP server"]));
  });

  it("closes NATS and exits 0 on SIGTERM", async () => {
    const server = rawServer();
    await server.answered();
    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
    expect(server.logs()).toContainEqual(expect.objectContaining({ msg: "stopping the MCP server", why: "SIGTERM" }));
  });
});
