/**
 * Issue 20 item 12, end to end: a build asked while no builder is listening
 * (it restarts, or reconnects after a NATS outage) or while NATS cannot be
 * reached yet is asked again for --wait-for-builder, and builds once the
 * builder is there; a refusal by NATS ends it at once. Real nats-server with
 * the plan's permissions, real builder and nix on the tiny fixture flake,
 * the real CLI and MCP server.
 */
import { writeFile } from "node:fs/promises";
import { createConnection, createServer, type Server } from "node:net";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult, Progress } from "@modelcontextprotocol/sdk/types.js";
import { createUser } from "nkeys.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { CLI, spawnCli } from "../support/cli.js";
import { startBuilder } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { sleep } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

let nats: NatsServer;
let tiny: FixtureFlake;
const cleanups = cleanupsAfterEach();
const env = (role: keyof NatsServer["identities"] = "testDeployer") => ({
  HOMELAB_DEPLOY_NATS_URL: nats.url,
  HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities[role].seedFile,
});

beforeAll(async () => {
  [nats, tiny] = await Promise.all([startNatsServer(), createFixtureFlake("tiny-flake")]);
});
afterAll(async () => {
  await nats?.stop();
});

async function startTinyBuilder(): Promise<void> {
  const builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { tiny: tiny.url } });
  cleanups.push(() => builder.stop());
}

