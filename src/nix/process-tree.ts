/**
 * What Linux's /proc says about a process, read in one place: its state,
 * parent and start time (/proc/<pid>/stat), its descendants, their RSS; and
 * ending a process and everything it started. nix puts each builder in a
 * session of its own (setsid), so signalling nix's process group is not
 * enough once nix itself is gone: the descendants are found through their
 * parent links *before* anything is signalled, and every one that survives
 * the grace period gets SIGKILL.
 */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";

export interface ProcStat {
  /** R, S, D, Z, T, … */
  state: string;
  ppid: number;
  /** Field 22: clock ticks since boot, kept as text (it is compared, never computed with). */
  startTime: string;
}

/** Parses /proc/<pid>/stat. The command name (field 2) may hold spaces and ")": the fields after the last ")" are fixed. */
export function parseStat(text: string): ProcStat | undefined {
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state): field n is rest[n - 3].
  const [state, ppid, startTime] = [rest[0], rest[1], rest[22 - 3]];
  if (!state || ppid === undefined || startTime === undefined) return undefined;
  return { state, ppid: Number(ppid), startTime };
}

/** Blocking, for the process ledger (its records must be on disk before the caller goes on). */
export function statSync(pid: number): ProcStat | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

async function stat(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseStat(await readFile(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

/** `root` and all its descendants that are alive now (Linux /proc). */
export async function processTree(root: number): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [root];
  }
  const children = new Map<number, number[]>();
  await Promise.all(
    entries
      .filter((name) => /^\d+$/.test(name))
      .map(async (name) => {
        const pid = Number(name);
        const ppid = (await stat(pid))?.ppid;
        if (ppid === undefined) return;
        const siblings = children.get(ppid) ?? [];
        siblings.push(pid);
        children.set(ppid, siblings);
      }),
  );
  const tree: number[] = [];
  const pending = [root];
  while (pending.length > 0) {
    const pid = pending.pop() as number;
    tree.push(pid);
    pending.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** RSS of `root` and its descendants, in bytes. */
export async function treeRssBytes(root: number): Promise<number> {
  let total = 0;
  for (const pid of await processTree(root)) {
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    total += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  }
  return total;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Sends `sig` (a negative pid: the process group); false when the process is gone. */
export function sendSignal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGTERM to the group and each descendant (nix then stops its builders
 * itself), SIGKILL to whatever is still alive after `graceMs`. Resolves when
 * `exited` resolves or the kill is sent, whichever is later.
 */
export async function killProcessTree(root: number, graceMs: number, exited: Promise<unknown>): Promise<void> {
  const tree = await processTree(root);
  sendSignal(-root, "SIGTERM");
  for (const pid of tree) sendSignal(pid, "SIGTERM");
  const timer = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), graceMs).unref());
  await Promise.race([exited.then(() => "exited" as const, () => "exited" as const), timer]);
  // Descendants may outlive nix (they are in sessions of their own), so
  // check every pid we saw, and anything they started meanwhile.
  const late = new Set<number>(tree);
  for (const pid of tree) if (isAlive(pid)) for (const child of await processTree(pid)) late.add(child);
  sendSignal(-root, "SIGKILL");
  for (const pid of late) if (isAlive(pid)) sendSignal(pid, "SIGKILL");
  await exited.catch(() => undefined);
}
