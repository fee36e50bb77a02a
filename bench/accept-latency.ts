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
import { machine, percentile, round, startBench, type Bench } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const count = Number(process.argv[2] ?? 1000);
const builds = process.argv.slice(3).map((arg) => {
  const [label, cli] = arg.split("=");
  return { label: label as string, cli: resolve(cli as string) };
});
if (builds.length === 0) builds.push({ label: "this", cli: undefined as unknown as string });

function summary(samples: number[]) {
  return { n: samples.length, p50: round(percentile(samples, 50), 2), p90: round(percentile(samples, 90), 2), p99: round(percentile(samples, 99), 2), max: round(Math.max(...samples), 2) };
}

/** One build under test: its daemon, and one request → accepted at a time. */
class Subject {
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
async function measure(subjects: Subject[], n: number): Promise<Map<Subject, number[]>> {
  const samples = new Map(subjects.map((s) => [s, [] as number[]]));
  for (let i = 0; i < n; i++) {
    const order = i % 2 === 0 ? subjects : [...subjects].reverse();
    for (const subject of order) samples.get(subject)!.push(await subject.request());
  }
  return samples;
}

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
