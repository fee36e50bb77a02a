/**
 * Replacing a file so that a crash leaves either the old or the new one,
 * never half of one: temp file, fsync, rename, fsync of the directory.
 *
 * Written by hand rather than with the `write-file-atomic` package (item 8
 * of issue 20 weighed it): it opens its temp file with "w", not "wx", so
 * something left at that name (a FIFO: blocks forever) is opened rather
 * than refused; it resolves the target with realpath, so it writes through
 * a symlink planted at a state file's path; it does not refuse to replace
 * a FIFO or directory there (assertReplaceable: whatever put it there wants
 * an operator to look); and it fsyncs the file but not the directory, so
 * a power cut can bring the old file back. What it adds (chown, a queue
 * per file name) is not needed: each state file has one writer (SaveLoop).
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { assertReplaceable, assertReplaceableSync } from "./regular-file.js";

export async function writeFileAtomic(file: string, body: string | Uint8Array, mode = 0o640): Promise<void> {
  const dir = dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o750 });
  await assertReplaceable(file);
  const temp = `${file}.${process.pid}.tmp`;
  try {
    // "wx" on a fresh name: never opens (and blocks on) a FIFO left at the temp path.
    await unlink(temp).catch(() => undefined);
    const handle = await open(temp, "wx", mode);
    try {
      await handle.writeFile(body);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, file);
  } catch (err) {
    // A full disk must not also leave a stray temp file behind.
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  await syncDirectory(dir);
}

/**
 * The same, blocking: for the few small records that must be written
 * before the next line of code runs (a crash may come at any moment).
 * `durable: false` skips the fsyncs, for records that only need to survive
 * the process (a power cut would end what they describe anyway). Writes a
 * request waits for go in place instead (slot-file.ts).
 */
export function writeFileAtomicSync(file: string, body: string, mode = 0o640, { durable = true } = {}): void {
  const dir = dirname(file);
  mkdirSync(dir, { recursive: true, mode: 0o750 });
  assertReplaceableSync(file);
  const temp = `${file}.${process.pid}.tmp`;
  try {
    // "wx" on a fresh name: never opens (and blocks the whole process on) a FIFO left at the temp path.
    try {
      unlinkSync(temp);
    } catch {
      // Nothing there: the usual case.
    }
    const fd = openSync(temp, "wx", mode);
    try {
      // write(2) may write less than asked (a disk filling up): a short file must never be renamed in.
      const bytes = Buffer.from(body, "utf8");
      for (let written = 0; written < bytes.length; ) written += writeSync(fd, bytes, written, bytes.length - written);
      if (durable) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, file);
  } catch (err) {
    try {
      unlinkSync(temp);
    } catch {
      // Nothing to clean up.
    }
    throw err;
  }
  if (!durable) return;
  const handle = openSync(dir, "r");
  try {
    fsyncSync(handle);
  } finally {
    closeSync(handle);
  }
}

/** Makes the rename itself durable: without it a power cut can bring the old file back. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
