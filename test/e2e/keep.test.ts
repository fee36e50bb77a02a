/**
 * What the builder keeps, with real nix in a private store that the test
 * garbage-collects: GC roots per the keep policy (generations, ref builds,
 * across restarts), closure changes against the last good build, expected
 * durations, and the build history (bounded, across restarts, corrupt file).
 */
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jsonLines, runCli } from "../support/cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { createIsolatedStore, type IsolatedStore } from "../support/nix-store.js";
import { sleep } from "../support/nats-client.js";

const run = promisify(execFile);
type Msg = Record<string, unknown> & { type: string };
type Result = { host: string; status: string; storePath?: string; gcRoot?: boolean; changes?: Record<string, unknown> | null };

let nats: NatsServer;
let flake: FixtureFlake;
let store: IsolatedStore;
let builder: BuilderProcess;
let env: Record<string, string>;
const KEEP_REF_MS = 2_000;

beforeAll(async () => {
  nats = await startNatsServer();
  flake = await createFixtureFlake("keep-flake");
  // keep-derivations = false: garbage collection also deletes the toplevel
  // .drvs the builder cached, as it does to any .drv nobody roots.
  store = await createIsolatedStore(["keep-derivations = false"]);
  builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flake.url },
    build: { keepGenerations: 2, keepRefBuilds: `${KEEP_REF_MS}ms`, historySize: 4 },
    env: store.env,
  });
  env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile };
});

afterAll(async () => {
  await builder?.stop("SIGKILL");
  await nats?.stop();
});

async function build(target: string, ...extra: string[]): Promise<{ exitCode: number; messages: Msg[]; results: Result[] }> {
  const cli = await runCli(["build", "fixture", target, "--json", ...extra], env);
  const messages = jsonLines(cli.stdout);
  const final = messages.at(-1) as Msg & { results?: Result[] };
  return { exitCode: cli.exitCode, messages, results: final.results ?? [] };
}

const stateDir = async () => JSON.parse(await readFile(builder.configFile, "utf8")).stateDir as string;
const storePathOf = (results: Result[], host: string) => results.find((r) => r.host === host)?.storePath as string;

