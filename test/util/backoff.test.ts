/** Backoff's bounds and jitter, and the abortable delay the retry loops wait with. */
import { describe, expect, it } from "vitest";
import { Backoff, delay } from "../../src/util/backoff.js";

describe("Backoff", () => {
  it("doubles up to the cap, with at most half taken off for jitter", () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1_000 });
    const ceilings = [100, 200, 400, 800, 1_000, 1_000];
    for (const ceiling of ceilings) {
      const next = backoff.next();
      expect(next).toBeGreaterThanOrEqual(ceiling / 2);
      expect(next).toBeLessThanOrEqual(ceiling);
    }
    backoff.reset();
    expect(backoff.next()).toBeLessThanOrEqual(100);
  });
});

describe("delay", () => {
  it("waits, and stops waiting with an AbortError when its signal aborts", async () => {
    const order: string[] = [];
    const short = delay(5).then(() => order.push("5 ms"));
    const controller = new AbortController();
    const long = delay(60_000, undefined, { signal: controller.signal }).catch((err: unknown) => {
      order.push((err as Error).name);
    });
    await short;
    controller.abort();
    await long;
    expect(order).toEqual(["5 ms", "AbortError"]);
  });
});
