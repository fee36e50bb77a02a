/**
 * A requester's view of a job's `seq` numbers. After a NATS outage the
 * builder resends its numbered messages, and they may arrive after later
 * ones that went out live: a number seen before is a duplicate to drop, a
 * message after a gap is held until the gap fills, so everything is handed
 * on once and in order. If the gap does not fill (the caller's timer), the
 * held messages go on in order and the missing numbers are reported.
 *
 * Snapshots (progress, heartbeat, evaluating: the protocol's `Numbering`,
 * the same the daemon's responder numbers by) repeat the job's last number: they are never held
 * (a newer snapshot replaces a lost one) and one older than what is known
 * is dropped, but they reveal a gap. `resumed` begins a new run of the
 * builder: what the old one sent and never saved cannot come any more, so
 * counting starts over from it.
 */
import { BUILD_NUMBERING, type Numbering } from "../protocol.js";

interface Numbered {
  type: string;
  seq?: number | undefined;
}

function seqOf(message: unknown): number | undefined {
  const seq = (message as Numbered).seq;
  return typeof seq === "number" ? seq : undefined;
}

export class SeqOrder<T> {
  /** The number the next message handed on must have. */
  private next: number | undefined;
  private highest = 0;
  private readonly held = new Map<number, T>();
  private readonly delivered = new Set<number>();
  private resumedAt: number | undefined;

  constructor(private readonly numbering: Numbering = BUILD_NUMBERING) {}

  /** The messages to hand on now, in order (none: a duplicate, stale, or held). */
  push(message: T): T[] {
    const seq = seqOf(message);
    if (seq === undefined) return [message];
    const type = (message as Numbered).type;
    if (type === "resumed") {
      // A resend of the resumed that started this run is a duplicate like any other.
      if (seq === this.resumedAt) return [];
      const before = this.flush().messages;
      this.reset(seq);
      this.held.set(seq, message);
      return [...before, ...this.drain()];
    }
    // A joiner's `accepted` repeats the job's last number: what it missed came before it.
    if (type === "accepted" && (message as { joined?: boolean }).joined === true && this.next === undefined) {
      this.highest = seq;
      this.next = seq + 1;
      return [message];
    }
    if (this.numbering.snapshots.has(type)) {
      if (seq < this.highest) return [];
      this.highest = seq;
      this.next ??= seq + 1;
      return this.held.size > 0 ? [] : [message];
    }
    if (this.delivered.has(seq) || this.held.has(seq)) return [];
    this.highest = Math.max(this.highest, seq);
    this.next ??= seq;
    if (seq < this.next) {
      // Arrived after its gap was given up on: late, but not lost.
      this.delivered.add(seq);
      return [message];
    }
    this.held.set(seq, message);
    return this.drain();
  }

  /** Some number up to the highest known has not arrived. */
  get waiting(): boolean {
    return this.next !== undefined && this.highest >= this.next;
  }

  /** Gives up waiting: the held messages in order, and the numbers that never came. */
  flush(): { messages: T[]; missing: number[] } {
    const messages: T[] = [];
    const missing: number[] = [];
    if (this.next === undefined) return { messages, missing };
    for (let seq = this.next; seq <= this.highest; seq++) {
      const message = this.held.get(seq);
      if (message) {
        messages.push(message);
        this.delivered.add(seq);
      } else missing.push(seq);
    }
    this.held.clear();
    this.next = Math.max(this.next, this.highest + 1);
    return { messages, missing };
  }

  private drain(): T[] {
    const out: T[] = [];
    for (let message = this.held.get(this.next as number); message; message = this.held.get(this.next as number)) {
      out.push(message);
      this.held.delete(this.next as number);
      this.delivered.add(this.next as number);
      this.next = (this.next as number) + 1;
    }
    return out;
  }

  private reset(next: number): void {
    this.held.clear();
    this.delivered.clear();
    this.highest = next;
    this.next = next;
    this.resumedAt = next;
  }
}

/**
 * How long messages after a gap wait for the missing ones before they are
 * handed on without them (a daemon resends for half a minute after a NATS
 * outage).
 */
export const GAP_WAIT_MS = 35_000;

/**
 * The caller's timer for one SeqOrder: once a gap opens, it waits `waitMs`
 * for the resend that fills it, then gives up (SeqOrder.flush) and hands
 * on what was held. Checked after every push.
 */
export class GapWait<T> {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly order: SeqOrder<T>,
    private readonly waitMs: number,
    private readonly onGiveUp: (flushed: { messages: T[]; missing: number[] }) => void,
  ) {}

  /** Starts the wait when a gap is open, ends it when the gap has filled. */
  check(): void {
    if (!this.order.waiting) return this.stop();
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.onGiveUp(this.order.flush());
    }, this.waitMs);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
