import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { JobStore, restoredJob, savedJob } from "../../src/builder/job-store.js";
import { Job } from "../../src/job.js";
import { memoryLogger } from "../support/logger.js";

async function store(maxJobs = 10) {
  const stateDir = await mkdtemp(join(tmpdir(), "hd-jobs-"));
  const { logger, lines } = memoryLogger();
  return { stateDir, lines, store: new JobStore({ stateDir, logger, maxJobs }) };
}

describe("JobStore", () => {
  it("refuses a FIFO at jobs.json with a message naming it, instead of blocking start-up on it", async () => {
    const { stateDir, store: jobs } = await store();
    execFileSync("mkfifo", [join(stateDir, "jobs.json")]);
    await expect(jobs.load()).rejects.toThrow(/jobs\.json is a FIFO, not a regular file/);
  });

  it("gives back what was saved: the running job's plan, results and message number, then the queued ones", async () => {
    const { store: jobs } = await store();
    const running = new Job({ repo: "nixos-servers", target: "all", ref: null });
    running.requesters.add("build.responses.a");
    running.seq = 7;
    running.checkpoint = { lockedUrl: "git+file:///x?rev=abc", revision: "abc", hosts: ["ns1", "ns2"] };
    running.results.push({ host: "ns1", status: "success", durationMs: 12, storePath: "/nix/store/x-ns1" });
    const queued = new Job({ repo: "nixos", target: "pc1", ref: "flake-update" });
    await jobs.save([savedJob(running, true), savedJob(queued, false)]);

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

  it("coalesces saves made while one is being written: the newest snapshot wins, every caller waits for it", async () => {
    const { store: jobs } = await store();
    const made = [1, 2, 3, 4].map(() => new Job({ repo: "r", target: "h", ref: null }));
    await Promise.all(made.map((_, n) => jobs.save(made.slice(0, n + 1).map((job) => savedJob(job, false)))));
    expect((await jobs.load()).map((j) => j.id)).toEqual(made.map((j) => j.id));
  });

  it("writes at most maxJobs", async () => {
    const { store: jobs } = await store(2);
    const made = [1, 2, 3].map(() => new Job({ repo: "r", target: "h", ref: null }));
    await jobs.save(made.map((job) => savedJob(job, false)));
    expect(await jobs.load()).toHaveLength(2);
  });

  it("sets a damaged file aside, says so, and starts empty", async () => {
    const { store: jobs, stateDir, lines } = await store();
    await writeFile(join(stateDir, "jobs.json"), '{"version": 1, "jobs": [{"id": "nope"');
    expect(await jobs.load()).toEqual([]);
    expect(lines).toContainEqual(expect.objectContaining({ msg: "the saved job queue is unreadable; starting with an empty queue" }));
    const files = await readdir(stateDir);
    const aside = files.find((f) => f.startsWith("jobs.json.damaged-"));
    expect(aside).toBeDefined();
    expect(await readFile(join(stateDir, aside!), "utf8")).toContain('"nope"');
  });

  it("starts empty when nothing was ever saved", async () => {
    const { store: jobs } = await store();
    expect(await jobs.load()).toEqual([]);
  });
});
