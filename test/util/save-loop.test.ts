import { describe, expect, it } from "vitest";
import { SaveLoop } from "../../src/util/save-loop.js";

describe("SaveLoop", () => {
  it("writes one at a time, folds the changes made during a write into one next write, and flush waits for the last", async () => {
    const writes: number[] = [];
    let state = 0;
    let running = 0;
    let overlapped = false;
    let release: (() => void) | undefined;
    const loop = new SaveLoop(async () => {
      running += 1;
      overlapped ||= running > 1;
      const snapshot = state;
      await new Promise<void>((resolve) => (release = resolve));
      writes.push(snapshot);
      running -= 1;
    });
    state = 1;
    loop.request();
    // Three changes while the first write runs: one more write, of the last state.
    for (const next of [2, 3, 4]) {
      state = next;
      loop.request();
    }
    const flushed = loop.flush();
    release?.();
    await new Promise((resolve) => setImmediate(resolve));
    release?.();
    await flushed;
    expect(writes).toEqual([1, 4]);
    expect(overlapped).toBe(false);
    await loop.flush();
  });

  it("resolves a request once a write that started after it is done, and rejects it with that write's error", async () => {
    const order: string[] = [];
    let fail = false;
    let release: (() => void) | undefined;
    const loop = new SaveLoop(async () => {
      const failing = fail;
      order.push(failing ? "write (fails)" : "write");
      await new Promise<void>((resolve) => (release = resolve));
      if (failing) throw new Error("disk full");
    });
    const first = loop.request().then(() => order.push("first saved"));
    await new Promise((resolve) => setImmediate(resolve));
    // Made while the first write runs: only the next write covers it.
    fail = true;
    const second = loop.request().then(
      () => order.push("second saved"),
      (err: Error) => order.push(`second failed: ${err.message}`),
    );
    release?.();
    await first;
    await new Promise((resolve) => setImmediate(resolve));
    release?.();
    await second;
    // The next write starts as soon as the first is done, before its callers run.
    expect(order).toEqual(["write", "write (fails)", "first saved", "second failed: disk full"]);
  });
});

