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

/** `fixture`: as createFixtureFlake takes it. */
/** `extra`: more top-level config (e.g. a stateDir seeded beforehand). */
export async function startBench(
  fixture: string | readonly string[],
  build: Record<string, unknown> = {},
  nodeOptions = PACKAGED_NODE_OPTIONS,
  extra: Record<string, unknown> = {},
): Promise<Bench> {
  const nats = await startNatsServer();
  const flake = await createFixtureFlake(fixture);
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { bench: flake.url },
    build: { timeout: "30m", ...build },
    extra: { log: { level: "info" }, ...extra },
    env: { NODE_OPTIONS: nodeOptions },
  });
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
 * Request → `accepted` latency: returns `measure(label, n)`, which sends n
 * requests on `subject` one at a time (latency, not throughput) and
 * resolves with each one's milliseconds to its first answer. Send them for
 * a host queued behind a running build, so each is validated, joins the
 * queued job and is answered `accepted`.
 */
export async function acceptLatency(nc: NatsConnection, subject: string): Promise<(label: string, n: number) => Promise<number[]>> {
  const waiting = new Map<string, (at: number) => void>();
  nc.subscribe("build.responses.lat.>", {
    callback: (_err, msg) => {
      const resolve = waiting.get(msg.subject);
      if (!resolve) return;
      waiting.delete(msg.subject);
      resolve(performance.now());
    },
  });
  await nc.flush();
  return async (label, n) => {
    const samples: number[] = [];
    for (let i = 0; i < n; i++) {
      const reply = `build.responses.lat.${label}.${i}`;
      const answered = new Promise<number>((resolve) => waiting.set(reply, resolve));
      const sent = performance.now();
      nc.publish(subject, new Uint8Array(), { reply });
      samples.push((await answered) - sent);
    }
    return samples;
  };
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
