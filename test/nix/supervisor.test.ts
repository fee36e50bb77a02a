/**
 * The supervisor with programs that are not nix (as the deploy listener
 * runs a system's switch-to-configuration): what it records in the
 * ledger, how it ends a tree, what it says when a program cannot start,
 * and the RSS it samples.
 */
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ProcessLedger } from "../../src/nix/process-ledger.js";
import { cannotRun, Supervisor } from "../../src/nix/supervisor.js";
import { memoryLogger } from "../support/logger.js";
import { isRunning } from "../support/processes.js";

async function withLedger() {
  const stateDir = await mkdtemp(join(tmpdir(), "hd-supervisor-"));
  const { logger } = memoryLogger();
  const ledger = new ProcessLedger(stateDir, logger, 500);
  const recorded = async () => (JSON.parse(await readFile(ledger.file, "utf8")) as { processes: Array<{ pid: number; cmdline: string[] }> }).processes;
  return { ledger, recorded, supervisor: new Supervisor({ killGraceMs: 500, ledger }) };
}

describe("Supervisor", () => {
  it("collects stdout and stderr lines, with the environment it was given, and forgets the process in the ledger once it exits", async () => {
    const { supervisor, recorded } = await withLedger();
    const lines: string[] = [];
    const result = await supervisor.run("/bin/sh", ["-c", 'echo "out $GREETING"; echo err1 >&2; echo err2 >&2; exit 3'], {
      timeoutMs: 60_000,
      env: { GREETING: "hello" },
      onStderrLine: (line) => lines.push(line),
    });
    expect(result).toMatchObject({ outcome: "exited", exitCode: 3, stdout: "out hello" });
    expect(lines).toEqual(["err1", "err2"]);
    expect(await recorded()).toEqual([]);
  });

  it("records a running process with its command line, unless told not to", async () => {
    const { supervisor, recorded } = await withLedger();
    const recordedOne = supervisor.start("/bin/sleep", ["300"], { timeoutMs: 60_000 });
    const unrecorded = supervisor.start("/bin/sleep", ["301"], { timeoutMs: 60_000, record: false });
    expect((await recorded()).map((p) => [p.pid, p.cmdline])).toEqual([[recordedOne.pid, ["/bin/sleep", "300"]]]);
    recordedOne.kill("cancelled");
    unrecorded.kill("cancelled");
    expect((await recordedOne.result).outcome).toBe("cancelled");
    expect((await unrecorded.result).outcome).toBe("cancelled");
  });

  it("ends the whole tree at the timeout, descendants in sessions of their own too", async () => {
    const { supervisor } = await withLedger();
    const dir = await mkdtemp(join(tmpdir(), "hd-supervisor-tree-"));
    const pidFile = join(dir, "grandchild.pid");
    const result = await supervisor.run("/bin/sh", ["-c", `setsid sh -c 'echo $$ > ${pidFile}; exec sleep 3600' & sleep 3600`], { timeoutMs: 700 });
    expect(result.outcome).toBe("timeout");
    expect(isRunning(Number(await readFile(pidFile, "utf8")))).toBe(false);
  });

  it("returns the owner's own reason for ending a process as its outcome", async () => {
    const { supervisor } = await withLedger();
    const process = supervisor.start<"replace">("/bin/sleep", ["300"], { timeoutMs: 60_000 });
    expect(process.pause()).toBe(true);
    process.kill("replace", 0);
    expect(process.endingFor).toBe("replace");
    expect(await process.result).toMatchObject({ outcome: "replace", exitCode: undefined });
  });

  it("says plainly when a program cannot be started", async () => {
    const { supervisor } = await withLedger();
    const result = await supervisor.run("/nonexistent/bin/switch-to-configuration", ["switch"], { timeoutMs: 60_000 });
    expect(result.outcome).toBe("spawn_failed");
    expect(cannotRun("/nonexistent/bin/switch-to-configuration", result)).toMatch(/^cannot run \/nonexistent\/bin\/switch-to-configuration: .*ENOENT/);
  });

  it("samples the tree's RSS while it runs, children included", async () => {
    const { supervisor } = await withLedger();
    const samples: number[] = [];
    // A child that holds about 64 MiB (a shell variable of that size) until it is ended.
    const process = supervisor.start("/bin/sh", ["-c", "sh -c 'x=$(head -c 67108864 /dev/zero | tr \"\\\\0\" x); echo ready; sleep 300' & wait"], {
      timeoutMs: 60_000,
      rssSampleMs: 50,
      onRss: (bytes) => {
        samples.push(bytes);
        if (bytes > 64 * 1024 ** 2) process.kill("cancelled");
      },
    });
    const result = await process.result;
    expect(result.outcome).toBe("cancelled");
    expect(result.peakRssBytes).toBeGreaterThan(64 * 1024 ** 2);
    expect(samples.at(-1)).toBeGreaterThan(64 * 1024 ** 2);
  });
});
