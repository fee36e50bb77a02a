/**
 * A state file that a request waits for, written in place so that a save
 * costs the disk one data flush. Replacing a file (temp file, fsync,
 * rename, fsync of the directory) commits the filesystem's journal twice;
 * on the development VM that is 1.2–1.4 ms at p50 and 3–6 ms at p99, where
 * overwriting blocks a file already has plus fdatasync is 0.3 / 0.8 ms
 * (docs/performance.md, "Accept latency").
 *
 * The file is two slots of the same size, written in turn. Each slot is a
 * header line and the text:
 *
 *     homelab-deploy state slot 1 seq=42 bytes=1234 sha256=<64 hex>\n<text>
 *
 * A write overwrites the slot that does not hold the newest copy, then
 * fdatasyncs; nothing about the file changes but its data (its blocks were
 * written when it was made, so none is allocated). A crash in the middle
 * tears only that slot: its checksum no longer matches and a read takes the
 * other one, the state as it was before the write began — which, for the
 * job queue, is before the request that caused it was acknowledged.
 *
 * A text that outgrows its slot, a missing file, or one that is not the
 * file this process laid out (replaced, truncated) is written as a fresh
 * file the slow way, once (atomic-file.ts), with slots twice the size
 * needed. A file that starts with `{` is plain JSON (written before slots,
 * or by hand): read as it is, and replaced by slots at the first write.
 *
 * The write itself (pwrite into the page cache) runs on the event loop; the
 * fdatasync runs in libuv's pool, so the event loop never waits for the disk.
 */
import { createHash } from "node:crypto";
import { closeSync, constants, fdatasync, fstatSync, openSync, writeSync } from "node:fs";
import { promisify } from "node:util";
import { writeFileAtomic } from "./atomic-file.js";
import { readRegularFileBytes } from "./regular-file.js";

const fdatasyncAsync = promisify(fdatasync);

/** What starts every slot: names the file's kind and the format's version for whoever opens it. */
const MAGIC = "homelab-deploy state slot 1";
const HEADER = new RegExp(`^${MAGIC} seq=(\\d{1,15}) bytes=(\\d{1,12}) sha256=([0-9a-f]{64})\n`);
/** Longer than any header HEADER accepts: where a read stops looking for its end. */
const HEADER_MAX = 160;
/** The smallest slot made: room for a queue of a few dozen jobs without growing. */
const MIN_SLOT_BYTES = 64 * 1024;

export type SlotFileRead =
  | { status: "missing" }
  /** Not a regular file (StateFileError) or not readable. */
  | { status: "unreadable"; error: unknown }
  /** Neither slot is intact (and it is not plain JSON either); `problem` says what each slot holds. */
  | { status: "corrupt"; problem: string }
  | { status: "loaded"; text: string };

/** Where the next write goes: known from the last read or write of this file by this process. */
export interface SlotLayout {
  slotBytes: number;
  newest: 0 | 1;
  seq: number;
}

type Slot = { ok: true; seq: number; text: string } | { ok: false; problem: string };

export class SlotFile {
  private layout: SlotLayout | undefined;

  constructor(
    readonly file: string,
    private readonly mode = 0o600,
  ) {}

