/** The build history file: bounded, newest first, expected durations, and a corrupt file is one warning. */
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BuildHistory } from "../../../src/builder/keep/history.js";
import type { HistoryEntry } from "../../../src/protocol.js";
import { memoryLogger } from "../../support/logger.js";

let clock = Date.parse("2026-12-01T10:00:00Z");
function entry(host: string, durationMs: number, fields: Partial<HistoryEntry> = {}): HistoryEntry {
  clock += 1000;
  return { host, jobId: "j0000000001", revision: "a".repeat(40), ref: null, status: "success", durationMs, storePath: `/nix/store/${"x".repeat(32)}-${host}`, finishedAt: new Date(clock).toISOString(), ...fields };
}

describe("BuildHistory", () => {
  it("keeps the last historySize entries per host, newest first, across a restart", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-history-"));
    const { logger } = memoryLogger();
    const history = new BuildHistory({ stateDir: dir, size: 3, logger });
    for (let i = 1; i <= 5; i++) history.record("r", entry("ns1", i * 1000));
    history.record("r", entry("ns2", 7000, { status: "failure", storePath: undefined, error: "boom" }));
    await history.flush();
    const reloaded = new BuildHistory({ stateDir: dir, size: 3, logger });
    await reloaded.load();
    expect(reloaded.entries("r", "ns1").map((e) => e.durationMs)).toEqual([5000, 4000, 3000]);
    expect(reloaded.entries("r").map((e) => [e.host, e.durationMs])).toEqual([["ns2", 7000], ["ns1", 5000], ["ns1", 4000], ["ns1", 3000]]);
    expect(reloaded.entries("other")).toEqual([]);
    expect(JSON.parse(await readFile(join(dir, "history.json"), "utf8")).version).toBe(1);
  });

  it("keeps the log tail of each host's newest failure only, across a restart", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-history-"));
    const { logger } = memoryLogger();
    const history = new BuildHistory({ stateDir: dir, size: 10, logger });
    const failed = (tail: string) => ({ status: "failure" as const, storePath: undefined, error: "boom", logTail: [tail] });
    history.record("r", entry("ns1", 1, failed("first failure")));
    history.record("r", entry("ns2", 1, failed("ns2's failure")));
    history.record("r", entry("ns1", 1));
    history.record("r", entry("ns1", 1, failed("second failure")));
    history.record("r", entry("ns1", 1, { status: "eval_error", storePath: undefined, error: "undefined variable", location: { file: "hosts/ns1.nix", line: 3 } }));
    await history.flush();
    const reloaded = new BuildHistory({ stateDir: dir, size: 10, logger });
    await reloaded.load();
    expect(reloaded.entries("r", "ns1").map((e) => [e.status, e.logTail, e.location?.line])).toEqual([
      ["eval_error", undefined, 3],
      ["failure", ["second failure"], undefined],
      ["success", undefined, undefined],
      ["failure", undefined, undefined],
    ]);
    expect(reloaded.entries("r", "ns2")[0]?.logTail).toEqual(["ns2's failure"]);
    expect(reloaded.hosts("r").sort()).toEqual(["ns1", "ns2"]);
    expect(reloaded.hosts("other")).toEqual([]);
  });

  it("expects the median of the last five successful durations, and nothing without history", () => {
    const history = new BuildHistory({ size: 50, logger: memoryLogger().logger });
    expect(history.expectedMs("r", "ns1")).toBeNull();
    history.record("r", entry("ns1", 10_000));
    expect(history.expectedMs("r", "ns1")).toBe(10_000);
    history.record("r", entry("ns1", 20_000));
    expect(history.expectedMs("r", "ns1")).toBe(15_000);
    for (const ms of [1_000, 50_000, 30_000]) history.record("r", entry("ns1", ms));
    history.record("r", entry("ns1", 999_999, { status: "timeout" }));
    // Last five successes: 30, 50, 1, 20, 10 → median 20 (the timeout does not count).
    expect(history.expectedMs("r", "ns1")).toBe(20_000);
  });

  it("compares against the newest default-branch success, never a ref build or a failure", () => {
    const history = new BuildHistory({ size: 50, logger: memoryLogger().logger });
    history.record("r", entry("ns1", 1, { revision: "b".repeat(40) }));
    history.record("r", entry("ns1", 1, { ref: "flake-update", revision: "c".repeat(40) }));
    history.record("r", entry("ns1", 1, { status: "failure", storePath: undefined }));
    expect(history.lastDefaultSuccess("r", "ns1")?.revision).toBe("b".repeat(40));
  });

  it("starts fresh with one warning when the file is corrupt, and ignores names that are not names", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-history-"));
    await writeFile(join(dir, "history.json"), '{"version": 1, "repos": {"r": {"ns1": [{"host": 3}]}}}');
    const { logger, lines } = memoryLogger();
    const history = new BuildHistory({ stateDir: dir, size: 3, logger });
    await history.load();
    expect(lines.filter((l) => l.level === 40).map((l) => l.msg)).toEqual(["the build history file is unreadable; starting a fresh history"]);
    expect(history.entries("r")).toEqual([]);

    await writeFile(join(dir, "history.json"), JSON.stringify({ version: 1, repos: { __proto__x: {}, r: { "bad host!": [entry("x", 1)], ns1: [entry("ns1", 1)] } } }));
    await history.load();
    expect(history.entries("r").map((e) => e.host)).toEqual(["ns1"]);
  });
});
