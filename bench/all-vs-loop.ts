/**
 * `all` on 16 hosts that share an expensive evaluation: the daemon versus
 * a shell-style loop running `nix build` once per host (the old
 * build-flakes.sh way), same flake, same machine, same run.
 *   npm run build && npx tsx bench/all-vs-loop.ts [rounds]
 * Each round: the loop builds a fresh revision cold, then re-runs it (nix's
 * eval cache answers); the daemon builds another fresh revision cold, then
 * re-runs it, then re-runs it once more after a restart (its own .drv cache
 * gone). Goals: daemon cold <= 0.25 x loop cold; daemon re-run <= loop re-run.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { spawnBuilder } from "../test/support/daemon.js";
import { machine, percentile, round, startBench, timedBuild } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const rounds = Number(process.argv[2] ?? 3);
const hosts = Array.from({ length: 16 }, (_, i) => `host${i + 1}`);

const bench = await startBench(join(here, "fixtures", "sixteen-flake"));

async function loop(): Promise<number> {
  const started = performance.now();
  for (const host of hosts) {
    await execa("nix", ["build", "--no-link", `${bench.flake.url}#nixosConfigurations.${host}.config.system.build.toplevel`]);
  }
  return performance.now() - started;
}

async function daemon(): Promise<number> {
  const { ms, final } = await timedBuild(bench.nc, "all");
  const results = (final.results ?? []) as Array<{ status: string }>;
  if (final.status !== "success" || results.length !== 16) throw new Error(`daemon build failed: ${JSON.stringify(final)}`);
  return ms;
}

const say = (what: string) => process.stderr.write(`${new Date().toISOString()} ${what}\n`);
const samples = { loopCold: [] as number[], loopRerun: [] as number[], daemonCold: [] as number[], daemonRerun: [] as number[], daemonAfterRestart: [] as number[] };
for (let i = 0; i < rounds; i++) {
  await bench.flake.bump();
  samples.loopCold.push(await loop());
  say(`round ${i + 1}: loop cold ${samples.loopCold.at(-1)?.toFixed(0)} ms`);
  samples.loopRerun.push(await loop());
  say(`round ${i + 1}: loop re-run ${samples.loopRerun.at(-1)?.toFixed(0)} ms`);
  await bench.flake.bump();
  samples.daemonCold.push(await daemon());
  say(`round ${i + 1}: daemon cold ${samples.daemonCold.at(-1)?.toFixed(0)} ms`);
  samples.daemonRerun.push(await daemon());
  say(`round ${i + 1}: daemon re-run ${samples.daemonRerun.at(-1)?.toFixed(0)} ms`);
  await bench.builder.stop();
  bench.builder = await spawnBuilder(bench.builder.configFile);
  samples.daemonAfterRestart.push(await daemon());
  say(`round ${i + 1}: daemon after restart ${samples.daemonAfterRestart.at(-1)?.toFixed(0)} ms`);
}
await bench.stop();

const median = (values: number[]) => round(percentile(values, 50) / 1000, 2);
const result = {
  rounds,
  seconds: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, { median: median(v), all: v.map((ms) => round(ms / 1000, 2)) }])),
  coldRatio: round(percentile(samples.daemonCold, 50) / percentile(samples.loopCold, 50), 3),
  rerunRatio: round(percentile(samples.daemonRerun, 50) / percentile(samples.loopRerun, 50), 3),
  machine: machine(),
};
console.log(JSON.stringify(result, null, 2));
