/**
 * The GC root keeper against real nix-store in a private store: the link
 * files are the truth, the policy releases what it should (with a clock the
 * test moves), and a root that cannot be written is a warning, not a throw.
 */
import { execa } from "execa";
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { GcRoots } from "../../../src/builder/keep/gc-roots.js";
import { NixRunner } from "../../../src/nix/runner.js";
import { NixStore } from "../../../src/nix/store.js";
import { memoryLogger } from "../../support/logger.js";
import { createIsolatedStore, type IsolatedStore } from "../../support/nix-store.js";

let store: IsolatedStore;
let paths: string[];

beforeAll(async () => {
  store = await createIsolatedStore();
});

// Three fresh toplevels per test: one test's garbage collection must not take another's.
beforeEach(async (context) => {
  const tag = context.task.name.replace(/[^a-z]/g, "").slice(0, 20);
  const expr = `builtins.map (n: derivation { name = "nixos-system-\${n}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo \${n} ${tag} > $out" ]; }) [ "one" "two" "three" ]`;
  const built = await execa("nix-build", ["--no-out-link", "-E", expr], { env: store.env, extendEnv: true });
  paths = built.stdout.trim().split("\n");
  expect(paths).toHaveLength(3);
});

function keeper(stateDir: string, clock: { now: number }, repos = ["r"]) {
  const nix = new NixRunner({ nixBin: "nix", killGraceMs: 500, logTailLines: 20, env: { ...process.env, ...store.env } as Record<string, string> });
  const { logger, lines } = memoryLogger();
  const roots = new GcRoots({ stateDir, store: new NixStore(nix), keepGenerations: 2, keepRefBuildsMs: 60_000, logger, repos, now: () => clock.now });
  return { roots, lines };
}

const build = (storePath: string, ref: string | null = null, host = "ns1") => ({ repo: "r", host, storePath, revision: null, ref });

describe("GcRoots", () => {
  it("keeps two generations, adds none for the same toplevel, and trusts the links over lost bookkeeping", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-roots-"));
    const clock = { now: Date.parse("2026-12-01T10:00:00Z") };
    const { roots } = keeper(dir, clock);
    await roots.load();
    const [one, two, three] = paths as [string, string, string];
    for (const path of [one, two, two, three]) {
      clock.now += 1000;
      expect(await roots.add(build(path))).toBe(true);
    }
    expect(roots.rootsOf("r", "ns1").map((r) => r.storePath)).toEqual([three, two]);
    await store.gc();
    expect([await store.isValid(one), await store.isValid(two), await store.isValid(three)]).toEqual([false, true, true]);

    await roots.flush();
    await rm(join(dir, "gcroots.json"));
    const again = keeper(dir, clock).roots;
    await again.load();
    expect(again.rootsOf("r", "ns1").map((r) => [r.storePath, r.kind])).toEqual([[three, "default"], [two, "default"]]);
  });

  it("releases a ref build after keepRefBuilds, and a host gone from the flake keepRefBuilds after its last build", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-roots-"));
    const clock = { now: Date.parse("2026-12-01T10:00:00Z") };
    const { roots } = keeper(dir, clock);
    await roots.load();
    expect(await roots.add(build(paths[0] as string, "flake-update"))).toBe(true);
    expect(await roots.add(build(paths[1] as string, null, "old-host"))).toBe(true);
    await roots.retainHosts("r", ["ns1"]);
    expect(roots.rootsOf("r", "old-host")).toHaveLength(1);
    await roots.flush();
    clock.now += 61_000;
    // A start-up after the keep time releases the expired ref build; which
    // hosts are gone is known again at the next build of the default branch.
    const restarted = keeper(dir, clock).roots;
    await restarted.load();
    expect(restarted.rootsOf("r", "ns1")).toEqual([]);
    expect(restarted.rootsOf("r", "old-host")).toHaveLength(1);
    await restarted.retainHosts("r", ["ns1"]);
    expect(restarted.rootsOf("r", "old-host")).toEqual([]);
    await restarted.add(build(paths[2] as string));
    expect(restarted.rootsOf("r", "ns1").map((r) => r.kind)).toEqual(["default"]);
    expect(await readdir(join(dir, "gcroots", "r"))).toEqual(["ns1"]);
  });

  it("releases a repo gone from the config only after keepRefBuilds", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-roots-"));
    const clock = { now: Date.parse("2026-12-01T10:00:00Z") };
    const { roots, lines } = keeper(dir, clock);
    await roots.load();
    expect(await roots.add(build(paths[0] as string)), JSON.stringify(lines)).toBe(true);
    await roots.flush();
    const unconfigured = keeper(dir, clock, ["other"]);
    await unconfigured.roots.load();
    expect(unconfigured.roots.rootsOf("r", "ns1"), JSON.stringify(unconfigured.lines)).toHaveLength(1);
    await unconfigured.roots.flush();
    clock.now += 61_000;
    const later = keeper(dir, clock, ["other"]).roots;
    await later.load();
    expect(later.rootsOf("r", "ns1")).toEqual([]);
    expect(await readdir(join(dir, "gcroots"))).toEqual([]);
  });

  it("reports a root it cannot write as false with a warning, and releases nothing then", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-roots-"));
    const clock = { now: Date.parse("2026-12-01T10:00:00Z") };
    const { roots, lines } = keeper(dir, clock);
    await roots.load();
    expect(await roots.add(build(paths[0] as string))).toBe(true);
    // A file where the host's directory of another host should be: mkdir fails.
    await mkdir(join(dir, "gcroots", "r"), { recursive: true });
    await writeFile(join(dir, "gcroots", "r", "ns2"), "");
    await chmod(join(dir, "gcroots", "r", "ns2"), 0o444);
    clock.now += 1000;
    expect(await roots.add(build(paths[1] as string, null, "ns2"))).toBe(false);
    expect(lines).toContainEqual(expect.objectContaining({ level: 40, repo: "r", host: "ns2", storePath: paths[1], err: expect.any(String) }));
    // A store path nix does not know: nix-store refuses, the old root stays.
    clock.now += 1000;
    expect(await roots.add(build(`${store.storeDir}/${"0".repeat(32)}-nixos-system-missing`))).toBe(false);
    expect(roots.rootsOf("r", "ns1").map((r) => r.storePath)).toEqual([paths[0]]);
  });
});
