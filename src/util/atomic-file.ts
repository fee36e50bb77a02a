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
import { Worker } from "node:worker_threads";
import { StateFileError } from "../errors.js";
import type { WriteAnswer, WriteRequest } from "./atomic-file-worker.js";
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

/**
 * writeFileAtomicSync on a thread of its own: durable like it, without
 * blocking the event loop, and with a single wake-up of the event loop when
 * it is done. For writes a request waits for on a busy daemon: the async
 * version's dozen steps through libuv's pool each wait their turn behind
 * whatever keeps the event loop busy (a build's log flood), the blocking one
 * holds every other request for the disk's fsyncs (docs/performance.md,
 * "Accept latency"). One thread for the process, started at the first write
 * and kept (unref'd while idle); writes run one after another.
 */
export function writeFileAtomicOffThread(file: string, body: string, mode = 0o640): Promise<void> {
  return writerThread.write(file, body, mode);
}

class WriterThread {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  private nextId = 1;

  write(file: string, body: string, mode: number): Promise<void> {
    const worker = (this.worker ??= this.start());
    const id = this.nextId++;
    const request: WriteRequest = { id, file, body, mode };
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Held while a write is pending: the process must not end under it.
      if (this.pending.size === 1) worker.ref();
      worker.postMessage(request);
    });
  }

  private start(): Worker {
    // Built: the .js beside this file. Under the TypeScript sources (the
    // unit tests), the .ts one, loaded through tsx (a dev dependency).
    const ext = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
    const module = new URL(`./atomic-file-worker${ext}`, import.meta.url).href;
    const boot = `const { workerData } = require("node:worker_threads");
(async () => {
  if (workerData.module.endsWith(".ts")) (await import("tsx/esm/api")).register();
  await import(workerData.module);
})();`;
    const worker = new Worker(boot, { eval: true, workerData: { module } });
    worker.unref();
    worker.on("message", (answer: WriteAnswer) => this.settle(answer));
    const lost = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const { reject } of this.pending.values()) reject(err);
      this.pending.clear();
    };
    worker.on("error", lost);
    worker.on("exit", (code) => lost(new Error(`the state file writer thread exited (${code})`)));
    return worker;
  }

  private settle(answer: WriteAnswer): void {
    const waiter = this.pending.get(answer.id);
    if (!waiter) return;
    this.pending.delete(answer.id);
    if (this.pending.size === 0) this.worker?.unref();
    if (!answer.error) return waiter.resolve();
    const { name, message, code } = answer.error;
    const err: NodeJS.ErrnoException = name === "StateFileError" ? new StateFileError(message) : new Error(message);
    if (code) err.code = code;
    waiter.reject(err);
  }
}

const writerThread = new WriterThread();
