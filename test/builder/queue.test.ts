import { describe, expect, it } from "vitest";
import { JobQueue } from "../../src/builder/queue.js";

const spec = (target: string, ref: string | null = null) => ({ repo: "r", target, ref });

describe("JobQueue", () => {
  it("hands out jobs first in, first out, one at a time", async () => {
    const queue = new JobQueue(10);
    queue.enqueue(spec("a"), "build.responses.1");
    queue.enqueue(spec("b"), "build.responses.2");
    const first = await queue.take();
    expect(first?.spec.target).toBe("a");
    await expect(queue.take()).rejects.toThrow(/still running/);
    queue.finish(first!);
    expect((await queue.take())?.spec.target).toBe("b");
  });

  it("joins an identical queued request but not a running one or another ref", async () => {
    const queue = new JobQueue(10);
    const a = queue.enqueue(spec("a"), "r1");
    const running = await queue.take();
    const b = queue.enqueue(spec("a"), "r2");
    const c = queue.enqueue(spec("a"), "r3");
    const d = queue.enqueue(spec("a", "feature"), "r4");
    expect(a).toMatchObject({ accepted: true, joined: false, position: 0 });
    expect(b).toMatchObject({ accepted: true, joined: false, position: 1 });
    expect(c).toMatchObject({ accepted: true, joined: true, position: 1 });
    expect(d).toMatchObject({ accepted: true, joined: false, position: 2 });
    if (!b.accepted || !c.accepted) throw new Error("unreachable");
    expect(c.job).toBe(b.job);
    expect([...b.job.requesters]).toEqual(["r2", "r3"]);
    expect(running?.requesters.has("r2")).toBe(false);
  });

  it("rejects new jobs beyond maxQueue, while joins still work", () => {
    const queue = new JobQueue(2);
    expect(queue.enqueue(spec("a"), "1").accepted).toBe(true);
    expect(queue.enqueue(spec("b"), "2").accepted).toBe(true);
    expect(queue.enqueue(spec("c"), "3")).toEqual({ accepted: false, reason: "queue_full" });
    expect(queue.enqueue(spec("a"), "4")).toMatchObject({ accepted: true, joined: true });
  });

  it("removes a queued job by id and hands back the rest on close", async () => {
    const queue = new JobQueue(5);
    const a = queue.enqueue(spec("a"), "1");
    const b = queue.enqueue(spec("b"), "2");
    if (!a.accepted || !b.accepted) throw new Error("unreachable");
    expect(queue.remove(a.job.id)).toBe(a.job);
    expect(queue.remove("nope")).toBeUndefined();
    expect(queue.close()).toEqual([b.job]);
    expect(await queue.take()).toBeNull();
    expect(queue.enqueue(spec("c"), "3")).toEqual({ accepted: false, reason: "closed" });
  });

  it("wakes a waiting taker when a job arrives, and releases it on close", async () => {
    const queue = new JobQueue(5);
    const waiting = queue.take();
    queue.enqueue(spec("late"), "1");
    expect((await waiting)?.spec.target).toBe("late");
    const idle = new JobQueue(5);
    const pending = idle.take();
    idle.close();
    expect(await pending).toBeNull();
  });
});