  /** The newest intact copy. Never blocks on a FIFO (readRegularFileBytes). */
  async read(): Promise<SlotFileRead> {
    this.layout = undefined;
    let data: Buffer;
    try {
      data = await readRegularFileBytes(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { status: "missing" };
      return { status: "unreadable", error: err };
    }
    const decoded = decodeSlotFile(data);
    if (decoded.status === "loaded") this.layout = decoded.layout;
    return decoded.status === "loaded" ? { status: "loaded", text: decoded.text } : decoded;
  }

  /** Writes `text` durably: resolves once it is on disk. One write at a time (the caller's SaveLoop). */
  async write(text: string): Promise<void> {
    const seq = (this.layout?.seq ?? 0) + 1;
    const record = encodeSlot(seq, text);
    const layout = this.layout;
    if (layout && record.length <= layout.slotBytes) {
      const slot = layout.newest === 0 ? 1 : 0;
      if (await this.writeInPlace(record, slot * layout.slotBytes, 2 * layout.slotBytes)) {
        this.layout = { ...layout, newest: slot, seq };
        return;
      }
    }
    // Every byte written, the second slot as zeros: in-place writes never allocate.
    let slotBytes = MIN_SLOT_BYTES;
    while (slotBytes < 2 * record.length) slotBytes *= 2;
    const body = Buffer.alloc(2 * slotBytes);
    record.copy(body, 0);
    await writeFileAtomic(this.file, body, this.mode);
    this.layout = { slotBytes, newest: 0, seq };
  }

  /**
   * False when the file is not the one laid out (gone, replaced by
   * something else, another size): the caller makes a fresh one, and
   * writeFileAtomic refuses a FIFO, directory or symlink there with the
   * usual StateFileError.
   */
  private async writeInPlace(record: Buffer, offset: number, fileBytes: number): Promise<boolean> {
    let fd: number;
    try {
      fd = openSync(this.file, constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ELOOP" || code === "EISDIR" || code === "ENXIO") return false;
      throw err;
    }
    try {
      const stats = fstatSync(fd);
      if (!stats.isFile() || stats.size !== fileBytes) return false;
      for (let written = 0; written < record.length; ) {
        written += writeSync(fd, record, written, record.length - written, offset + written);
      }
      await fdatasyncAsync(fd);
      return true;
    } finally {
      closeSync(fd);
    }
  }
}

/** A slot file's bytes (or a plain JSON file's): its newest intact text, and where the next write goes. */
export function decodeSlotFile(data: Buffer): { status: "loaded"; text: string; layout?: SlotLayout } | { status: "corrupt"; problem: string } {
  // Plain JSON: written before slots, or by hand. The first write replaces it.
  if (data[0] === 0x7b) return { status: "loaded", text: data.toString("utf8") };
  if (data.length === 0 || data.length % 2 !== 0) {
    return { status: "corrupt", problem: `${data.length} bytes: neither plain JSON nor two slots of one size` };
  }
  const slotBytes = data.length / 2;
  const slots = [decodeSlot(data.subarray(0, slotBytes)), decodeSlot(data.subarray(slotBytes))] as const;
  const newest = newestOf(slots);
  if (newest === undefined) {
    const why = slots.map((slot, i) => `copy ${i + 1}: ${slot.ok ? "intact" : slot.problem}`).join("; ");
    return { status: "corrupt", problem: `no intact copy (${why})` };
  }
  const slot = slots[newest] as Extract<Slot, { ok: true }>;
  return { status: "loaded", text: slot.text, layout: { slotBytes, newest, seq: slot.seq } };
}

function encodeSlot(seq: number, text: string): Buffer {
  const body = Buffer.from(text, "utf8");
  const sha = createHash("sha256").update(body).digest("hex");
  return Buffer.concat([Buffer.from(`${MAGIC} seq=${seq} bytes=${body.length} sha256=${sha}\n`, "latin1"), body]);
}

function decodeSlot(slot: Buffer): Slot {
  if (slot.subarray(0, HEADER_MAX).every((byte) => byte === 0)) return { ok: false, problem: "empty" };
  const header = HEADER.exec(slot.subarray(0, HEADER_MAX).toString("latin1"));
  if (!header) return { ok: false, problem: "no header" };
  const [line, seq, bytes, sha] = header as unknown as [string, string, string, string];
  const start = line.length;
  const end = start + Number(bytes);
  if (end > slot.length) return { ok: false, problem: `says ${bytes} bytes, past its end` };
  const body = slot.subarray(start, end);
  if (createHash("sha256").update(body).digest("hex") !== sha) return { ok: false, problem: "checksum mismatch (a torn write)" };
  return { ok: true, seq: Number(seq), text: body.toString("utf8") };
}

function newestOf(slots: readonly [Slot, Slot]): 0 | 1 | undefined {
  const [a, b] = slots;
  if (a.ok && b.ok) return b.seq > a.seq ? 1 : 0;
  if (a.ok) return 0;
  if (b.ok) return 1;
  return undefined;
}
