/** What an assistant sees from the build tool: progress notifications and the result, from the builder's messages. */
import { describe, expect, it } from "vitest";
import { BuildToolOutputSchema, MCP_ERROR_CHARS, MCP_TAIL_LINE_CHARS, MCP_TAIL_LINES, buildToolResult } from "../../src/mcp/build-result.js";
import { BuildProgress } from "../../src/mcp/progress.js";
import type { BuildResponse, Completed, HostFinished } from "../../src/protocol.js";

const jobId = "j0123456789";
const counts = (done: number, expected: number) => ({ done, expected, running: 1, failed: 0 });
const progress = (index: number, done: number, expected: number): BuildResponse => ({
  type: "progress",
  jobId,
  host: `h${index}`,
  index,
  total: 2,
  elapsedMs: 100 * done,
  derivations: counts(done, expected),
  substitutions: counts(0, 0),
  downloadedBytes: 0,
  expectedDownloadBytes: 0,
  building: { drv: "unbound.conf", phase: null },
});
const heartbeat: BuildResponse = { type: "heartbeat", jobId, state: "running", position: 0, host: "h1" };

describe("BuildProgress", () => {
  it("counts hosts, with the current host worth its share of derivations, and always grows", () => {
    const tracker = new BuildProgress("all");
    const messages: BuildResponse[] = [
      { type: "accepted", jobId, repo: "r", target: "all", ref: null, position: 1, joined: false },
      { type: "heartbeat", jobId, state: "queued", position: 1, host: null },
      { type: "job_started", jobId, repo: "r", target: "all", ref: null, revision: "abc", lockedUrl: "git+file:///x", hosts: ["h1", "h2"] },
      { type: "host_started", jobId, host: "h1", index: 1, total: 2, startedAt: "2026-11-24T10:00:00.000Z" },
      progress(1, 2, 4),
      heartbeat,
      heartbeat,
      progress(1, 4, 4),
      { type: "host_finished", jobId, host: "h1", index: 1, total: 2, status: "success", durationMs: 1000, storePath: "/nix/store/x-h1" },
      { type: "host_started", jobId, host: "h2", index: 2, total: 2, startedAt: "2026-11-24T10:00:01.000Z" },
      // nix starts counting again for the next host.
      progress(2, 0, 10),
      progress(2, 5, 10),
      { type: "host_finished", jobId, host: "h2", index: 2, total: 2, status: "failure", durationMs: 1000, error: "boom", logTail: ["a", "b"] },
      { type: "completed", jobId, repo: "r", target: "all", ref: null, status: "failure", revision: "abc", durationMs: 2000, results: [] },
    ];
    const updates = messages.map((m) => tracker.update(m));
    expect(updates.at(-1)).toBeUndefined();
    const sent = updates.filter((u) => u !== undefined);
    expect(sent).toHaveLength(messages.length - 1);
    const values = sent.map((u) => u.progress);
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1] as number);
    // Before job_started an `all` job has no known total.
    expect(sent[0]).toEqual({ progress: 0, message: "accepted: job j0123456789, 1 job ahead" });
    expect(sent[1]?.message).toBe("queued: 1 job ahead");
    expect(sent.slice(2).every((u) => u.total === 2)).toBe(true);
    expect(values[4]).toBeCloseTo(0.495);
    // Heartbeats while nothing moved: a little more, still short of the host's end.
    expect(values[5]).toBeGreaterThan(values[4] as number);
    expect(values[6]).toBeLessThan(1);
    expect(sent[5]?.message).toBe("still building h1");
    expect(sent[8]).toMatchObject({ progress: 1, message: "[1/2] h1: success in 1.0s → /nix/store/x-h1" });
    expect(values[10]).toBeGreaterThan(1);
    expect(values[10]).toBeLessThan(2);
    expect(sent[12]).toMatchObject({ progress: 2, total: 2, message: "[2/2] h2: failure in 1.0s: boom" });
  });

  it("knows a single host is one host from the start", () => {
    expect(new BuildProgress("ns1").update({ type: "accepted", jobId, repo: "r", target: "ns1", ref: null, position: 0, joined: false })).toMatchObject({ total: 1 });
  });
});

