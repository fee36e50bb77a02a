/** What is running on this machine, read straight from /proc (no ps needed). */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";

export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers kill(0); it has exited all the same.
  return !/\) Z /.test(readStat(pid));
}

function readStat(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return "";
  }
}

/** Pids of live processes whose command line contains `needle`. */
export async function processesMatching(needle: string): Promise<Array<{ pid: number; cmdline: string }>> {
  const found: Array<{ pid: number; cmdline: string }> = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(needle) && isRunning(Number(name))) found.push({ pid: Number(name), cmdline: cmdline.replaceAll("\0", " ") });
  }
  return found;
}
