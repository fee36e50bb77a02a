/**
 * Two builder daemons in one queue group on one real nats-server: build
 * requests are spread over them, control requests reach both. Each builder
 * serves the repo `fixture` from its own copy of the fixture flake, so the
 * start/end markers of its builds land in its own events log: that is how
 * the test tells which builder built what, from the builds themselves.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import type { NatsConnection } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, jsonLines, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type BuildInterval, type FixtureFlake } from "../support/flake.js";
import { metricsBaseUrl, samplesOf, scrape } from "../support/metrics.js";
import { Inbox, connectAs, type Message } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const GROUP = "nix-builders";
const QUICK_HOSTS = ["alpha", "beta", "gamma", "delta"];

let nats: NatsServer;
let deployer: NatsConnection;
const flakes: Record<"a" | "b", FixtureFlake> = {} as never;
const builders: Record<"a" | "b", BuilderProcess> = {} as never;

function clientEnv(): Record<string, string> {
  return { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
}

/** Which builder logged that it queued this job. */
function holderOf(jobId: string): "a" | "b" | undefined {
  for (const name of ["a", "b"] as const) {
    if (builders[name].logs.some((l) => l.msg === "job queued" && l.jobId === jobId)) return name;
  }
  return undefined;
}

async function requestBuild(host: string): Promise<{ inbox: Inbox; accepted: Message }> {
  const inbox = await Inbox.open(deployer);
  inbox.send(`build.fixture.${host}`);
  const accepted = await inbox.waitFor((m) => m.type === "accepted" || m.type === "rejected");
  expect(accepted.type).toBe("accepted");
  return { inbox, accepted };
}

function overlaps(intervals: BuildInterval[]): Array<[BuildInterval, BuildInterval]> {
  const sorted = [...intervals].sort((x, y) => x.start - y.start);
  const found: Array<[BuildInterval, BuildInterval]> = [];
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1] as BuildInterval;
    const current = sorted[i] as BuildInterval;
    if (current.start < previous.end) found.push([previous, current]);
  }
  return found;
}

beforeAll(async () => {
  nats = await startNatsServer();
  [flakes.a, flakes.b] = await Promise.all([createFixtureFlake(), createFixtureFlake()]);
  // Each daemon has its own state dir and metrics port (startBuilder), and its own name.
  [builders.a, builders.b] = await Promise.all([startBuilderNamed("a"), startBuilderNamed("b")]);
  deployer = await connectAs(nats.url, nats.identities.testDeployer);
}, 120_000);

async function startBuilderNamed(name: "a" | "b"): Promise<BuilderProcess> {
  return startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flakes[name].url },
    build: { timeout: "5m", heartbeatInterval: "1s" },
    extra: { nats: { url: nats.url, nkeySeedFile: nats.identities.builder.seedFile, queueGroup: GROUP, name: `builder-${name}` } },
  });
}

afterAll(async () => {
  await deployer?.close();
  await Promise.all(Object.values(builders).map((b) => b.stop()));
  await nats?.stop();
});

