import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { JobStore, restoredJob, savedJob, type SavedJob } from "../../src/builder/job-store.js";
import { Job } from "../../src/job.js";
import { savedQueue } from "../support/jobs-file.js";
import { memoryLogger } from "../support/logger.js";

/** A store whose snapshot is `jobs.now` (what the queue holds at each write). */
async function store(maxJobs = 10) {
  const stateDir = await mkdtemp(join(tmpdir(), "hd-jobs-"));
  const { logger, lines } = memoryLogger();
  const jobs = { now: [] as SavedJob[] };
  return { stateDir, lines, jobs, store: new JobStore({ stateDir, logger, maxJobs, snapshot: () => jobs.now }) };
}

describe("JobStore", () => {
  it("refuses a FIFO at jobs.json with a message naming it, instead of blocking start-up on it", async () => {
    const { stateDir, store: jobs } = await store();
    execFileSync("mkfifo", [join(stateDir, "jobs.json")]);
    await expect(jobs.load()).rejects.toThrow(/jobs\.json is a FIFO, not a regular file/);
  });

  it("gives back what was saved: the running job's plan, results and message number, then the queued ones", async () => {
    const { store: jobs, jobs: queue } = await store();
    const running = new Job({ repo: "nixos-servers", target: "all", ref: null });
    running.requesters.add("build.responses.a");
    running.seq = 7;
    running.checkpoint = { lockedUrl: "git+file:///x?rev=abc", revision: "abc", hosts: ["ns1", "ns2"] };
    running.results.push({ host: "ns1", status: "success", durationMs: 12, storePath: "/nix/store/x-ns1" });
    const queued = new Job({ repo: "nixos", target: "pc1", ref: "flake-update" });
    queue.now = [savedJob(running, true), savedJob(queued, false)];
    await jobs.save();

    const loaded = await jobs.load();
    expect(loaded.map((j) => [j.id, j.running])).toEqual([
      [running.id, true],
      [queued.id, false],
    ]);
    const { spec, restored } = restoredJob(loaded[0]!);
    const again = new Job(spec, restored);
    expect(again).toMatchObject({ id: running.id, seq: 7, checkpoint: running.checkpoint, results: running.results, enqueuedAt: running.enqueuedAt });
    expect([...again.requesters]).toEqual(["build.responses.a"]);
  });

  it("coalesces saves made while one is being written: one more write takes the newest snapshot, and every caller waits for a write that has its job", async () => {
    const { store: jobs, jobs: queue, stateDir } = await store();
    const made = [1, 2, 3, 4].map(() => new Job({ repo: "r", target: "h", ref: null }));
    const onDisk: string[][] = [];
    const saves = made.map(async (_, n) => {
      queue.now = made.slice(0, n + 1).map((job) => savedJob(job, false));
      await jobs.save();
      // What a caller finds on disk once its save resolved: at least its own job.
      const file = savedQueue(stateDir);
      onDisk.push(file.jobs.map((j) => j.id));
      expect(file.jobs.map((j) => j.id)).toContain(made[n]!.id);
    });
    await Promise.all(saves);
    expect((await jobs.load()).map((j) => j.id)).toEqual(made.map((j) => j.id));
    expect(onDisk).toHaveLength(4);
  });

  it("rejects every caller of a write that failed (a FIFO at jobs.json), with the reason", async () => {
    const { store: jobs, jobs: queue, stateDir } = await store();
    execFileSync("mkfifo", [join(stateDir, "jobs.json")]);
    queue.now = [savedJob(new Job({ repo: "r", target: "h", ref: null }), false)];
    await expect(Promise.all([jobs.save(), jobs.save()])).rejects.toThrow(/jobs\.json is a FIFO, not a regular file/);
  });

  it("writes at most maxJobs", async () => {
    const { store: jobs, jobs: queue } = await store(2);
    const made = [1, 2, 3].map(() => new Job({ repo: "r", target: "h", ref: null }));
    queue.now = made.map((job) => savedJob(job, false));
    await jobs.save();
    expect(await jobs.load()).toHaveLength(2);
  });

  it("sets a damaged file aside, says so, and starts empty", async () => {
    const { store: jobs, stateDir, lines } = await store();
    await writeFile(join(stateDir, "jobs.json"), '{"version": 1, "jobs": [{"id": "nope"');
    expect(await jobs.load()).toEqual([]);
    expect(lines).toContainEqual(expect.objectContaining({ msg: "the saved job queue is unreadable; starting with an empty queue", problem: expect.stringMatching(/^not JSON: /) }));
    const files = await readdir(stateDir);
    const aside = files.find((f) => f.startsWith("jobs.json.damaged-"));
    expect(aside).toBeDefined();
    expect(await readFile(join(stateDir, aside!), "utf8")).toContain('"nope"');
  });

  it("says which field of a damaged file is wrong", async () => {
    const { store: jobs, stateDir, lines } = await store();
    await writeFile(join(stateDir, "jobs.json"), JSON.stringify({ version: 1, jobs: [{ id: "nope" }] }));
    expect(await jobs.load()).toEqual([]);
    expect(lines).toContainEqual(expect.objectContaining({ level: 50, problem: expect.stringMatching(/^jobs\.0\.id: /) }));
  });

  it("loads a plain-JSON jobs.json (written by a builder before the in-place slots) and writes slots over it at the next save", async () => {
    const { store: jobs, jobs: queue, stateDir } = await store();
    const old = new Job({ repo: "r", target: "h", ref: null });
    old.requesters.add("build.responses.old");
    await writeFile(join(stateDir, "jobs.json"), `${JSON.stringify({ version: 1, jobs: [savedJob(old, false)] })}\n`);
    const loaded = await jobs.load();
    expect(loaded.map((j) => [j.id, j.requesters])).toEqual([[old.id, ["build.responses.old"]]]);
    const next = new Job({ repo: "r", target: "h2", ref: null });
    queue.now = [...loaded, savedJob(next, false)];
    await jobs.save();
    expect((await readFile(join(stateDir, "jobs.json"), "latin1")).startsWith("homelab-deploy state slot 1 seq=1 ")).toBe(true);
    expect(savedQueue(stateDir).jobs.map((j) => j.id)).toEqual([old.id, next.id]);
  });

  it("starts empty when nothing was ever saved", async () => {
    const { store: jobs } = await store();
    expect(await jobs.load()).toEqual([]);
  });
});
