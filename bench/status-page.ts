/**
 * The status page under load, with 100 hosts and their last results while
 * a build runs and prints (progress flows to the event streams):
 *   npm run build && npx tsx bench/status-page.ts [requests]
 * - `GET /` and `GET /api/status` one at a time: latency and size.
 *   Goals: p99 < 50 ms and < 20 ms.
 * - Request → `accepted` latency of build requests (bench/support.ts's
 *   acceptLatency, as bench/accept-latency.ts measures it) with no event
 *   stream open and with 20 open, in alternating blocks of one run.
 *   Goal: the 20 streams do not move the p99.
 * The history is seeded into history.json before the builder starts
 * (building 100 hosts first would only make the run longer).
 */
import { spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Inbox } from "../test/support/nats-client.js";
import { metricsBaseUrl } from "../test/support/metrics.js";
import type { HistoryEntry } from "../src/protocol.js";
import { BuildHistory } from "../src/builder/keep/history.js";
import { pageStatus } from "../src/observability/status-page/model.js";
import { renderPage } from "../src/observability/status-page/render.js";
import { createLogger } from "../src/logger.js";
import { AcceptSubject, latencySummary, machine, measureAccept, startBench } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const count = Number(process.argv[2] ?? 500);
const HOSTS = Array.from({ length: 100 }, (_, n) => `host${String(n).padStart(3, "0")}`);

/** Five results per host, the newest a failure with a 50-line log tail for every tenth host. */
function seededHistory(): Record<string, HistoryEntry[]> {
  const now = Date.now();
  const hosts: Record<string, HistoryEntry[]> = {};
  for (const [i, host] of HOSTS.entries()) {
    const entries: HistoryEntry[] = [];
    for (let n = 0; n < 5; n++) {
      const failed = n === 0 && i % 10 === 0;
      const base = { host, jobId: `j${String(n).padStart(10, "0")}`, revision: `${n}`.repeat(40), ref: null, durationMs: 20_000 + i * 100, finishedAt: new Date(now - (n + 1) * 3_600_000).toISOString() };
      entries.push(
        failed
          ? { ...base, status: "failure", error: `builder for '/nix/store/${"z".repeat(32)}-${host}-unit.drv' failed with exit code 1`, logTail: Array.from({ length: 50 }, (_, l) => `${host}-unit> build output line ${l} of a service that did not start`) }
          : {
              ...base,
              status: "success",
              storePath: `/nix/store/${"x".repeat(32)}-nixos-system-${host}-25.05`,
              changes: { against: `/nix/store/${"y".repeat(32)}-nixos-system-${host}-25.05`, againstRevision: "f".repeat(40), packages: [{ name: "linux", before: ["6.6.1"], after: ["6.6.2"], sizeDeltaBytes: 61_000 }], sizeDeltaBytes: 1_200_000 },
              gcRoot: true,
            },
      );
    }
    hosts[host] = entries;
  }
  return hosts;
}

/** CPU time of one render, in this process (no HTTP, no other load on the event loop): what each request costs the builder. */
function renderCost(n: number) {
  const history = new BuildHistory({ size: 50, logger: createLogger({ level: "silent" }) });
  const seeded = seededHistory();
  for (const host of HOSTS) for (const e of [...(seeded[host] as HistoryEntry[])].reverse()) history.record("bench", e);
  const source = {
    status: () => ({ type: "status" as const, version: "0", builder: "bench", running: null, queued: [] }),
    repos: () => [{ name: "bench", url: "git+file:///x", hosts: HOSTS, revision: "a".repeat(40), fetchedAt: new Date().toISOString() }],
    historyHosts: (repo: string) => history.hosts(repo),
    history: (repo: string, host: string) => history.entries(repo, host),
    expectedMs: (repo: string, host: string) => history.expectedMs(repo, host),
    rooted: () => true,
  };
  const html: number[] = [];
  const json: number[] = [];
  for (let i = 0; i < n; i++) {
    let t = performance.now();
    renderPage(pageStatus(source), Date.now());
    html.push(performance.now() - t);
    t = performance.now();
    JSON.stringify(pageStatus(source));
    json.push(performance.now() - t);
  }
  return { page: latencySummary(html), apiStatus: latencySummary(json) };
}
const inProcess = renderCost(500);