describe("two builders in one queue group", () => {
  it("spread build requests between them, each building one job at a time", async () => {
    const followed: Inbox[] = [];
    const taken = { a: 0, b: 0 };
    // The server picks a group member at random for each request: keep
    // asking until both have taken some (bounded; 2^-39 to fail by chance).
    for (let round = 0; round < 10 && (taken.a === 0 || taken.b === 0); round++) {
      for (const host of QUICK_HOSTS) {
        const { inbox, accepted } = await requestBuild(host);
        followed.push(inbox);
        const holder = holderOf(accepted.jobId as string) ?? (await waitHolder(accepted.jobId as string));
        if (holder) taken[holder]++;
      }
    }
    expect(taken.a).toBeGreaterThan(0);
    expect(taken.b).toBeGreaterThan(0);
    for (const inbox of followed) {
      const final = await inbox.final(240_000);
      expect(final).toMatchObject({ type: "completed", status: "success" });
      inbox.close();
    }
    for (const name of ["a", "b"] as const) {
      const intervals = await flakes[name].intervals();
      // Each builder really built on its own copy of the flake...
      expect(intervals.length).toBeGreaterThan(0);
      expect(intervals.every((i) => Number.isFinite(i.end))).toBe(true);
      // ...and never two builds at once.
      expect(overlaps(intervals)).toEqual([]);
      // Its metrics carry its name, so one Prometheus tells the two apart.
      const metrics = await scrape(await metricsBaseUrl(builders[name]));
      const hostBuilds = samplesOf(metrics, "homelab_deploy_build_host_total", { repo: "fixture", status: "success" });
      expect(hostBuilds.length).toBeGreaterThan(0);
      expect(new Set(hostBuilds.map((s) => s.labels.builder))).toEqual(new Set([`builder-${name}`]));
      expect(samplesOf(metrics, "homelab_deploy_info")[0]?.labels.builder).toBe(`builder-${name}`);
      expect(samplesOf(metrics, "process_resident_memory_bytes")[0]?.labels.builder).toBe(`builder-${name}`);
    }
  }, 300_000);

  it("both answer status, by name, and cancel reaches the builder that holds the job", async () => {
    await Promise.all([flakes.a.clearPid(), flakes.b.clearPid()]);
    const { inbox, accepted } = await requestBuild("slow");
    const jobId = accepted.jobId as string;
    const holder = holderOf(jobId) ?? (await waitHolder(jobId));
    expect(holder).toBeDefined();
    await flakes[holder as "a" | "b"].slowPid();

    const status = await runCli(["status"], clientEnv());
    expect(status.exitCode).toBe(0);
    expect(status.stdout).toMatch(/^builder builder-a \(homelab-deploy [^)]+\)$/m);
    expect(status.stdout).toMatch(/^builder builder-b \(homelab-deploy [^)]+\)$/m);
    // The holder's block says what it runs; the other one runs nothing.
    const blocks = status.stdout.trim().split("\n\n");
    expect(blocks).toHaveLength(2);
    const holderBlock = blocks.find((b) => b.startsWith(`builder builder-${holder}`)) as string;
    const otherBlock = blocks.find((b) => !b.startsWith(`builder builder-${holder}`)) as string;
    expect(holderBlock).toContain(`running: job ${jobId} fixture slow`);
    expect(otherBlock).toContain("running: nothing");
    const statusJson = jsonLines((await runCli(["status", "--json"], clientEnv())).stdout);
    expect(statusJson.map((m) => m.builder).sort()).toEqual(["builder-a", "builder-b"]);

    const cancel = await runCli(["cancel", jobId], clientEnv());
    expect(cancel.stderr).toBe("");
    expect(cancel.exitCode).toBe(0);
    expect(cancel.stdout.trim()).toBe(`job ${jobId}: stopping: its nix process tree is being killed`);
    expect(await inbox.final(60_000)).toMatchObject({ type: "completed", status: "cancelled" });
    inbox.close();
    expect(builders[holder as "a" | "b"].logs.some((l) => l.msg?.startsWith("running job cancelled on request") && l.jobId === jobId)).toBe(true);

    // A job no builder has is unknown to all of them: exit 2, said once.
    const unknown = await runCli(["cancel", "j0000000000"], clientEnv());
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr.trim()).toBe(
      "rejected: no queued or running job j0000000000 (it may have finished already); none of the 2 builders that answered has it",
    );
  }, 180_000);

  it("list every builder's repos by name", async () => {
    const list = await runCli(["build", "--list"], clientEnv());
    expect(list.exitCode).toBe(0);
    expect(list.stdout).toMatch(/^builder builder-a \(homelab-deploy [^)]+\):\n {2}fixture \(git\+file:/m);
    expect(list.stdout).toMatch(/^builder builder-b \(homelab-deploy [^)]+\):\n {2}fixture \(git\+file:/m);
    expect(list.stdout).toContain("    alpha");
    const unknown = await runCli(["build", "--list", "nope"], clientEnv());
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain("unknown repo nope; these builders build fixture");
  }, 60_000);

  it("both answer the MCP read tools, each by name", async () => {
    const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, "mcp"], env: clientEnv(), stderr: "pipe" });
    const client = new Client({ name: "homelab-deploy-test", version: "1.0.0" });
    await client.connect(transport);
    try {
      const status = (await client.callTool({ name: "build_status", arguments: {} })) as CallToolResult;
      expect(status.isError).toBeFalsy();
      const content = status.structuredContent as { builder: string; builders: Array<{ builder: string }> };
      expect(content.builder).toBe("builder-a");
      expect(content.builders.map((b) => b.builder)).toEqual(["builder-a", "builder-b"]);
      const list = (await client.callTool({ name: "list_build_targets", arguments: { repo: "fixture" } })) as CallToolResult;
      expect(list.isError).toBeFalsy();
      const lists = (list.structuredContent as { builders: Array<{ builder: string; repos: Array<{ name: string; hosts: string[] }> }> }).builders;
      expect(lists.map((b) => b.builder)).toEqual(["builder-a", "builder-b"]);
      for (const each of lists) expect(each.repos[0]?.hosts).toContain("alpha");
    } finally {
      await client.close();
    }
  }, 60_000);

  it("keep serving with one builder after the other is stopped with SIGTERM", async () => {
    const stopped = await builders.a.stop("SIGTERM");
    expect(stopped.code).toBe(0);
    await flakes.b.bump();
    const before = (await flakes.b.intervals()).length;
    for (const host of ["alpha", "beta"]) {
      const { inbox } = await requestBuild(host);
      const final = await inbox.final(120_000);
      expect(final, JSON.stringify(final)).toMatchObject({ type: "completed", status: "success" });
      inbox.close();
    }
    expect((await flakes.b.intervals()).length).toBe(before + 2);
    const status = await runCli(["status"], clientEnv());
    expect(status.exitCode).toBe(0);
    expect(status.stdout).toMatch(/^builder builder-b /);
    expect(status.stdout).not.toContain("builder-a");
  }, 300_000);
});

/** The "job queued" log line may come a moment after the accepted message. */
async function waitHolder(jobId: string): Promise<"a" | "b" | undefined> {
  for (let waited = 0; waited < 10_000; waited += 50) {
    const holder = holderOf(jobId);
    if (holder) return holder;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return undefined;
}
