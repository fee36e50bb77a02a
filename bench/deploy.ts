/**
 * Deploying what the builder built against evaluating on the host, side by
 * side in one run, on the fleet fixture (bench/fixtures/deploy-fleet: the
 * tests' fleet-flake, 12 hosts sized as below, each toplevel made
 * NixOS-shaped so a listener can deploy it). A real
 * nats-server, the real builder and 12 real listeners (tier test), the real
 * CLI as the deployer; every listener has a nix cache directory of its own
 * (XDG_CACHE_HOME), as a separate machine has, so the builder's evaluation
 * cache does not help it.
 * Per round, on a fresh revision the builder has built (all 12 hosts):
 *   - `deploy test host01` (prebuilt) and `deploy test host01 --no-prebuilt`
 *     (the same system, evaluated and built on the host): the listener's
 *     deploy time (`completed.durationMs`) and the deployer's wall time,
 *     unsampled;
 *   - the same two again on another fresh revision, with the peak RSS of the
 *     listener's nix processes: each listener runs nix, nix-store and nix-env
 *     through a wrapper that has GNU time record the process's maximum RSS
 *     (the kernel's own count, so a nix that lives 100 ms is not missed by a
 *     sampler);
 *   - `deploy test all` (12 listeners, prebuilt) against one host's
 *     prebuilt deploy, wall time of the deployer.
 *   npm run build && npx tsx bench/deploy.ts [rounds] [fleet]
 * By default each host's evaluation is sized towards a NixOS host's
 * (bench/fixtures/nixos-sized, about 550 MiB); `fleet`: the fleet
 * benchmark's sizes (250 MiB).
 * Goals: prebuilt <= 0.1x the evaluated deploy's time, its nix processes'
 * peak RSS <= 0.2x; all 12 <= 2x one host.
 */
import { mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { jsonLines, runCli } from "../test/support/cli.js";
import { createFixtureFlake, nixSystem } from "../test/support/flake.js";
import { createListener, startDeployFixture, type ListenerHost } from "../test/support/listener.js";
import { machine, percentile, round } from "./support.js";

process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, "..", "test", "fixtures");
const rounds = Number(process.argv[2] ?? 1);
// What a prebuilt deploy saves is the host's evaluation, so by default each
// host evaluates closer to a NixOS host's size (bench/fixtures/nixos-sized:
// about 3 s and 550 MiB with Nix 2.8 here, still below the 1-4.5 GB of a
// real NixOS evaluation); "fleet": the fleet benchmark's sizes (0.8 s, 250 MiB).
const sized = process.argv[3] === "fleet" ? [] : [join(here, "fixtures", "nixos-sized")];
const say = (what: string) => process.stderr.write(`${new Date().toISOString()} ${what}\n`);
const hosts = Array.from({ length: 12 }, (_, i) => `host${String(i + 1).padStart(2, "0")}`);
const load = { before: loadavg().map((n) => round(n, 2)), after: [] as number[] };

// The fleet flake goes in as fleet.nix (its placeholders filled here, as
// createFixtureFlake fills flake.nix's), the system fixture brings its
// switch-to-configuration, and deploy-fleet's flake.nix ties them together.
const layer = await mkdtemp(join(tmpdir(), "hd-bench-deploy-"));
const events = join(layer, ".events");
await mkdir(events, { mode: 0o1777 });
await writeFile(join(events, "events.log"), "", { mode: 0o666 });
const fleetLayer = join(layer, "fleet");
await mkdir(fleetLayer);
const fleetNix = await readFile(join(fixtures, "fleet-flake", "flake.nix"), "utf8");
await writeFile(join(fleetLayer, "fleet.nix"), fleetNix.replaceAll("@SYSTEM@", nixSystem).replaceAll("@EVENTS@", events));
const flake = await createFixtureFlake(["fleet-flake", join(here, "fixtures", "fleet-flake"), ...sized, "system-flake", fleetLayer, join(here, "fixtures", "deploy-fleet")]);

const fixture = await startDeployFixture(flake);
const env = { HOMELAB_DEPLOY_NATS_URL: fixture.nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: fixture.nats.identities.adminDeployer.seedFile, HOMELAB_DEPLOY_ACK_TIMEOUT: "60s" };

async function buildAll(): Promise<Record<string, string>> {
  const result = await runCli(["build", "systems", "all", "--json"], env, 30 * 60_000);
  const finished = jsonLines(result.stdout).filter((m) => m.type === "host_finished");
  if (result.exitCode !== 0 || finished.some((m) => !(m["copy"] as { ok?: boolean } | undefined)?.ok)) throw new Error(`build failed: ${result.stdout}\n${result.stderr}`);
  return Object.fromEntries(finished.map((m) => [m["host"] as string, m["storePath"] as string]));
}

say("building the first revision (the systems the listeners start on)");
const initial = await buildAll();
const nixDir = dirname((await execa("sh", ["-c", "command -v nix"])).stdout.trim());
/** nix, nix-store and nix-env for one listener, each run under GNU time, which appends "<max RSS KiB> <command>" to `record`. */
async function measuredNix(dir: string, record: string): Promise<string> {
  for (const name of ["nix", "nix-store", "nix-env"]) {
    await writeFile(join(dir, name), `#!/bin/sh\nexec /usr/bin/time -a -o ${record} -f "%M ${name}" ${join(nixDir, name)} "$@"\n`, { mode: 0o755 });
  }
  return join(dir, "nix");
}
const records = new Map<string, string>();
const listeners = new Map<string, ListenerHost>();
for (const host of hosts) {
  const wrappers = await mkdtemp(join(tmpdir(), `hd-bench-nix-${host}-`));
  records.set(host, join(wrappers, "rss.log"));
  const nixBin = await measuredNix(wrappers, join(wrappers, "rss.log"));
  const listener = await createListener(fixture, { host, tier: "test", repoUrl: flake.url, extra: { nixBin, timeouts: { fetch: "30m", build: "30m", switch: "5m" } } });
  listener.env["XDG_CACHE_HOME"] = await mkdtemp(join(tmpdir(), `hd-bench-cache-${host}-`));
  await listener.install(initial[host] as string);
  await listener.start();
  listeners.set(host, listener);
}

