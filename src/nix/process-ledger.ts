/**
 * The nix process groups a builder has started, in <stateDir>/nix-processes.json,
 * so that a builder that was killed (OOM, crash, SIGKILL outside systemd)
 * leaves behind a list of what may still be running: the next start ends
 * those before it builds anything, and two builds never overlap.
 *
 * A pid alone could be anyone's by then (PID reuse), so each entry also
 * keeps the process's start time (field 22 of /proc/<pid>/stat, clock ticks
 * since boot), the boot it started in and its command line: only a process
 * matching all three is ended.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { Logger } from "../logger.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { parseJsonAs } from "../util/json.js";
import { isAlive, killProcessTree } from "./process-tree.js";

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
export async function processIdentity(pid: number): Promise<ProcessIdentity | undefined> {
  try {
    const [stat, cmdline] = await Promise.all([readFile(`/proc/${pid}/stat`, "utf8"), readFile(`/proc/${pid}/cmdline`)]);
    // Fields after the command name (which may hold spaces and ")"): state is field 3, starttime field 22.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const startTime = rest[22 - 3];
    if (startTime === undefined) return undefined;
    const args = cmdline.toString("utf8").split("\0");
    if (args.at(-1) === "") args.pop();
    return { startTime, cmdline: args };
  } catch {
    return undefined;
  }
}

async function bootId(): Promise<string> {
  return (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "unknown")).trim();
}

async function untilGone(pid: number): Promise<void> {
  while (isAlive(pid)) await new Promise((resolve) => setTimeout(resolve, 50));
}

export class ProcessLedger {
  readonly file: string;
  private readonly entries = new Map<number, Entry>();
  private writing: Promise<void> = Promise.resolve();
  private boot: Promise<string> | undefined;

  constructor(
    stateDir: string,
    private readonly logger: Logger,
    private readonly killGraceMs: number,
  ) {
    this.file = join(stateDir, "nix-processes.json");
  }

  /**
   * Ends every recorded process of an earlier run that is still alive and
   * still the same process; then forgets them. Call before any build starts.
   */
  async reapLeftovers(): Promise<number> {
    const text = await readFile(this.file, "utf8").catch(() => undefined);
    const saved = text === undefined ? undefined : parseJsonAs(text, LedgerSchema);
    let ended = 0;
    const boot = await this.bootId();
    for (const entry of saved?.processes ?? []) {
      if (entry.bootId !== boot) continue;
      const now = await processIdentity(entry.pid);
      if (!now) continue;
      if (now.startTime !== entry.startTime || now.cmdline.join("\0") !== entry.cmdline.join("\0")) {
        this.logger.info({ pid: entry.pid }, "a recorded nix pid now belongs to another process; leaving it alone");
        continue;
      }
      this.logger.warn({ pid: entry.pid, cmdline: entry.cmdline }, "ending a nix process left running by a builder that was killed");
      await killProcessTree(entry.pid, this.killGraceMs, untilGone(entry.pid));
      ended++;
    }
    await this.persist();
    return ended;
  }

  /** Records a nix process group just started (its leader's pid). */
  async started(pid: number): Promise<void> {
    const identity = await processIdentity(pid);
    if (!identity) return;
    this.entries.set(pid, { pid, ...identity, bootId: await this.bootId() });
    await this.persist();
  }

  async exited(pid: number): Promise<void> {
    if (!this.entries.delete(pid)) return;
    await this.persist();
  }

  private bootId(): Promise<string> {
    this.boot ??= bootId();
    return this.boot;
  }

  private persist(): Promise<void> {
    const next = this.writing.then(() =>
      writeFileAtomic(this.file, `${JSON.stringify({ version: 1, processes: [...this.entries.values()] })}\n`, 0o600),
    );
    this.writing = next.catch((err: unknown) => this.logger.warn({ err, file: this.file }, "cannot record the running nix processes"));
    return this.writing;
  }
}
