/**
 * Replacing a file so that a crash leaves either the old or the new one,
 * never half of one: temp file, fsync, rename, fsync of the directory.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { assertReplaceable, assertReplaceableSync } from "./regular-file.js";

export async function writeFileAtomic(file: string, body: string, mode = 0o640): Promise<void> {
  const dir = dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o750 });
  await assertReplaceable(file);
  const temp = `${file}.${process.pid}.tmp`;
  try {
    // "wx" on a fresh name: never opens (and blocks on) a FIFO left at the temp path.
    await unlink(temp).catch(() => undefined);
    const handle = await open(temp, "wx", mode);
    try {
      await handle.writeFile(body, "utf8");
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
 * before the next line of code runs (a crash may come at any moment), and
 * for writes a request waits for: done in one go, they cost the event loop
 * a millisecond or two once, where each of the dozen steps of the async
 * version waits its turn on a busy event loop (measured in
 * docs/performance.md, "Accept latency"). `durable: false` skips the
 * fsyncs, for records that only need to survive the process (a power cut
 * would end what they describe anyway).
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
