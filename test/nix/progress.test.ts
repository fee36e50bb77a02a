/**
 * ProgressThrottle: the time a message is stamped with is the time the
 * interval is counted from, so requesters never see two snapshots closer than
 * the interval, even when publishing takes long (a loaded machine deschedules
 * the builder between any two clock readings).
 */
import { describe, expect, it } from "vitest";
import type { NixProgress } from "../../src/nix/log.js";
import { ProgressThrottle } from "../../src/nix/progress.js";
import type { BuildProgress } from "../../src/protocol.js";

const counts = (done: number) => ({ done, expected: 50, running: 1, failed: 0 });
const progress = (done: number): NixProgress => ({
  derivations: counts(done),
  substitutions: counts(0),
  downloadedBytes: 0,
  expectedDownloadBytes: 0,
  building: { drv: `dep${done}`, phase: null },
});

function block(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until);
}

describe("ProgressThrottle", () => {
  it("stamps each snapshot with the time its interval counts from, however long publishing takes", async () => {
    const intervalMs = 60;
    const sent: Array<{ progress: BuildProgress; sentAt: number }> = [];
    const throttle = new ProgressThrottle(intervalMs, (snapshot, sentAt) => {
      sent.push({ progress: snapshot, sentAt });
      block(25); // the publisher is slow (or descheduled) after the stamp
    });
    const live = progress(0);
    for (let done = 1; done <= 40; done++) {
      Object.assign(live, progress(done)); // nix's counters change in place
      throttle.update(live);
      await new Promise((resolve) => setTimeout(resolve, 7));
    }
    throttle.flush();

    expect(sent.length).toBeGreaterThanOrEqual(4);
    const gaps = sent.slice(1).map((s, i) => s.sentAt - (sent[i]?.sentAt ?? 0));
    // The flush at the end is not held back; every other gap is a whole interval.
    for (const gap of gaps.slice(0, -1)) expect(gap).toBeGreaterThanOrEqual(intervalMs);
    // Never going backwards, and the final counts arrive.
    const done = sent.map((s) => s.progress.derivations.done);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(sent.at(-1)?.progress.derivations.done).toBe(40);
    // Snapshots are copies: later changes do not rewrite what went out.
    expect(sent[0]?.progress.derivations.done).toBeLessThan(40);
  });

  it("sends nothing on flush when nothing changed since the last message", () => {
    const sent: number[] = [];
    const throttle = new ProgressThrottle(1_000, (snapshot) => sent.push(snapshot.derivations.done));
    throttle.update(progress(1));
    throttle.flush();
    throttle.flush();
    expect(sent).toEqual([1]);
  });
});
