import { execFileSync, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ProcessLedger, processIdentity } from "../../src/nix/process-ledger.js";
import { memoryLogger } from "../support/logger.js";
import { isRunning, processesMatching } from "../support/processes.js";

const started: number[] = [];
afterEach(() => {
  for (const pid of started.splice(0)) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

/** A process group of its own, as the runner starts nix: a shell with a child. */
function leftover(seconds = 300): number {
  const child = spawn("/bin/sh", ["-c", `/bin/sleep ${seconds} & wait`], { detached: true, stdio: "ignore" });
  child.unref();
  started.push(child.pid as number);
  return child.pid as number;
}

async function ledgers() {
  const stateDir = await mkdtemp(join(tmpdir(), "hd-ledger-"));
  const { logger, lines } = memoryLogger();
  return { stateDir, lines, open: () => new ProcessLedger(stateDir, logger, 500) };
}

describe("ProcessLedger", () => {
  it("reads no FIFO at its path (that would block start-up): nothing to end", async () => {
    const { open, stateDir } = await ledgers();
    execFileSync("mkfifo", [join(stateDir, "nix-processes.json")]);
    expect(await open().reapLeftovers()).toBe(0);
  });

  it("does not replace a FIFO at its path, says so once however many processes start, and records again once it is gone", async () => {
    const { open, lines, stateDir } = await ledgers();
    const file = join(stateDir, "nix-processes.json");
    execFileSync("mkfifo", [file]);
    const ledger = open();
    for (let i = 0; i < 3; i++) ledger.started(leftover());
    const failures = lines.filter((l) => l["file"] === file && l.level === 40);
    expect(failures).toEqual([expect.objectContaining({ err: expect.objectContaining({ message: expect.stringContaining("nix-processes.json is a FIFO") }) })]);
    await rm(file);
    const pid = leftover();
    ledger.started(pid);
    expect(lines.map((l) => l.msg)).toContain("recording the running nix processes again");
    expect(JSON.parse(await readFile(file, "utf8")).processes.map((p: { pid: number }) => p.pid)).toContain(pid);
  });

  it("ends what a killed builder left running, tree and all, and forgets it", async () => {
    const { open, lines, stateDir } = await ledgers();
    const seconds = 300 + Math.floor(Math.random() * 10_000);
    const pid = leftover(seconds);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await processesMatching(`sleep\u0000${seconds}`)).toHaveLength(1);
    open().started(pid);
    // The next start of the builder:
    expect(await open().reapLeftovers()).toBe(1);
    expect(isRunning(pid)).toBe(false);
    expect(await processesMatching(`sleep\u0000${seconds}`)).toEqual([]);
    expect(lines).toContainEqual(expect.objectContaining({ msg: "ending a nix process left running by a builder that was killed", pid }));
    expect(JSON.parse(await readFile(join(stateDir, "nix-processes.json"), "utf8"))).toEqual({ version: 1, processes: [] });
  });

  it("leaves a process alone whose pid was reused (another start time)", async () => {
    const { open, stateDir, lines } = await ledgers();
    const pid = leftover();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const identity = processIdentity(pid);
    expect(identity).toBeDefined();
    const ledger = open();
    ledger.started(pid);
    const saved = JSON.parse(await readFile(ledger.file, "utf8"));
    saved.processes[0].startTime = String(Number(identity!.startTime) - 1);
    await writeFile(join(stateDir, "nix-processes.json"), JSON.stringify(saved));
    expect(await open().reapLeftovers()).toBe(0);
    expect(isRunning(pid)).toBe(true);
    expect(lines).toContainEqual(expect.objectContaining({ msg: "a recorded nix pid now belongs to another process; leaving it alone", pid }));
  });

  it("forgets a process that exited normally", async () => {
    const { open } = await ledgers();
    const pid = leftover();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const ledger = open();
    ledger.started(pid);
    ledger.exited(pid);
    expect(await open().reapLeftovers()).toBe(0);
    expect(isRunning(pid)).toBe(true);
  });
});
