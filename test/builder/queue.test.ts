import { execFileSync } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { JobQueue } from "../../src/builder/queue.js";
import { savedQueue } from "../support/jobs-file.js";
import { memoryLogger } from "../support/logger.js";

const spec = (target: string, ref: string | null = null) => ({ repo: "r", target, ref });

describe("JobQueue", () => {
  it("hands out jobs first in, first out, one at a time", async () => {
    const queue = new JobQueue({ maxQueue: 10 });
    await queue.enqueue(spec("a"), "build.responses.1");
    await queue.enqueue(spec("b"), "build.responses.2");
    const first = await queue.take();
    expect(first?.spec.target).toBe("a");
    await expect(queue.take()).rejects.toThrow(/still running/);
    queue.finish(first!);
    expect((await queue.take())?.spec.target).toBe("b");
  });

  it("joins an identical queued request but not a running one or another ref", async () => {
    const queue = new JobQueue({ maxQueue: 10 });
    const a = await queue.enqueue(spec("a"), "r1");
    const running = await queue.take();
    const b = await queue.enqueue(spec("a"), "r2");
    const c = await queue.enqueue(spec("a"), "r3");
    const d = await queue.enqueue(spec("a", "feature"), "r4");
    expect(a).toMatchObject({ accepted: true, joined: false, position: 0 });
    expect(b).toMatchObject({ accepted: true, joined: false, position: 1 });
    expect(c).toMatchObject({ accepted: true, joined: true, position: 1 });
    expect(d).toMatchObject({ accepted: true, joined: false, position: 2 });
    if (!b.accepted || !c.accepted) throw new Error("unreachable");
    expect(c.job).toBe(b.job);
    expect([...b.job.requesters]).toEqual(["r2", "r3"]);
    expect(running?.requesters.has("r2")).toBe(false);
  });

  it("rejects new jobs beyond maxQueue, while joins still work", async () => {
    const queue = new JobQueue({ maxQueue: 2 });
    expect((await queue.enqueue(spec("a"), "1")).accepted).toBe(true);
    expect((await queue.enqueue(spec("b"), "2")).accepted).toBe(true);
    expect(await queue.enqueue(spec("c"), "3")).toEqual({ accepted: false, reason: "queue_full" });
    expect(await queue.enqueue(spec("a"), "4")).toMatchObject({ accepted: true, joined: true });
  });

  it("removes a queued job by id and hands back the rest on close", async () => {
    const queue = new JobQueue({ maxQueue: 5 });
    const a = await queue.enqueue(spec("a"), "1");
    const b = await queue.enqueue(spec("b"), "2");
    if (!a.accepted || !b.accepted) throw new Error("unreachable");
    expect(queue.remove(a.job.id)).toBe(a.job);
    expect(queue.remove("nope")).toBeUndefined();
    expect(queue.close()).toEqual([b.job]);
    expect(await queue.take()).toBeNull();
    expect(await queue.enqueue(spec("c"), "3")).toEqual({ accepted: false, reason: "closed" });
  });

  it("wakes a waiting taker when a job arrives, and releases it on close", async () => {
    const queue = new JobQueue({ maxQueue: 5 });
    const waiting = queue.take();
    void queue.enqueue(spec("late"), "1");
    expect((await waiting)?.spec.target).toBe("late");
    const idle = new JobQueue({ maxQueue: 5 });
    const pending = idle.take();
    idle.close();
    expect(await pending).toBeNull();
  });

  it("acknowledges a request only once jobs.json holds it, and hands its job out only after the acknowledgement", async () => {
    const stateDir = await mkdtemp(join(tmpdir(), "hd-queue-"));
    const queue = new JobQueue({ maxQueue: 5, stateDir, logger: memoryLogger().logger });
    const events: string[] = [];
    const taken = queue.take().then((job) => events.push(`taken ${job?.spec.target}`));
    const acknowledged = ["r1", "r2"].map((reply) =>
      queue.enqueue(spec("a"), reply, (job) => {
        // Saved before acknowledged: the requester is in the file, not yet one of the job's.
        const saved = savedQueue(stateDir);
        events.push(`ack ${reply}: saved ${saved.jobs[0]?.requesters.includes(reply)}, told ${job.requesters.has(reply)}`);
      }),
    );
    await Promise.all([...acknowledged, taken]);
    expect(events.slice(0, 2).sort()).toEqual(["ack r1: saved true, told false", "ack r2: saved true, told false"]);
    expect(events[2]).toBe("taken a");
    expect([...queue.running!.requesters].sort()).toEqual(["r1", "r2"]);
  });

  it("refuses a request it cannot save, and drops the job nobody else waits for", async () => {
    const stateDir = await mkdtemp(join(tmpdir(), "hd-queue-"));
    execFileSync("mkfifo", [join(stateDir, "jobs.json")]);
    const queue = new JobQueue({ maxQueue: 5, stateDir, logger: memoryLogger().logger });
    let acknowledged = false;
    const result = await queue.enqueue(spec("a"), "r1", () => (acknowledged = true));
    expect(result).toMatchObject({ accepted: false, reason: "unsaved" });
    expect(String((result as { error: unknown }).error)).toMatch(/jobs\.json is a FIFO/);
    expect(acknowledged).toBe(false);
    expect(queue.depth).toBe(0);
  });
});
