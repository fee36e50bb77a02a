/**
 * Shared by the benchmarks: a real nats-server, the real daemon, a raw NATS
 * requester, RSS sampling and percentiles. Benchmarks print JSON; their
 * results, method and machine go to docs/performance.md.
 */
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { cpus, totalmem } from "node:os";
import { execFileSync } from "node:child_process";
import type { NatsConnection } from "nats";
import { ROOT } from "../test/support/cli.js";
import { startBuilder, type BuilderProcess } from "../test/support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../test/support/flake.js";
import { Inbox, connectAs, type Message } from "../test/support/nats-client.js";
import { startNatsServer, type NatsServer } from "../test/support/nats-server.js";

process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");

export interface Bench {
  nats: NatsServer;
  flake: FixtureFlake;
  builder: BuilderProcess;
  nc: NatsConnection;
  stop(): Promise<void>;
}

/** The node options the NixOS package's wrapper runs the daemon with (package.json). */
export const PACKAGED_NODE_OPTIONS = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { "homelab-deploy": { nodeOptions: string } })[
  "homelab-deploy"
].nodeOptions;

export interface BenchOptions {
  /** Another build's dist/cli.js, to compare with (default: this checkout's). */
  cli?: string | undefined;
  /** nats-server's monitoring endpoints (`bench.nats.monitorUrl`). */
  monitor?: boolean;
  /** More top-level builder config (e.g. a stateDir seeded beforehand). */
  extra?: Record<string, unknown>;
}

/** `fixture`: as createFixtureFlake takes it. */
export async function startBench(
  fixture: string | readonly string[],
  build: Record<string, unknown> = {},
  nodeOptions = PACKAGED_NODE_OPTIONS,
  { cli, monitor = false, extra = {} }: BenchOptions = {},
): Promise<Bench> {
  const nats = await startNatsServer({ monitor });
  const flake = await createFixtureFlake(fixture);
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { bench: flake.url },
    build: { timeout: "30m", ...build },
    extra: { log: { level: "info" }, ...extra },
    env: { NODE_OPTIONS: nodeOptions },
  }, cli ? { cli } : {});
  const nc = await connectAs(nats.url, nats.identities.testDeployer);
  const bench: Bench = {
    nats,
    flake,
    builder,
    nc,
    async stop() {
      await nc.close();
      // bench.builder: a benchmark may have restarted the daemon since.
      await bench.builder.stop();
      await nats.stop();
    },
  };
  return bench;
}

/** One build request over NATS, timed from publish to its final message. */
export async function timedBuild(nc: NatsConnection, target: string): Promise<{ ms: number; final: Message; messages: Message[] }> {
  const inbox = await Inbox.open(nc);
  const started = performance.now();
  inbox.send(`build.bench.${target}`);
  const final = await inbox.final(30 * 60_000);
  const ms = performance.now() - started;
  inbox.close();
  return { ms, final, messages: inbox.messages };
}

/**
 * One build under test for request → `accepted` latency: its daemon, and
 * one request at a time (latency, not throughput) for the bench repo's
 * `quiet` host, which should be queued behind a running build, so each
 * request is validated, joins the queued job, is saved and answered.
 */
export class AcceptSubject {
  private readonly waiting = new Map<string, (at: number) => void>();
  private sent = 0;

  constructor(
    readonly label: string,
    readonly bench: Bench,
  ) {
    bench.nc.subscribe("build.responses.lat.>", {
      callback: (_err, msg) => {
        const resolve = this.waiting.get(msg.subject);
        if (!resolve) return;
        this.waiting.delete(msg.subject);
        resolve(performance.now());
      },
    });
  }

  async request(): Promise<number> {
    const reply = `build.responses.lat.${this.sent++}`;
    const answered = new Promise<number>((resolve) => this.waiting.set(reply, resolve));
    const sent = performance.now();
    this.bench.nc.publish("build.bench.quiet", new Uint8Array(), { reply });
    return (await answered) - sent;
  }
}

/** `n` requests to each subject, alternating, the first one switching every round. */
export async function measureAccept(subjects: AcceptSubject[], n: number): Promise<Map<AcceptSubject, number[]>> {
  const samples = new Map(subjects.map((s) => [s, [] as number[]]));
  for (let i = 0; i < n; i++) {
    const order = i % 2 === 0 ? subjects : [...subjects].reverse();
    for (const subject of order) samples.get(subject)!.push(await subject.request());
  }
  return samples;
}

export function latencySummary(samples: number[]) {
  return { n: samples.length, p50: round(percentile(samples, 50), 2), p90: round(percentile(samples, 90), 2), p99: round(percentile(samples, 99), 2), max: round(Math.max(...samples), 2) };
}

export async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)] as number;
}

export const round = (n: number, digits = 1) => Number(n.toFixed(digits));

export function machine(): Record<string, string | number> {
  return {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memoryGiB: round(totalmem() / 1024 ** 3, 0),
    node: process.version,
    nix: execFileSync("nix", ["--version"]).toString().trim(),
  };
}
