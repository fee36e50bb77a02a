/**
 * One state file of a daemon, the whole mechanism: read at start-up
 * (never blocking on a FIFO, checked against its schema: readStateFile),
 * then saved after every change by one coalescing writer (SaveLoop: a burst
 * of changes is one write, a write always takes the state as it is when it
 * starts), each write atomic and durable (atomic-file.ts).
 *
 * Two ways to write: "async" (default) for files written behind the work
 * (history, GC roots, metrics state): nobody waits for them; "thread" for
 * files a request waits for (the builder's job queue: a request is
 * acknowledged once its job is on disk), written on a thread of their own
 * so that neither the event loop nor the request waits behind the other.
 */
import type { z } from "zod";
import { errorMessage } from "../errors.js";
import { writeFileAtomic, writeFileAtomicOffThread } from "./atomic-file.js";
import { readStateFile, type StateFileRead } from "./regular-file.js";
import { SaveLoop } from "./save-loop.js";

export interface StateFileOptions<T> {
  file: string;
  schema: z.ZodType<T>;
  /** The state to write, as it is now: called when a write starts (async for state that must be gathered, like a metrics registry's). */
  snapshot: () => T | Promise<T>;
  /** Default 0o640; 0o600 for files that name requesters. */
  mode?: number;
  writer?: "async" | "thread";
  /** Told after every write: undefined when it worked, else why it failed (for /readyz and metrics). */
  onSaved?: (error: string | undefined) => void;
}

export class StateFile<T> {
  readonly file: string;
  private readonly loop: SaveLoop;

  constructor(private readonly options: StateFileOptions<T>) {
    this.file = options.file;
    this.loop = new SaveLoop(() => this.write());
  }

  /** What is on disk; each caller decides what a missing, unreadable or corrupt file means. */
  read(): Promise<StateFileRead<T>> {
    return readStateFile(this.file, this.options.schema);
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
      await (this.options.writer === "thread" ? writeFileAtomicOffThread(this.file, body, mode) : writeFileAtomic(this.file, body, mode));
    } catch (err) {
      this.options.onSaved?.(errorMessage(err));
      throw err;
    }
    this.options.onSaved?.(undefined);
  }
}
