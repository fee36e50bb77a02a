/**
 * What the daemon adds to nix's own time for one host that is already built:
 * `homelab-deploy build <repo> <host>` over NATS (request → completed, from
 * a requester already connected) versus the same `nix build` typed by hand.
 *   npm run build && npx tsx bench/host-overhead.ts [runs]
 * Goal: < 50 ms.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { machine, percentile, round, startBench, timedBuild } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const runs = Number(process.argv[2] ?? 15);
const bench = await startBench(join(here, "fixtures", "flood-flake"));
const installable = `${bench.flake.url}#nixosConfigurations.quiet.config.system.build.toplevel`;

// Build it once so both sides measure an already-built host, with nix's eval cache warm.
await timedBuild(bench.nc, "quiet");
await execa("nix", ["build", "--no-link", "--json", installable]);

const byHand: number[] = [];
const daemon: number[] = [];
for (let i = 0; i < runs; i++) {
  const started = performance.now();
  await execa("nix", ["build", "--no-link", "--json", installable]);
  byHand.push(performance.now() - started);
  const { ms, final } = await timedBuild(bench.nc, "quiet");
  if (final.status !== "success") throw new Error(`daemon build failed: ${JSON.stringify(final)}`);
  daemon.push(ms);
}
await bench.stop();

const median = (values: number[]) => round(percentile(values, 50), 1);
console.log(
  JSON.stringify(
    {
      runs,
      byHandMs: { median: median(byHand), all: byHand.map((v) => round(v, 0)) },
      daemonMs: { median: median(daemon), all: daemon.map((v) => round(v, 0)) },
      overheadMs: round(percentile(daemon, 50) - percentile(byHand, 50), 1),
      machine: machine(),
    },
    null,
    2,
  ),
);
