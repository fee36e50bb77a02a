/**
 * Ending a nix process and everything it started. nix puts each builder in
 * a session of its own (setsid), so signalling nix's process group is not
 * enough once nix itself is gone: the descendants are found through
 * /proc/<pid>/stat parent links *before* anything is signalled, and every
 * one that survives the grace period gets SIGKILL.
 */
import { readdir, readFile } from "node:fs/promises";

async function parentOf(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // The command name (2nd field) may contain spaces and parentheses;
    // the fields after the last ")" are fixed: state, ppid, ...
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(rest[1]);
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
        const ppid = await parentOf(pid);
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

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone: nothing to do.
  }
}

/**
 * SIGTERM to the group and each descendant (nix then stops its builders
 * itself), SIGKILL to whatever is still alive after `graceMs`. Resolves when
 * `exited` resolves or the kill is sent, whichever is later.
 */
export async function killProcessTree(root: number, graceMs: number, exited: Promise<unknown>): Promise<void> {
  const tree = await processTree(root);
  signal(-root, "SIGTERM");
  for (const pid of tree) signal(pid, "SIGTERM");
  const timer = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), graceMs).unref());
  await Promise.race([exited.then(() => "exited" as const, () => "exited" as const), timer]);
  // Descendants may outlive nix (they are in sessions of their own), so
  // check every pid we saw, and anything they started meanwhile.
  const late = new Set<number>(tree);
  for (const pid of tree) if (isAlive(pid)) for (const child of await processTree(pid)) late.add(child);
  signal(-root, "SIGKILL");
  for (const pid of late) if (isAlive(pid)) signal(pid, "SIGKILL");
  await exited.catch(() => undefined);
}
