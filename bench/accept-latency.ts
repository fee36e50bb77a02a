/**
 * Request → `accepted` latency while a build runs and nix prints a steady
 * log flood (200,000 lines through the internal-json parser), compared with
 * a build that prints nothing, and with constant job churn.
 *   npm run build && npx tsx bench/accept-latency.ts [requests] [label=path/to/dist/cli.js ...]
 * Without labels it measures this checkout's dist/cli.js. With them (e.g.
 * `old=/tmp/old/dist/cli.js new=dist/cli.js`) the builds run side by side,
 * each with its own nats-server and state, doing the same thing at the same
 * time (each its own flood), and the requests alternate between them, so
 * that every build sees the same load of the machine: compare them as
 * ratios, in one run.
 * Requests go one at a time (latency, not throughput) for a host that is
 * queued behind the build, so each is validated, joins the queued job, is
 * saved durably to jobs.json and answered `accepted`. Goal: p99 < 10 ms on
 * loopback during the flood.
 */
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

const subjects: Subject[] = [];
for (const build of builds) {
  const bench = await startBench(join(here, "fixtures", "flood-flake"), {}, undefined, { cli: build.cli });
  subjects.push(new Subject(build.label, bench));
}
await Promise.all(subjects.map((s) => s.bench.nc.flush()));

// Quiet: a build runs but prints nothing; requests join the job queued behind it.
const sleepy = await Promise.all(
  subjects.map(async (s) => {
    await s.bench.flake.bump();
    const inbox = await Inbox.open(s.bench.nc);
    inbox.send("build.bench.sleepy");
    await inbox.waitFor((m) => m.type === "host_started", 60_000);
    return inbox;
  }),
);
await measure(subjects, 50);
const idle = await measure(subjects, Math.min(count, 1000));
await Promise.all(sleepy.map((inbox) => inbox.final(10 * 60_000)));
await new Promise((r) => setTimeout(r, 1000));

// Churn: nothing runs long; each request after a job started queues a new
// quick build, so nix processes are spawned all the time.
const churn = await measure(subjects, Math.min(count, 300));
await new Promise((r) => setTimeout(r, 2000));

// Flood: start the 200k-line build everywhere, wait until nix is printing, measure.
const floods = await Promise.all(
  subjects.map(async (s) => {
    const inbox = await Inbox.open(s.bench.nc);
    inbox.send("build.bench.flood");
    await inbox.waitFor((m) => m.type === "host_started", 60_000);
    return inbox;
  }),
);
await new Promise((r) => setTimeout(r, 500));
const duringStart = Date.now();
const during = await measure(subjects, count);
const stillRunning = floods.map((inbox) => !inbox.messages.some((m) => m.type === "host_finished"));
const finals = await Promise.all(floods.map((inbox) => inbox.final(10 * 60_000)));
await Promise.all(subjects.map((s) => s.bench.stop()));

console.log(
  JSON.stringify(
    {
      results: subjects.map((s, i) => ({
        build: s.label,
        whileAQuietBuildRunsMs: summary(idle.get(s)!),
        underJobChurnMs: summary(churn.get(s)!),
        duringFloodMs: summary(during.get(s)!),
        floodStillRunningAtTheEnd: stillRunning[i],
        floodResult: finals[i]!.type === "completed" ? finals[i]!.status : finals[i]!.type,
        builderLogLines: s.bench.builder.logs.length,
      })),
      measuredForMs: Date.now() - duringStart,
      machine: machine(),
    },
    null,
    2,
  ),
);
