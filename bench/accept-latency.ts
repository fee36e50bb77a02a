/**
 * Request → `accepted` latency while a build runs and nix prints a steady
 * log flood (200,000 lines through the internal-json parser), compared with
 * a build that prints nothing, and with constant job churn.
 *   npm run build && npx tsx bench/accept-latency.ts [requests]
 * Requests go one at a time (latency, not throughput) for a host that is
 * queued behind the flood, so each is validated, joins the queued job and
 * is answered `accepted`. Goal: p99 < 10 ms on loopback.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Inbox } from "../test/support/nats-client.js";
import { acceptLatency, latencySummary as summary, machine, startBench } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const count = Number(process.argv[2] ?? 1000);
const bench = await startBench(join(here, "fixtures", "flood-flake"));
const { nc, builder } = bench;

const measure = await acceptLatency(nc, "build.bench.quiet");

// Quiet: a build runs but prints nothing; requests join the job queued behind it.
await bench.flake.bump();
const sleepy = await Inbox.open(nc);
sleepy.send("build.bench.sleepy");
await sleepy.waitFor((m) => m.type === "host_started", 60_000);
await measure("warmup", 50);
const idle = await measure("quiet", Math.min(count, 1000));
await sleepy.final(10 * 60_000);
await new Promise((r) => setTimeout(r, 1000));

// Churn: nothing runs long; each request after a job started queues a new
// quick build, so nix processes are spawned all the time.
const churn = await measure("churn", Math.min(count, 300));
await new Promise((r) => setTimeout(r, 2000));

// Flood: start the 200k-line build, wait until nix is printing, measure.
const flood = await Inbox.open(nc);
flood.send("build.bench.flood");
await flood.waitFor((m) => m.type === "host_started", 60_000);
await new Promise((r) => setTimeout(r, 500));
const lines = () => builder.logs.length;
const duringStart = Date.now();
const during = await measure("flood", count);
const stillRunning = !flood.messages.some((m) => m.type === "host_finished");
const final = await flood.final(10 * 60_000);
await bench.stop();

console.log(
  JSON.stringify(
    {
      whileAQuietBuildRunsMs: summary(idle),
      underJobChurnMs: summary(churn),
      duringFloodMs: summary(during),
      floodStillRunningAtTheEnd: stillRunning,
      measuredForMs: Date.now() - duringStart,
      floodResult: final.type === "completed" ? final.status : final.type,
      builderLogLines: lines(),
      machine: machine(),
    },
    null,
    2,
  ),
);
