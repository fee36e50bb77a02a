/**
 * Replacing a file so that a crash leaves either the old or the new one,
 * never half of one: temp file, fsync, rename, fsync of the directory.
 */
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { assertReplaceable } from "./regular-file.js";

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

/** Makes the rename itself durable: without it a power cut can bring the old file back. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