describe("buildToolResult", () => {
  const longTail = Array.from({ length: 50 }, (_, i) => `line ${i + 1} ${"x".repeat(1990)}`);
  const completed: Completed = {
    type: "completed",
    jobId,
    repo: "nixos-servers",
    target: "all",
    ref: null,
    status: "failure",
    revision: "9b0c7f6e2a51d3c48e1f0a7b6c5d4e3f2a1b0c9d",
    durationMs: 61_230,
    results: [
      { host: "ns1", status: "success", durationMs: 28_411, storePath: "/nix/store/8f3k-nixos-system-ns1" },
      { host: "ns2", status: "failure", durationMs: 4_120, error: "builder for '/nix/store/0dzd-unbound.conf.drv' failed with exit code 1" },
      { host: "ns3", status: "eval_error", durationMs: 900, error: `attribute 'services' missing\n${"at flake.nix\n".repeat(500)}`, location: { file: "flake.nix", line: 12, column: 5 } },
    ],
  };
  const ns2: HostFinished = { type: "host_finished", jobId, index: 2, total: 3, ...completed.results[1]!, logTail: longTail };

  it("gives each host's result, the end of a failed host's log cut for reading, and the eval error's location", () => {
    const { output, lines } = buildToolResult({ repo: "nixos-servers", target: "all" }, completed, new Map([["ns2", ns2]]));
    expect(BuildToolOutputSchema.parse(output)).toEqual(output);
    expect(output).toMatchObject({ outcome: "failure", jobId, revision: completed.revision, durationMs: 61_230 });
    expect(output.hosts[0]).toEqual(completed.results[0]);
    const tail = output.hosts[1]?.logTail ?? [];
    expect(tail).toHaveLength(MCP_TAIL_LINES);
    expect(tail.at(-1)?.startsWith("line 50 ")).toBe(true);
    expect(tail.every((l) => l.length <= MCP_TAIL_LINE_CHARS + 1)).toBe(true);
    expect(output.hosts[2]?.error?.length).toBeLessThan(MCP_ERROR_CHARS + 40);
    expect(output.hosts[2]?.error).toMatch(/… \(\d+ more characters\)$/);
    expect(output.hosts[2]?.location).toEqual({ file: "flake.nix", line: 12, column: 5 });

    expect(lines[0]).toBe("completed: failure, 1 of 3 hosts built, 9b0c7f6e2a51, in 1m01s");
    expect(lines).toContain("ns1   success     28.4s     -        /nix/store/8f3k-nixos-system-ns1");
    expect(lines).toContain("[2/3] ns2: failure in 4.1s: builder for '/nix/store/0dzd-unbound.conf.drv' failed with exit code 1");
    expect(lines.filter((l) => l.startsWith("    │ line "))).toHaveLength(MCP_TAIL_LINES);
    expect(lines).toContain("[3/3] ns3: eval_error in 900ms (flake.nix:12): attribute 'services' missing");
  });

  it("says what was refused and what would have worked", () => {
    const { output, lines } = buildToolResult(
      { repo: "nixos-servers", target: "ns9", ref: "main" },
      { type: "rejected", code: "unknown_host", error: "unknown host ns9 in repo nixos-servers; its hosts are ns1, ns2", known: ["ns1", "ns2"] },
      new Map(),
    );
    expect(output).toEqual({
      outcome: "rejected",
      repo: "nixos-servers",
      target: "ns9",
      ref: "main",
      jobId: null,
      revision: null,
      durationMs: null,
      hosts: [],
      error: "unknown host ns9 in repo nixos-servers; its hosts are ns1, ns2",
      rejection: { code: "unknown_host", known: ["ns1", "ns2"] },
    });
    expect(lines).toEqual(["rejected: unknown host ns9 in repo nixos-servers; its hosts are ns1, ns2"]);
  });
});
