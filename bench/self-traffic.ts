/**
 * What the builder receives from NATS during an `all` job, and the CPU it
 * spends: the builder subscribes to build.>, and its answers go out under
 * build.responses.>, so without `noEcho` every message it sends comes back
 * to it. Counted by nats-server itself (/connz: messages delivered to the
 * builder's connection), CPU from /proc/<pid>/stat (user + system).
 *   npm run build && npx tsx bench/self-traffic.ts [label=path/to/dist/cli.js ...]
 * Each build runs the 16-host fixture's `all` job cold (a fresh revision)
 * and once more warm (nothing to evaluate or build), twice over in
 * alternating order.
 */
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { machine, round, startBench, timedBuild } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const builds = process.argv.slice(2).map((arg) => {
  const [label, cli] = arg.split("=");
  return { label: label as string, cli: resolve(cli as string) };
});
const CLOCK_TICKS = 100;

async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces): utime is the 14th field, stime the 15th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

async function delivered(monitorUrl: string): Promise<{ received: number; sent: number }> {
  const connz = (await (await fetch(`${monitorUrl}/connz`)).json()) as { connections: Array<{ name?: string; in_msgs: number; out_msgs: number }> };
  const builder = connz.connections.find((c) => c.name?.startsWith("homelab-deploy-builder"));
  if (!builder) throw new Error("the builder's connection is not in /connz");
  // The server's out_msgs are what it delivered to the builder; in_msgs what the builder published.
  return { received: builder.out_msgs, sent: builder.in_msgs };
}

async function run(cli: string | undefined) {
  const bench = await startBench(join(here, "fixtures", "sixteen-flake"), {}, undefined, { cli, monitor: true });
  const monitorUrl = bench.nats.monitorUrl as string;
  const pid = bench.builder.child.pid as number;
  const jobs: Record<string, unknown> = {};
  for (const label of ["cold", "warm"]) {
    if (label === "cold") await bench.flake.bump();
    const before = { ...(await delivered(monitorUrl)), cpuMs: await cpuMs(pid) };
    const build = await timedBuild(bench.nc, "all");
    const after = { ...(await delivered(monitorUrl)), cpuMs: await cpuMs(pid) };
    jobs[label] = {
      status: build.final.type === "completed" ? build.final.status : build.final.type,
      messagesToRequester: build.messages.length,
      builderPublished: after.sent - before.sent,
      builderReceived: after.received - before.received,
      builderCpuMs: round(after.cpuMs - before.cpuMs, 0),
      wallMs: round(build.ms, 0),
    };
  }
  await bench.stop();
  return jobs;
}

const results: Array<Record<string, unknown>> = [];
const list = builds.length === 0 ? [{ label: "this", cli: undefined }] : builds;
for (let round = 1; round <= 2; round++) {
  for (const build of round % 2 === 1 ? list : [...list].reverse()) results.push({ build: build.label, round, ...(await run(build.cli)) });
}
console.log(JSON.stringify({ results, machine: machine() }, null, 2));
