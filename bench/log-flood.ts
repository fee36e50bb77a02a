/**
 * Memory of the builder daemon, idle and under a 200,000-line nix log
 * flood (each line one @nix JSON event through the internal-json parser).
 *   npm run build && npx tsx bench/log-flood.ts
 * Runs the daemon twice: with plain `node`, and with the node options the
 * NixOS package's wrapper sets (package.json "homelab-deploy".nodeOptions).
 * Samples its RSS (/proc/<pid>/status VmRSS) every 50 ms. Goal: < 100 MB.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Inbox } from "../test/support/nats-client.js";
import { PACKAGED_NODE_OPTIONS, machine, round, rssMiB, startBench, timedBuild } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));

async function measure(nodeOptions: string) {
  const bench = await startBench(join(here, "fixtures", "flood-flake"), {}, nodeOptions);
  const pid = bench.builder.child.pid as number;
  // Warm up with one quick build, so idle is measured with the code paths loaded.
  await timedBuild(bench.nc, "quiet");
  await new Promise((r) => setTimeout(r, 1000));
  const idle = await rssMiB(pid);
  let peak = idle;
  const sampler = setInterval(() => {
    void rssMiB(pid).then((mib) => (peak = Math.max(peak, mib)), () => undefined);
  }, 50);
  const started = performance.now();
  const flood = await Inbox.open(bench.nc);
  flood.send("build.bench.flood");
  const final = await flood.final(10 * 60_000);
  const seconds = (performance.now() - started) / 1000;
  clearInterval(sampler);
  await new Promise((r) => setTimeout(r, 2000));
  const after = await rssMiB(pid);
  await bench.stop();
  return {
    nodeOptions: nodeOptions || "(none)",
    status: final.type === "completed" ? final.status : final.type,
    seconds: round(seconds),
    progressMessages: flood.messages.filter((m) => m.type === "progress").length,
    rssMiB: { idle: round(idle), peak: round(peak), after: round(after) },
  };
}

const plain = await measure("");
const packaged = await measure(PACKAGED_NODE_OPTIONS);
console.log(JSON.stringify({ lines: 200_000, runs: [plain, packaged], machine: machine() }, null, 2));
