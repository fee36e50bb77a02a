/** The metrics state file on a real file system: atomic saves, loading, and what a bad file does. */
import { mkdtemp, readFile, readdir, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MetricsStateFile, type MetricsState } from "../../src/observability/state.js";
import { memoryLogger } from "../support/logger.js";

const state: MetricsState = {
  builds: [
    { repo: "nixos-servers", status: "success", value: 12 },
    { repo: "nixos-servers", status: "failure", value: 3 },
  ],
  hostBuilds: [{ repo: "nixos-servers", host: "ns1", status: "timeout", value: 1 }],
  lastBuild: { "nixos-servers": 1_760_000_100.25 },
  lastSuccess: { "nixos-servers": 1_760_000_000.5 },
  hostLastSuccess: [{ repo: "nixos-servers", host: "ns1", value: 1_760_000_000.5 }],
};

/** A metrics state file in a fresh directory (or `sub` below it) that saves `snapshot`'s metrics. */
async function store(snapshot: () => Promise<MetricsState> = async () => state, sub?: string) {
  const dir = await mkdtemp(join(tmpdir(), "hd-state-unit-"));
  const { logger, lines } = memoryLogger();
  return { dir, lines, store: new MetricsStateFile({ dir: sub ? join(dir, sub) : dir, logger, snapshot }) };
}

/** Saves what the snapshot gives now and waits until it is written. */
async function save(file: MetricsStateFile): Promise<void> {
  file.request();
  await file.flush();
}

describe("MetricsStateFile: loading", () => {
  it("loads a file written before per-host last-success times existed", async () => {
    const { dir, store: s } = await store();
    const { hostLastSuccess: _, ...older } = state;
    await writeFile(join(dir, "metrics.json"), JSON.stringify({ version: 1, savedAt: "2026-11-01T00:00:00.000Z", metrics: older }));
    expect(await s.load()).toEqual({ ...older, hostLastSuccess: [] });
  });

  it("saves and loads the same metrics, leaving only metrics.json behind", async () => {
    const { dir, store: s, lines } = await store();
    await save(s);
    expect(await s.load()).toEqual(state);
    expect(await readdir(dir)).toEqual(["metrics.json"]);
    expect((await stat(join(dir, "metrics.json"))).mode & 0o777).toBe(0o640);
    const saved = JSON.parse(await readFile(join(dir, "metrics.json"), "utf8")) as Record<string, unknown>;
    expect(saved).toMatchObject({ version: 1, savedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/), metrics: state });
    expect(lines.filter((l) => (l.level ?? 0) >= 40)).toEqual([]);
  });

  it("creates the state directory when it is missing", async () => {
    const { store: nested } = await store(async () => state, join("a", "b"));
    await save(nested);
    expect(await nested.load()).toEqual(state);
  });

  it.each([
    ["not JSON", "{\"version\": 1,", /not JSON/],
    ["another format version", JSON.stringify({ version: 2, savedAt: "x", metrics: state }), /version/],
    ["a negative counter", JSON.stringify({ version: 1, savedAt: "x", metrics: { ...state, builds: [{ repo: "r", status: "success", value: -1 }] } }), /metrics\.builds\.0\.value/],
    ["an unknown status", JSON.stringify({ version: 1, savedAt: "x", metrics: { ...state, hostBuilds: [{ repo: "r", host: "h", status: "meh", value: 1 }] } }), /status/],
    ["a hostile repo name", JSON.stringify({ version: 1, savedAt: "x", metrics: { ...state, lastSuccess: { "a b": 1 } } }), /lastSuccess/],
  ])("ignores a file with %s, with one warning that says why", async (_what, text, problem) => {
    const { dir, store: s, lines } = await store();
    await writeFile(join(dir, "metrics.json"), text);
    expect(await s.load()).toBeUndefined();
    const warnings = lines.filter((l) => (l.level ?? 0) >= 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ file: join(dir, "metrics.json"), problem: expect.stringMatching(problem) });
  });

  it("warns once when there is no file", async () => {
    const { store: s, lines } = await store();
    expect(await s.load()).toBeUndefined();
    expect(lines.filter((l) => (l.level ?? 0) >= 40)).toEqual([expect.objectContaining({ msg: expect.stringMatching(/does not exist yet/) })]);
  });
});

describe("MetricsStateFile: saving", () => {
  it("folds a burst of changes into few writes and always saves the last one", async () => {
    let snapshots = 0;
    let successes = 0;
    const { store: s } = await store(async () => {
      snapshots += 1;
      return { ...state, builds: [{ repo: "nixos-servers", status: "success", value: successes }] };
    });
    for (let i = 1; i <= 50; i++) {
      successes = i;
      s.request();
    }
    await s.flush();
    expect(snapshots).toBeLessThanOrEqual(2);
    expect((await s.load())?.builds).toEqual([{ repo: "nixos-servers", status: "success", value: 50 }]);
  });

  it("logs a failed write and carries on", async () => {
    // A state directory below a regular file cannot be created, not even by root.
    const { dir, store: broken, lines } = await store(async () => state, join("file", "state"));
    await writeFile(join(dir, "file"), "");
    await save(broken);
    expect(lines.filter((l) => (l.level ?? 0) >= 40)).toEqual([
      expect.objectContaining({ file: join(dir, "file", "state", "metrics.json"), err: expect.stringMatching(/ENOTDIR|EEXIST/) }),
    ]);
  });
});
