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
});