const stateDir = await mkdtemp(join(tmpdir(), "hd-bench-state-"));
await writeFile(join(stateDir, "history.json"), `${JSON.stringify({ version: 1, repos: { bench: seededHistory() } })}\n`);
const bench = await startBench(join(here, "fixtures", "hundred-flake"), {}, undefined, { extra: { stateDir } });
const { nc, builder } = bench;
const base = await metricsBaseUrl(builder);

async function timedGet(path: string): Promise<{ ms: number; bytes: number }> {
  const started = performance.now();
  const response = await fetch(`${base}${path}`);
  const body = await response.arrayBuffer();
  if (response.status !== 200) throw new Error(`${path}: ${response.status}`);
  return { ms: performance.now() - started, bytes: body.byteLength };
}

async function requests(path: string, n: number) {
  const samples: number[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const r = await timedGet(path);
    samples.push(r.ms);
    bytes = r.bytes;
  }
  return { ...latencySummary(samples), bytes };
}

/**
 * Opens n event streams in a process of their own, which reads everything
 * sent: reading 20 streams here would slow this process's own NATS
 * requester and be counted as the builder's accept latency.
 * close() ends them and says how much arrived.
 */
const STREAM_READER = `
const base = process.env.STREAM_BASE;
let received = 0;
const responses = await Promise.all(Array.from({ length: Number(process.env.STREAMS) }, () => fetch(base + "/events")));
for (const response of responses) {
  if (response.status !== 200) { console.error("/events: " + response.status); process.exit(1); }
  (async () => { try { for await (const chunk of response.body) received += chunk.byteLength; } catch {} })();
}
process.on("SIGTERM", () => { process.stdout.write(received + "\\n"); process.exit(0); });
process.stdout.write("open\\n");
`;

async function openStreams(n: number) {
  const child = spawn(process.execPath, ["--input-type=module", "-e", STREAM_READER], {
    env: { ...process.env, STREAM_BASE: base, STREAMS: String(n) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (text: string) => {
      out += text;
      if (out.includes("open\n")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`the stream reader exited with ${code}`)));
  });
  return {
    async close() {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
      return Number(out.split("\n").filter(Boolean).at(-1));
    },
  };
}

// Catalog first (the page lists the hosts once the flake is read), then the busy build.
await fetch(`${base}/`);
const busy = await Inbox.open(nc);
busy.send("build.bench.busy");
await busy.waitFor((m) => m.type === "progress", 120_000);
const listed = (await (await fetch(`${base}/api/status`)).json()) as { repos: Array<{ hosts: unknown[] }> };

await requests("/", 20);
const page = await requests("/", count);
const api = await requests("/api/status", count);
const hostPage = await requests("/host/bench/host000", Math.min(count, 200));

const subject = new AcceptSubject("this", bench);
await nc.flush();
const measure = async (n: number) => (await measureAccept([subject], n)).get(subject) as number[];
await measure(50);
const without: number[] = [];
const withStreams: number[] = [];
let streamBytes = 0;
const blocks = 4;
const perBlock = Math.max(50, Math.round(count / 2));
for (let b = 0; b < blocks; b++) {
  without.push(...(await measure(perBlock)));
  const streams = await openStreams(20);
  withStreams.push(...(await measure(perBlock)));
  streamBytes += await streams.close();
}
const stillRunning = !busy.messages.some((m) => m.type === "host_finished");
await bench.stop();

console.log(
  JSON.stringify(
    {
      hostsOnThePage: listed.repos[0]?.hosts.length,
      whileABuildRuns: stillRunning,
      getPageMs: page,
      getApiStatusMs: api,
      getHostPageMs: hostPage,
      renderInProcessMs: inProcess,
      acceptLatencyMs: { noEventStreams: latencySummary(without), twentyEventStreams: latencySummary(withStreams) },
      bytesSentToTheStreams: streamBytes,
      machine: machine(),
    },
    null,
    2,
  ),
);
