/**
 * One state file of a daemon, the whole mechanism: read at start-up
 * (never blocking on a FIFO, checked against its schema: readStateFile),
 * then saved after every change by one coalescing writer (SaveLoop: a burst
 * of changes is one write, a write always takes the state as it is when it
 * starts), each write atomic and durable.
 *
 * Two ways to write: "async" (default) for files written behind the work
 * (history, GC roots, metrics state): nobody waits for them, and each write
 * replaces the file (atomic-file.ts); "in-place" for files a request waits
 * for (the builder's job queue: a request is acknowledged once its job is
 * on disk): two slots overwritten in turn (slot-file.ts), one data flush
 * per write, the fdatasync off the event loop.
 */
import type { z } from "zod";
import { errorMessage } from "../errors.js";
import { writeFileAtomic } from "./atomic-file.js";
import { readStateFile, stateFileText, type StateFileRead } from "./regular-file.js";
import { SaveLoop } from "./save-loop.js";
import { SlotFile } from "./slot-file.js";

export interface StateFileOptions<T> {
  file: string;
  schema: z.ZodType<T>;
  /** The state to write, as it is now: called when a write starts (async for state that must be gathered, like a metrics registry's). */
  snapshot: () => T | Promise<T>;
  /** Default 0o640; 0o600 for files that name requesters. */
  mode?: number;
  writer?: "async" | "in-place";
  /** Told after every write: undefined when it worked, else why it failed (for /readyz and metrics). */
  onSaved?: (error: string | undefined) => void;
}

export class StateFile<T> {
  readonly file: string;
  private readonly loop: SaveLoop;
  private readonly slots: SlotFile | undefined;

  constructor(private readonly options: StateFileOptions<T>) {
    this.file = options.file;
    this.loop = new SaveLoop(() => this.write());
    if (options.writer === "in-place") this.slots = new SlotFile(options.file, options.mode ?? 0o640);
  }

  /** What is on disk; each caller decides what a missing, unreadable or corrupt file means. */
  async read(): Promise<StateFileRead<T>> {
    if (!this.slots) return readStateFile(this.file, this.options.schema);
    const read = await this.slots.read();
    return read.status === "loaded" ? stateFileText(read.text, this.options.schema) : read;
  }

  /**
   * Saves the state soon. Resolves once a write that took its snapshot
   * after this call is on disk; rejects if that write failed. Writes behind
   * the work may ignore the promise (never unhandled): report failures from
   * `.catch` or from the caller's own health record.
   */
  save(): Promise<void> {
    return this.loop.request();
  }

  /** Resolves once every save requested so far is done (or failed). */
  flush(): Promise<void> {
    return this.loop.flush();
  }

  private async write(): Promise<void> {
    const mode = this.options.mode ?? 0o640;
    try {
      const body = `${JSON.stringify(await this.options.snapshot())}\n`;
      await (this.slots ? this.slots.write(body) : writeFileAtomic(this.file, body, mode));
    } catch (err) {
      this.options.onSaved?.(errorMessage(err));
      throw err;
    }
    this.options.onSaved?.(undefined);
  }
}
