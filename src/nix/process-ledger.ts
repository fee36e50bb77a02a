/**
 * The process groups a daemon has started through the supervisor
 * (supervisor.ts), in <stateDir>/nix-processes.json, so that a daemon that
 * was killed (OOM, crash, SIGKILL outside systemd)
 * leaves behind a list of what may still be running: the next start ends
 * those before it builds anything, and two builds never overlap.
 *
 * A pid alone could be anyone's by then (PID reuse), so each entry also
 * keeps the process's start time (field 22 of /proc/<pid>/stat, clock ticks
 * since boot), the boot it started in and its command line: only a process
 * matching all three is ended.
 */
import { STATE_FILES } from "../state-files.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import type { Logger } from "../logger.js";
import { writeFileAtomicSync } from "../util/atomic-file.js";
import { readStateFile } from "../util/regular-file.js";
import { isAlive, killProcessTree, statSync } from "./process-tree.js";

const EntrySchema = z.object({
  pid: z.number().int().positive(),
  startTime: z.string(),
  bootId: z.string(),
  cmdline: z.array(z.string()),
});
type Entry = z.infer<typeof EntrySchema>;
const LedgerSchema = z.object({ version: z.literal(1), processes: z.array(EntrySchema) });

export interface ProcessIdentity {
  startTime: string;
  cmdline: string[];
}

/** Start time and command line of a live process, or undefined if it is gone. */
export function processIdentity(pid: number): ProcessIdentity | undefined {
  const stat = statSync(pid);
  if (!stat) return undefined;
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`).toString("utf8").split("\0");
    if (args.at(-1) === "") args.pop();
    return { startTime: stat.startTime, cmdline: args };
  } catch {
    return undefined;
  }
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

/** Gone, or a zombie (not our child: whoever adopted it reaps it, perhaps never in a container). */
function gone(pid: number): boolean {
  if (!isAlive(pid)) return true;
  const state = statSync(pid)?.state;
  return state === undefined || state === "Z";
}

async function untilGone(pid: number, withinMs: number): Promise<void> {
  for (const until = Date.now() + withinMs; !gone(pid) && Date.now() < until; ) await new Promise((resolve) => setTimeout(resolve, 50));
}

export class ProcessLedger {
  readonly file: string;
  private readonly entries = new Map<number, Entry>();
  private boot: string | undefined;
  private failing = false;

  constructor(
    stateDir: string,
    private readonly logger: Logger,
    private readonly killGraceMs: number,
  ) {
    this.file = join(stateDir, STATE_FILES.nixProcesses);
  }

  /**
   * Ends every recorded process of an earlier run that is still alive and
   * still the same process; then forgets them. Call before any build starts.
   */
  async reapLeftovers(): Promise<number> {
    const read = await readStateFile(this.file, LedgerSchema);
    const saved = read.status === "loaded" ? read.value : undefined;
    let ended = 0;
    if (!saved || saved.processes.length === 0) return ended;
    const boot = this.bootId();
    for (const entry of saved?.processes ?? []) {
      if (entry.bootId !== boot) continue;
      const now = processIdentity(entry.pid);
      if (!now) continue;
      if (now.startTime !== entry.startTime || now.cmdline.join("\0") !== entry.cmdline.join("\0")) {
        this.logger.info({ pid: entry.pid }, "a recorded nix pid now belongs to another process; leaving it alone");
        continue;
      }
      this.logger.warn({ pid: entry.pid, cmdline: entry.cmdline }, "ending a nix process left running by a builder that was killed");
      await killProcessTree(entry.pid, this.killGraceMs, untilGone(entry.pid, this.killGraceMs + 5_000));
      ended++;
    }
    this.persist();
    return ended;
  }

  /**
   * Records a nix process group just started (its leader's pid). Blocking,
   * on purpose: a builder killed a moment later must already have it on disk.
   */
  started(pid: number): void {
    const identity = processIdentity(pid);
    if (!identity) return;
    this.entries.set(pid, { pid, ...identity, bootId: this.bootId() });
    this.persist();
  }

  exited(pid: number): void {
    if (this.entries.delete(pid)) this.persist();
  }

  private body(): string {
    return `${JSON.stringify({ version: 1, processes: [...this.entries.values()] })}\n`;
  }

  private bootId(): string {
    this.boot ??= bootId();
    return this.boot;
  }

  /**
   * Blocking, like every write here: the records never race each other.
   * Not fsynced: the record has to outlive the builder process, not the
   * machine (a power cut ends the nix processes too), and a build start
   * should not wait for the disk.
   */
  private persist(): void {
    try {
      writeFileAtomicSync(this.file, this.body(), 0o600, { durable: false });
      if (this.failing) this.logger.info({ file: this.file }, "recording the running nix processes again");
      this.failing = false;
    } catch (err) {
      // Once, not at every nix process: the cause stays until someone fixes it.
      if (!this.failing) this.logger.warn({ err, file: this.file }, "cannot record the running nix processes; a crash now would leave them running");
      this.failing = true;
    }
  }
}