async function setToolVersion(version: string): Promise<void> {
  await writeFile(join(flake.dir, "tool-version"), `${version}\n`);
  await run("git", ["-C", flake.dir, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qam", `tool ${version}`]);
}

describe("what the builder keeps", () => {
  const firstBuild: Record<string, string> = {};

  it("roots every toplevel of `all`: a garbage collection right after leaves them valid", async () => {
    const first = await build("all");
    expect(first.exitCode).toBe(0);
    expect(first.results.map((r) => [r.host, r.status, r.gcRoot, r.changes])).toEqual([
      ["alpha", "success", true, null],
      ["beta", "success", true, null],
      ["gamma", "success", true, null],
    ]);
    for (const r of first.results) firstBuild[r.host] = r.storePath as string;
    expect(firstBuild["alpha"]?.startsWith(`${store.storeDir}/`)).toBe(true);
    const started = first.messages.filter((m) => m.type === "host_started");
    expect(started.map((m) => m["expectedMs"])).toEqual([null, null, null]);
    expect(first.messages.find((m) => m.type === "job_started")?.["expectedMs"]).toBeNull();

    await store.gc();
    for (const path of Object.values(firstBuild)) expect(await store.isValid(path)).toBe(true);
    const links = await readdir(join(await stateDir(), "gcroots", "fixture", "alpha"));
    expect(links).toEqual([expect.stringMatching(/^default-\d{13}-[0-9a-z]{32}$/)]);
  });

  it("builds the same revision again after its cached .drvs were collected", async () => {
    const again = await build("all");
    expect(again.exitCode).toBe(0);
    await builder.waitForLog((l) => l.msg === "a cached toplevel .drv was garbage-collected; evaluating again");
    expect(again.results.map((r) => r.storePath)).toEqual(Object.values(firstBuild));
    // An unchanged revision adds no generation, and its closure has not changed.
    expect(again.results.every((r) => Array.isArray(r.changes?.["packages"]) && (r.changes?.["packages"] as unknown[]).length === 0)).toBe(true);
    expect(await readdir(join(await stateDir(), "gcroots", "fixture", "alpha"))).toHaveLength(1);
  });

  it("reports tool 1.0 → 1.1 in alpha's changes, nothing for beta, and expected durations from the history", async () => {
    const before = await flake.head();
    await setToolVersion("1.1");
    const update = await build("all");
    expect(update.exitCode).toBe(0);
    const alpha = update.results.find((r) => r.host === "alpha");
    expect(alpha?.changes).toMatchObject({
      against: firstBuild["alpha"],
      againstRevision: before,
      packages: [{ name: "tool", before: ["1.0"], after: ["1.1"], sizeDeltaBytes: 0 }],
    });
    expect(typeof alpha?.changes?.["sizeDeltaBytes"]).toBe("number");
    expect(update.results.find((r) => r.host === "beta")?.changes).toMatchObject({ against: firstBuild["beta"], packages: [] });
    const hostStarted = update.messages.filter((m) => m.type === "host_started");
    expect(hostStarted.every((m) => typeof m["expectedMs"] === "number")).toBe(true);
    expect(typeof update.messages.find((m) => m.type === "job_started")?.["expectedMs"]).toBe("number");
    // The host_finished message carries the same changes as the summary.
    const finished = update.messages.find((m) => m.type === "host_finished" && m["host"] === "alpha");
    expect(finished?.["changes"]).toEqual(alpha?.changes);
    // Both alpha generations are kept: the old one is what a rollback needs.
    await store.gc();
    expect(await store.isValid(firstBuild["alpha"] as string)).toBe(true);
    expect(await store.isValid(storePathOf(update.results, "alpha"))).toBe(true);
  });

  it("keeps the newest keepGenerations toplevels: the oldest is collected after one more revision", async () => {
    const g1 = firstBuild["gamma"] as string;
    await flake.bump();
    const second = await build("gamma");
    await flake.bump();
    const third = await build("gamma");
    expect([second.exitCode, third.exitCode]).toEqual([0, 0]);
    const [g2, g3] = [storePathOf(second.results, "gamma"), storePathOf(third.results, "gamma")];
    expect(new Set([g1, g2, g3]).size).toBe(3);
    await store.gc();
    expect([await store.isValid(g1), await store.isValid(g2), await store.isValid(g3)]).toEqual([false, true, true]);
  });

  it("keeps a ref build for keepRefBuilds, then releases it on the next build", async () => {
    await flake.branch("flake-update");
    const refBuild = await build("gamma", "--ref", "flake-update");
    expect(refBuild.exitCode).toBe(0);
    const refPath = storePathOf(refBuild.results, "gamma");
    // Reviewed against the default branch's newest success.
    expect(refBuild.results[0]?.changes).toMatchObject({ againstRevision: await flake.head() });
    await store.gc();
    expect(await store.isValid(refPath)).toBe(true);
    await sleep(KEEP_REF_MS + 200);
    expect((await build("beta")).exitCode).toBe(0);
    await store.gc();
    expect(await store.isValid(refPath)).toBe(false);
  });

  it("keeps its roots and history across a restart; a corrupt history file is one warning and a fresh start", async () => {
    const rootsBefore = (await readFile(join(await stateDir(), "gcroots.json"), "utf8")).length;
    const historyBefore = await runCli(["history", "fixture", "beta", "--json"], env);
    expect(historyBefore.exitCode).toBe(0);
    const entries = (JSON.parse(historyBefore.stdout) as { entries: Array<Record<string, unknown>> }).entries;
    // Four beta builds so far, history size 4: bounded, newest first.
    expect(entries).toHaveLength(4);
    expect(entries[0]).toMatchObject({ host: "beta", status: "success", ref: null, revision: await flake.head() });
    expect(entries.map((e) => e["finishedAt"])).toEqual([...entries.map((e) => e["finishedAt"] as string)].sort().reverse());

    await builder.stop();
    builder = await spawnBuilder(builder.configFile, store.env);
    expect(rootsBefore).toBeGreaterThan(0);
    await store.gc();
    const alphaLinks = await readdir(join(await stateDir(), "gcroots", "fixture", "alpha"));
    expect(alphaLinks).toHaveLength(2);
    const rooted = (JSON.parse(await readFile(join(await stateDir(), "gcroots.json"), "utf8")) as { roots: Array<{ storePath: string }> }).roots;
    expect(rooted.length).toBeGreaterThan(0);
    for (const root of rooted) expect(await store.isValid(root.storePath), root.storePath).toBe(true);
    const afterRestart = JSON.parse((await runCli(["history", "fixture", "beta", "--json"], env)).stdout) as { entries: unknown[] };
    expect(afterRestart.entries).toEqual(entries);
    const table = await runCli(["history", "fixture"], env);
    expect(table.stdout).toMatch(/^HOST\s+STATUS\s+DURATION\s+REVISION\s+REF\s+FINISHED\s+RESULT/m);
    expect(table.stdout).toContain("flake-update");

    await builder.stop();
    await writeFile(join(await stateDir(), "history.json"), "{ not json");
    builder = await spawnBuilder(builder.configFile, store.env);
    const warning = await builder.waitForLog((l) => l.msg === "the build history file is unreadable; starting a fresh history");
    expect(warning.level).toBe(40);
    const fresh = JSON.parse((await runCli(["history", "fixture", "--json"], env)).stdout) as { entries: unknown[] };
    expect(fresh.entries).toEqual([]);
    expect((await build("beta")).exitCode).toBe(0);
    expect((JSON.parse((await runCli(["history", "fixture", "--json"], env)).stdout) as { entries: unknown[] }).entries).toHaveLength(1);
  });
});
