import { readFile, writeFile } from "node:fs/promises";
import { spawnBuilder } from "../test/support/daemon.js";
import { startBench, timedBuild } from "./support.js";
const fleet = await startBench("/tmp/fleet100");
for (const build of [{}, { evalWorkers: 2, evalMaxMemory: "20MiB" }]) {
  await fleet.builder.stop();
  const config = JSON.parse(await readFile(fleet.builder.configFile, "utf8"));
  config.build = { timeout: "30m", ...build };
  await writeFile(fleet.builder.configFile, JSON.stringify(config, null, 2));
  fleet.builder = await spawnBuilder(fleet.builder.configFile, {});
  await fleet.flake.bump();
  const { ms, final, messages } = await timedBuild(fleet.nc, "all");
  const results = (final.results ?? []) as Array<{ status: string; host: string }>;
  const statuses: Record<string, number> = {};
  for (const r of results) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
  const sizes = messages.map((m) => JSON.stringify(m).length);
  const types: Record<string, number> = {};
  for (const m of messages) types[m.type as string] = (types[m.type as string] ?? 0) + 1;
  const summary = fleet.builder.logs.find((l) => l.msg === "evaluated every host" && true);
  console.log(JSON.stringify({ build, ms: Math.round(ms), status: final.status, statuses, finalBytes: JSON.stringify(final).length, maxMsg: Math.max(...sizes), types, order: results.slice(0, 3).map((r) => r.host), summary: { processes: (summary as any)?.processes, peakRss: (summary as any)?.peakRss } }));
  const warns = fleet.builder.logs.filter((l) => (l.level as number) >= 40).map((l) => l.msg);
  console.log("warnings:", [...new Set(warns)]);
  const again = await timedBuild(fleet.nc, "all");
  console.log("rerun ms", Math.round(again.ms), again.final.status);
}
await fleet.stop();