interface Deploy {
  wallMs: number;
  deployMs: number;
  prebuilt: boolean;
  peakMiB?: number;
}

/** The largest maximum RSS (MiB) among the nix processes `host`'s listener ran since `from` lines of its record. */
async function recordedPeak(host: string, from: number): Promise<number> {
  const lines = (await readFile(records.get(host) as string, "utf8").catch(() => "")).split("\n").filter(Boolean).slice(from);
  return Math.max(0, ...lines.map((line) => Number(line.split(" ")[0]) / 1024));
}
const recordLength = async (host: string) => (await readFile(records.get(host) as string, "utf8").catch(() => "")).split("\n").filter(Boolean).length;

async function deploy(target: string, args: string[], measureHost?: string): Promise<Deploy> {
  const from = measureHost ? await recordLength(measureHost) : 0;
  const started = performance.now();
  const result = await runCli(["deploy", "test", target, "--json", ...args], env, 30 * 60_000);
  const wallMs = performance.now() - started;
  const peakMiB = measureHost ? await recordedPeak(measureHost, from) : undefined;
  const lines = jsonLines(result.stdout);
  const completed = lines.filter((l) => l.type === "completed");
  if (result.exitCode !== 0 || completed.some((c) => c["status"] !== "success")) throw new Error(`deploy failed: ${result.stdout}\n${result.stderr}`);
  const started_ = lines.filter((l) => l.type === "started");
  return {
    wallMs,
    deployMs: Math.max(...completed.map((c) => c["durationMs"] as number)),
    prebuilt: started_.every((s) => s["prebuilt"] === true),
    ...(peakMiB !== undefined ? { peakMiB } : {}),
  };
}

const samples = {
  prebuilt: [] as Deploy[],
  evaluated: [] as Deploy[],
  prebuiltMeasured: [] as Deploy[],
  evaluatedMeasured: [] as Deploy[],
  oneHost: [] as Deploy[],
  all: [] as Deploy[],
};
for (let i = 0; i < rounds; i++) {
  await flake.bump();
  await buildAll();
  samples.prebuilt.push(await deploy("host01", []));
  samples.evaluated.push(await deploy("host01", ["--no-prebuilt"]));
  say(`round ${i + 1}: prebuilt ${JSON.stringify(samples.prebuilt.at(-1))}, evaluated ${JSON.stringify(samples.evaluated.at(-1))}`);
  samples.oneHost.push(await deploy("host02", []));
  samples.all.push(await deploy("all", []));
  say(`round ${i + 1}: one host ${JSON.stringify(samples.oneHost.at(-1))}, all 12 ${JSON.stringify(samples.all.at(-1))}`);

  await flake.bump();
  await buildAll();
  samples.prebuiltMeasured.push(await deploy("host01", [], "host01"));
  samples.evaluatedMeasured.push(await deploy("host01", ["--no-prebuilt"], "host01"));
  say(`round ${i + 1}: measured prebuilt ${JSON.stringify(samples.prebuiltMeasured.at(-1))}, evaluated ${JSON.stringify(samples.evaluatedMeasured.at(-1))}`);
}
load.after = loadavg().map((n) => round(n, 2));

for (const listener of listeners.values()) await listener.process.stop("SIGTERM");
await fixture.stop();

const med = (values: number[]) => percentile(values, 50);
const s = (ms: number) => round(ms / 1000, 2);
const summary = (d: Deploy[]) => ({
  deploySeconds: s(med(d.map((x) => x.deployMs))),
  wallSeconds: s(med(d.map((x) => x.wallMs))),
  roundsDeploySeconds: d.map((x) => s(x.deployMs)),
  prebuilt: d.every((x) => x.prebuilt),
  ...(d[0]?.peakMiB !== undefined ? { peakMiB: round(med(d.map((x) => x.peakMiB as number)), 1) } : {}),
});
const ratio = (a: number, b: number) => round(a / b, 3);
console.log(
  JSON.stringify(
    {
      machine: machine(),
      rounds,
      sizes: JSON.parse(await readFile(join(flake.dir, "sizes.json"), "utf8")),
      load,
      prebuilt: summary(samples.prebuilt),
      evaluated: summary(samples.evaluated),
      prebuiltMeasured: summary(samples.prebuiltMeasured),
      evaluatedMeasured: summary(samples.evaluatedMeasured),
      oneHost: summary(samples.oneHost),
      all12: summary(samples.all),
      ratios: {
        prebuiltVsEvaluatedDeployTime: ratio(med(samples.prebuilt.map((x) => x.deployMs)), med(samples.evaluated.map((x) => x.deployMs))),
        prebuiltVsEvaluatedWallTime: ratio(med(samples.prebuilt.map((x) => x.wallMs)), med(samples.evaluated.map((x) => x.wallMs))),
        prebuiltVsEvaluatedPeakRss: ratio(med(samples.prebuiltMeasured.map((x) => x.peakMiB as number)), med(samples.evaluatedMeasured.map((x) => x.peakMiB as number))),
        all12VsOneHostWallTime: ratio(med(samples.all.map((x) => x.wallMs)), med(samples.oneHost.map((x) => x.wallMs))),
      },
    },
    null,
    2,
  ),
);
