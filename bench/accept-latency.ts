/**
 * Request → `accepted` latency while a build runs and nix prints a steady
 * log flood (200,000 lines through the internal-json parser), compared with
 * a build that prints nothing, and with constant job churn.
 *   npm run build && npx tsx bench/accept-latency.ts [requests] [label=path/to/dist/cli.js ...]
 * Without labels it measures this checkout's dist/cli.js, once. With them
 * (e.g. `old=/tmp/old/dist/cli.js new=dist/cli.js`) every build runs its own
 * daemon, nats-server and state from the start, side by side, and the
 * measurements take turns in one run: round 1 measures old then new, round
 * 2 new then old (ROUNDS=n for more). Each build is measured under its own
 * flood only, as on a build host (one builder, one flood); two floods at
 * once on a 2-core machine would measure the machine. Compare them as
 * ratios within a run.
 * Requests go one at a time (latency, not throughput) for a host that is
 * queued behind the build, so each is validated, joins the queued job, is
 * saved durably to jobs.json and answered `accepted`. Goal: p99 < 10 ms on
 * loopback during the flood.
 */
import { loadavg } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Inbox } from "../test/support/nats-client.js";
import { AcceptSubject as Subject, latencySummary as summary, machine, measureAccept as measure, startBench } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const count = Number(process.argv[2] ?? 1000);
const builds = process.argv.slice(3).map((arg) => {
  const [label, cli] = arg.split("=");
  return { label: label as string, cli: resolve(cli as string) };
});
if (builds.length === 0) builds.push({ label: "this", cli: undefined as unknown as string });
const rounds = Number(process.env["ROUNDS"] ?? (builds.length > 1 ? 2 : 1));

const subjects: Subject[] = [];
for (const build of builds) {
  const bench = await startBench(join(here, "fixtures", "flood-flake"), {}, undefined, { cli: build.cli });
  subjects.push(new Subject(build.label, bench));
}
await Promise.all(subjects.map((s) => s.bench.nc.flush()));

interface Round {
  idle: number[];
  churn: number[];
  during: number[];
  floodStillRunningAtTheEnd: boolean;
  floodResult: string;
  measuredForMs: number;
  loadAverage: number;
}
const measured = new Map<Subject, Round[]>(subjects.map((s) => [s, []]));

async function measureOne(s: Subject): Promise<Round> {
  // Quiet: a build runs but prints nothing; requests join the job queued behind it.
  await s.bench.flake.bump();
  const sleepy = await Inbox.open(s.bench.nc);
  sleepy.send("build.bench.sleepy");
  await sleepy.waitFor((m) => m.type === "host_started", 60_000);
  await measure([s], 50);
  const idle = (await measure([s], Math.min(count, 1000))).get(s)!;
  await sleepy.final(10 * 60_000);
  await sleep(1000);

  // Churn: nothing runs long; each request after a job started queues a new
  // quick build, so nix processes are spawned all the time.
  const churn = (await measure([s], Math.min(count, 300))).get(s)!;
  await sleep(2000);

  // Flood: start the 200k-line build, wait until nix is printing, measure.
  const flood = await Inbox.open(s.bench.nc);
  flood.send("build.bench.flood");
  await flood.waitFor((m) => m.type === "host_started", 60_000);
  await sleep(500);
  const loadAverage = loadavg()[0] as number;
  const started = Date.now();
  const during = (await measure([s], count)).get(s)!;
  const measuredForMs = Date.now() - started;
  const floodStillRunningAtTheEnd = !flood.messages.some((m) => m.type === "host_finished");
  const final = await flood.final(10 * 60_000);
  sleepy.close();
  flood.close();
  await sleep(1000);
  return { idle, churn, during, floodStillRunningAtTheEnd, floodResult: final.type === "completed" ? String(final.status) : String(final.type), measuredForMs, loadAverage };
}

for (let round = 0; round < rounds; round++) {
  for (const s of round % 2 === 0 ? subjects : [...subjects].reverse()) measured.get(s)!.push(await measureOne(s));
}
await Promise.all(subjects.map((s) => s.bench.stop()));

const pooled = (rs: Round[], key: "idle" | "churn" | "during") => summary(rs.flatMap((r) => r[key]));
console.log(
  JSON.stringify(
    {
      results: subjects.map((s) => {
        const rs = measured.get(s)!;
        return {
          build: s.label,
          whileAQuietBuildRunsMs: pooled(rs, "idle"),
          underJobChurnMs: pooled(rs, "churn"),
          duringFloodMs: pooled(rs, "during"),
          duringFloodP99ByRound: rs.map((r) => summary(r.during).p99),
          floodStillRunningAtTheEnd: rs.map((r) => r.floodStillRunningAtTheEnd),
          floodResult: rs.map((r) => r.floodResult),
          measuredForMs: rs.map((r) => r.measuredForMs),
          loadAverage: rs.map((r) => Number(r.loadAverage.toFixed(2))),
          builderLogLines: s.bench.builder.logs.length,
        };
      }),
      rounds,
      machine: machine(),
    },
    null,
    2,
  ),
);