/** Resolves once `read()` matches `pattern` (checked as output arrives). */
async function until(read: () => string, pattern: RegExp, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pattern.test(read())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; got:\n${read()}`);
    await sleep(50);
  }
}

describe("a build asked before the builder is there", () => {
  it("waits for a builder started 5 s later, and builds (exit 0)", async () => {
    const client = spawnCli(["build", "tiny", "a"], env());
    let stdout = "";
    client.stdout?.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    await until(() => stdout, /^waiting for a builder: /m, "the client to say it waits");
    await sleep(5_000);
    await startTinyBuilder();
    const result = await client;
    expect(result.exitCode).toBe(0);
    const lines = String(result.stdout).split("\n");
    const waiting = lines.findIndex((l) => l.startsWith("waiting for a builder: no builder is listening on build.tiny.a"));
    const accepted = lines.findIndex((l) => l.startsWith("accepted: job "));
    expect(waiting).toBeGreaterThanOrEqual(0);
    expect(accepted).toBeGreaterThan(waiting);
    expect(lines.filter((l) => l.startsWith("waiting for a builder"))).toHaveLength(1);
    expect(lines.find((l) => l.startsWith("completed: "))).toMatch(/^completed: success, 1 of 1 host built/);
  }, 120_000);

  it("waits for NATS too: a server that is down when the client starts, then the builder", async () => {
    await nats.stop();
    // The window from the environment, as a systemd unit sets it; long enough for NATS and a builder to start on a loaded machine.
    const client = spawnCli(["build", "tiny", "b"], { ...env(), HOMELAB_DEPLOY_WAIT_FOR_BUILDER: "2m" });
    let stdout = "";
    client.stdout?.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    await until(() => stdout, /^waiting for a builder: cannot reach NATS at /m, "the client to say it cannot reach NATS yet");
    await nats.start();
    await startTinyBuilder();
    const result = await client;
    expect(result.exitCode).toBe(0);
    expect(String(result.stdout)).toMatch(/^completed: success, 1 of 1 host built/m);
  }, 120_000);

  it("gives up once --wait-for-builder has passed, with exit 2", async () => {
    const result = await spawnCli(["build", "tiny", "a", "--wait-for-builder", "2s"], env());
    expect(result.exitCode).toBe(2);
    expect(String(result.stdout)).toMatch(/^waiting for a builder: no builder is listening on build\.tiny\.a/m);
    expect(String(result.stderr)).toMatch(/^homelab-deploy: no builder is listening on build\.tiny\.a \(NATS reported no responders\)/m);
  }, 60_000);
});

describe("a refusal by NATS ends the wait at once", () => {
  // A window far longer than the test's own timeout: only an immediate refusal lets it pass.
  const LONG = ["--wait-for-builder", "1h"];

  it("exits 2 when NATS refuses the request on permissions, without waiting", async () => {
    const result = await spawnCli(["build", "tiny", "a", ...LONG], env("outsider"), 60_000);
    expect(result.exitCode).toBe(2);
    expect(String(result.stdout)).not.toContain("waiting for a builder");
    expect(String(result.stderr)).toMatch(/^homelab-deploy: NATS refused the request on build\.tiny\.a \(Permissions Violation for (Publish to "build\.tiny\.a"|Subscription to "build\.responses\.)/m);
  }, 60_000);

  it("exits 2 when the refusal of its reply subscription arrives before NATS has answered its flush", async () => {
    // nats-server sends the -ERR for the refused SUB and the PONG for the
    // client's flush back to back, usually in one read; on a loaded machine
    // they can arrive apart. A loopback proxy that holds back what follows an
    // -ERR makes that order certain (this failed with exit 1: the refusal
    // rejected a promise nobody awaited yet).
    const proxy = await splitAfterErr(new URL(nats.url).port);
    cleanups.push(() => new Promise<void>((resolve) => proxy.server.close(() => resolve())));
    const result = await spawnCli(["build", "tiny", "a", ...LONG], { ...env("outsider"), HOMELAB_DEPLOY_NATS_URL: proxy.url }, 60_000);
    expect(proxy.split()).toBeGreaterThan(0);
    expect(result.exitCode).toBe(2);
    expect(String(result.stderr)).toMatch(/^homelab-deploy: NATS refused the request on build\.tiny\.a \(Permissions Violation for Subscription to "build\.responses\./m);
  }, 60_000);

  it("exits 2 when NATS refuses the key, without waiting", async () => {
    const stranger = join(nats.dir, "stranger.nk");
    await writeFile(stranger, `${new TextDecoder().decode(createUser().getSeed())}\n`, { mode: 0o600 });
    const result = await spawnCli(["build", "tiny", "a", ...LONG], { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: stranger }, 60_000);
    expect(result.exitCode).toBe(2);
    expect(String(result.stdout)).not.toContain("waiting for a builder");
    expect(String(result.stderr)).toMatch(/^homelab-deploy: NATS at \S+ refused NKey user U[A-Z0-9]+/m);
  }, 60_000);
});

describe("the MCP build tool", () => {
  it.each([
    ["a builder started later", false],
    ["NATS and then a builder started later", true],
  ])("waits for %s, with a progress notification saying so, and builds", async (_what, natsDown) => {
    if (natsDown) await nats.stop();
    const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, "mcp", "--enable-builds"], env: { ...env(), HOMELAB_DEPLOY_LOG_LEVEL: "info" }, stderr: "pipe" });
    const client = new Client({ name: "homelab-deploy-test", version: "1.0.0" });
    await client.connect(transport);
    cleanups.push(() => client.close());
    const notes: Progress[] = [];
    let sawWaiting: () => void = () => undefined;
    const waiting = new Promise<void>((resolve) => (sawWaiting = resolve));
    const call = client.callTool({ name: "build", arguments: { repo: "tiny", target: "a" } }, undefined, {
      timeout: 120_000,
      onprogress: (progress) => {
        notes.push(progress);
        if (progress.message === "waiting for a builder…") sawWaiting();
      },
    }) as Promise<CallToolResult>;
    await waiting;
    if (natsDown) await nats.start();
    await startTinyBuilder();
    const result = await call;
    expect(result.isError).toBeFalsy();
    expect(result.structuredContent).toMatchObject({ outcome: "success", hosts: [{ host: "a", status: "success" }] });
    const messages = notes.map((n) => n.message ?? "");
    expect(messages.indexOf("waiting for a builder…")).toBeLessThan(messages.findIndex((m) => m.startsWith("accepted: job ")));
  }, 120_000);
});

/** A TCP proxy to nats-server that delays whatever the server sends after an -ERR line by 200 ms. */
async function splitAfterErr(natsPort: string): Promise<{ server: Server; url: string; split: () => number }> {
  let splits = 0;
  const server = createServer((client) => {
    const upstream = createConnection(Number(natsPort), "127.0.0.1");
    client.pipe(upstream);
    let queue: Promise<void> = Promise.resolve();
    upstream.on("data", (chunk: Buffer) => {
      queue = queue.then(async () => {
        const text = chunk.toString("latin1");
        const err = text.indexOf("-ERR");
        const end = err < 0 ? -1 : text.indexOf("\r\n", err);
        if (end < 0) return void client.write(chunk);
        // What follows the -ERR line waits, whether it came in the same
        // chunk or comes in a later one (queued behind this sleep): on a
        // loaded machine the server's two writes can arrive as two reads.
        client.write(chunk.subarray(0, end + 2));
        splits += 1;
        await sleep(200);
        if (end + 2 < chunk.length) client.write(chunk.subarray(end + 2));
      });
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return { server, url: `nats://127.0.0.1:${port}`, split: () => splits };
}
