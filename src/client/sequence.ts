/**
 * A requester's view of a job's `seq` numbers: the builder resends its
 * numbered messages after a NATS outage, so a number seen before is a
 * duplicate to drop, and a number missing below the highest seen is a
 * message still on its way (or lost). Progress and heartbeat repeat the
 * job's last number; they are never duplicates, but they reveal a gap.
 * `resumed` starts a new run of the builder: what the old one sent and
 * never saved can no longer come, so the count starts over from it.
 */
import type { BuildResponse } from "../protocol.js";

const UNNUMBERED: ReadonlySet<string> = new Set(["progress", "heartbeat"]);

export type SeqVerdict = "new" | "duplicate" | "stale";

export class SeqTracker {
  private readonly seen = new Set<number>();
  private lowest = Number.POSITIVE_INFINITY;
  private highest = 0;

  /** "duplicate": seen before, drop it. "stale": a snapshot older than what is known, drop it. */
  accept(message: BuildResponse): SeqVerdict {
    const seq = "seq" in message ? message.seq : undefined;
    if (seq === undefined) return "new";
    if (message.type === "resumed") this.reset();
    if (UNNUMBERED.has(message.type)) {
      if (seq < this.highest) return "stale";
      // The snapshot carries the number of the last numbered message before it.
      this.highest = Math.max(this.highest, seq);
      if (this.lowest === Number.POSITIVE_INFINITY) this.lowest = seq + 1;
      return "new";
    }
    if (this.seen.has(seq)) return "duplicate";
    this.seen.add(seq);
    this.lowest = Math.min(this.lowest, seq);
    this.highest = Math.max(this.highest, seq);
    return "new";
  }

  /** Numbers below the highest seen that have not arrived. */
  missing(): number[] {
    const gaps: number[] = [];
    for (let seq = this.lowest; seq <= this.highest && gaps.length < 1_000; seq++) if (!this.seen.has(seq)) gaps.push(seq);
    return gaps;
  }

  private reset(): void {
    this.seen.clear();
    this.lowest = Number.POSITIVE_INFINITY;
    this.highest = 0;
  }
}
