/**
 * Memory of the builder daemon under a 200,000-line nix log flood.
 *   npm run build && npx tsx bench/log-flood.ts
 * Starts a real nats-server and the daemon (node dist/cli.js builder),
 * samples the daemon's RSS (/proc/<pid>/status VmRSS) every 50 ms: idle
 * after start-up, during the flood build, and after it. Results go to
 * docs/performance.md by hand, with the machine they came from.
 */
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { jsonLines, runCli } from "../test/support/cli.js";
import { startBuilder } from "../test/support/daemon.js";
import { createFixtureFlake } from "../test/support/flake.js";
import { startNatsServer } from "../test/support/nats-server.js";

const here = dirname(fileURLToPath(import.meta.url));
process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kib / 1024;
}

const nats = await startNatsServer();
const flake = await createFixtureFlake(join(here, "fixtures", "flood-flake"));
const builder = await startBuilder({
  natsUrl: nats.url,
  seedFile: nats.identities.builder.seedFile,
  repos: { flood: flake.url },
  build: { timeout: "10m" },
  extra: { log: { level: "info" } },
});
const pid = builder.child.pid as number;
const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };

// Warm up: one quiet build, so idle is measured with the code paths loaded.
await runCli(["build", "flood", "quiet"], env);
await new Promise((r) => setTimeout(r, 1000));
const idle = await rssMiB(pid);

let peak = idle;
const sampler = setInterval(() => {
  void rssMiB(pid).then((mib) => (peak = Math.max(peak, mib)), () => undefined);
}, 50);
const started = Date.now();
const result = await runCli(["build", "flood", "flood", "--json"], env, 600_000);
const seconds = (Date.now() - started) / 1000;
clearInterval(sampler);
const messages = jsonLines(result.stdout);
await new Promise((r) => setTimeout(r, 2000));
const after = await rssMiB(pid);
await builder.stop();
await nats.stop();

const progress = messages.filter((m) => m.type === "progress").length;
const final = messages.at(-1);
console.log(
  JSON.stringify(
    {
      lines: 200_000,
      exitCode: result.exitCode,
      status: final?.type === "completed" ? final["status"] : final?.type,
      seconds: Number(seconds.toFixed(1)),
      progressMessages: progress,
      rssMiB: { idle: Number(idle.toFixed(1)), peak: Number(peak.toFixed(1)), after: Number(after.toFixed(1)) },
      node: process.version,
    },
    null,
    2,
  ),
);
