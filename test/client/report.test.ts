/** What a person sees: the live terminal line, plain lines, colours and NO_COLOR. */
import { describe, expect, it } from "vitest";
import type { BuildResponse } from "../../src/protocol.js";
import { createReporter, describeHistory, describeMessage, describeStatus, summaryTable } from "../../src/client/report.js";
import { changesText, progressText, timeLeftText } from "../../src/describe.js";

function terminal(isTTY: boolean) {
  const chunks: string[] = [];
  return { out: { isTTY, columns: 200, write: (text: string) => chunks.push(text) }, text: () => chunks.join(""), chunks };
}

const counts = (done: number, expected: number) => ({ done, expected, running: 1, failed: 0 });
const started: BuildResponse = { type: "host_started", jobId: "j0123456789", host: "ns1", index: 2, total: 16, startedAt: "2026-11-24T10:00:00.000Z" };
const progress = (done: number): BuildResponse => ({
  type: "progress",
  jobId: "j0123456789",
  host: "ns1",
  index: 2,
  total: 16,
  elapsedMs: 1000 * done,
  derivations: counts(done, 48),
  substitutions: counts(0, 0),
  downloadedBytes: 0,
  expectedDownloadBytes: 0,
  building: { drv: "nixos-system-ns1", phase: "buildPhase" },
});
const failed: BuildResponse = {
  type: "host_finished",
  jobId: "j0123456789",
  host: "ns1",
  index: 2,
  total: 16,
  status: "failure",
  durationMs: 4100,
  error: "builder for '/nix/store/x-unbound.conf.drv' failed with exit code 1",
  logTail: ["unbound.conf> error: syntax error at line 12"],
};

const evaluating = (evaluated: number, failed = 0): BuildResponse => ({ type: "evaluating", jobId: "j0123456789", evaluated, total: 16, failed });

describe("on a terminal", () => {
  it("says it waits for a builder on the live line until the first answer, and then the job's messages", () => {
    const tty = terminal(true);
    const reporter = createReporter({ json: false, out: tty.out, env: {} });
    reporter.waiting("no builder is listening on build.r.ns1 (NATS reported no responders); is the builder running?", Date.now() + 30_000);
    expect(tty.chunks.at(-1)).toMatch(/^\r\x1b\[2K.*waiting for a builder… · \d/);
    reporter.message({ type: "accepted", jobId: "j0123456789", position: 0, joined: false, repo: "r", target: "ns1", ref: null });
    expect(tty.text()).toContain("\r\x1b[2Kaccepted: job j0123456789, starting now\n");
    expect(tty.chunks.at(-1)).not.toContain("waiting for a builder");
    reporter.close();
  });

  it("shows evaluation progress on the live line before the first host, and beside the host being built", () => {
    const tty = terminal(true);
    const reporter = createReporter({ json: false, out: tty.out, env: {} });
    reporter.message(evaluating(0));
    expect(tty.chunks.at(-1)).toMatch(/^\r\x1b\[2K.*evaluating: 0\/16 hosts evaluated · \d/);
    reporter.message(evaluating(3, 1));
    expect(tty.chunks.at(-1)).toMatch(/evaluating: 3\/16 hosts evaluated, 1 failed · /);
    reporter.message(started);
    reporter.message(progress(12));
    expect(tty.chunks.at(-1)).toMatch(/\[2\/16\] ns1: 12\/48 derivations, .* · \d+(\.\d)?m?s · 3\/16 hosts evaluated, 1 failed/);
    reporter.message(evaluating(16, 1));
    expect(tty.chunks.at(-1)).not.toContain("hosts evaluated");
    reporter.close();
  });

  it("keeps one live line per host with derivations, phase and elapsed time, then replaces it with the result", () => {
    const tty = terminal(true);
    const reporter = createReporter({ json: false, out: tty.out, env: {} });
    reporter.message(started);
    reporter.message(progress(12));
    expect(tty.chunks.at(-1)).toMatch(/^\r\x1b\[2K.*\[2\/16\] ns1: 12\/48 derivations, building nixos-system-ns1 \(buildPhase\) · \d/);
    reporter.message(failed);
    const text = tty.text();
    expect(text).toContain("\r\x1b[2K");
    expect(text).toContain("failed with exit code 1");
    expect(text).toContain("│ unbound.conf> error: syntax error at line 12");
    expect(text).toContain("\x1b[31mfailure\x1b[0m");
    reporter.close();
  });

  it("has no colour when NO_COLOR is set", () => {
    const tty = terminal(true);
    const reporter = createReporter({ json: false, out: tty.out, env: { NO_COLOR: "1" } });
    reporter.message(started);
    reporter.message(failed);
    reporter.close();
    expect(tty.text()).not.toMatch(/\x1b\[3\dm/);
  });
});

describe("off a terminal", () => {
  it("prints plain lines, without escape codes, and at most one progress line per 30 s", () => {
    const pipe = terminal(false);
    const reporter = createReporter({ json: false, out: pipe.out, env: {} });
    reporter.message(started);
    for (let i = 1; i <= 20; i++) reporter.message(progress(i));
    reporter.message(failed);
    const text = pipe.text();
    expect(text).not.toContain("\x1b");
    expect(text.match(/derivations/g)).toBeNull();
    expect(text.split("\n")[0]).toBe("[2/16] ns1: building");
  });

  it("prints the first and the last evaluating line, not one per host", () => {
    const pipe = terminal(false);
    const reporter = createReporter({ json: false, out: pipe.out, env: {} });
    for (let i = 0; i <= 16; i++) reporter.message(evaluating(i, i > 10 ? 1 : 0));
    expect(pipe.text().trim().split("\n")).toEqual(["evaluating: 0/16 hosts evaluated", "evaluating: 16/16 hosts evaluated, 1 failed"]);
  });

  it("prints every message as a JSON line with --json", () => {
    const pipe = terminal(false);
    const reporter = createReporter({ json: true, out: pipe.out });
    reporter.message(started);
    reporter.message(progress(3));
    expect(pipe.text().trim().split("\n").map((l) => JSON.parse(l).type)).toEqual(["host_started", "progress"]);
  });
});

describe("summaries", () => {
  it("aligns the result table", () => {
    const lines = summaryTable({
      type: "completed",
      jobId: "j0123456789",
      repo: "r",
      target: "all",
      ref: null,
      status: "failure",
      revision: null,
      durationMs: 1,
      results: [
        { host: "ns1", status: "success", durationMs: 28_400, storePath: "/nix/store/a-ns1" },
        { host: "testvm01", status: "timeout", durationMs: 3_600_000, error: "timed out" },
      ],
    });
    expect(lines).toEqual([
      "HOST      STATUS   DURATION  CHANGES  RESULT",
      "ns1       success  28.4s     -        /nix/store/a-ns1",
      "testvm01  timeout  1h00m              timed out",
    ]);
  });

  const changes = {
    against: "/nix/store/00000000000000000000000000000000-nixos-system-ns1",
    againstRevision: "9b0c7f6e2a51ffffffffffffffffffffffffffff",
    packages: [
      { name: "linux", before: ["6.6.1"], after: ["6.6.2"], sizeDeltaBytes: 60_000 },
      { name: "openssl", before: ["3.0.1"], after: ["3.0.2"], sizeDeltaBytes: 0 },
      { name: "hello", before: [], after: ["2.12"], sizeDeltaBytes: 0 },
    ],
    sizeDeltaBytes: 1_258_291,
  };

  it("says what changed in a host's closure on its line, every package with --changes, and nothing without a comparison", () => {
    const finished = { type: "host_finished" as const, jobId: "j0123456789", index: 1, total: 2, host: "ns1", status: "success" as const, durationMs: 28_400, storePath: "/nix/store/a-ns1", changes };
    expect(describeMessage(finished)).toEqual([
      "[1/2] ns1: success in 28.4s → /nix/store/a-ns1",
      "    3 packages changed (linux 6.6.1 → 6.6.2, +59 KiB, openssl 3.0.1 → 3.0.2, …), +1.2 MiB since 9b0c7f6e2a51",
    ]);
    expect(describeMessage(finished, undefined, { allChanges: true }).slice(2)).toEqual([
      "      linux 6.6.1 → 6.6.2, +59 KiB",
      "      openssl 3.0.1 → 3.0.2",
      "      hello ∅ → 2.12",
    ]);
    expect(changesText({ ...changes, packages: [], sizeDeltaBytes: 0 })).toBe("no package changes");
    expect(describeMessage({ ...finished, changes: null })).toEqual(["[1/2] ns1: success in 28.4s → /nix/store/a-ns1"]);
    expect(describeMessage({ ...finished, changes: null, gcRoot: false })[1]).toMatch(/not registered as a GC root/);
  });

  it("adds a CHANGES column and cuts each line to the terminal width", () => {
    const final = {
      type: "completed" as const,
      jobId: "j0123456789",
      repo: "r",
      target: "all",
      ref: null,
      status: "success" as const,
      revision: null,
      durationMs: 1,
      results: [{ host: "ns1", status: "success" as const, durationMs: 28_400, storePath: `/nix/store/${"a".repeat(32)}-nixos-system-ns1-25.05`, changes }],
    };
    const wide = summaryTable(final);
    expect(wide[1]).toBe(`ns1   success  28.4s     3 packages, +1.2 MiB  /nix/store/${"a".repeat(32)}-nixos-system-ns1-25.05`);
    const cut = summaryTable(final, undefined, 60);
    expect(cut.every((line) => line.length <= 59)).toBe(true);
    expect(cut[1]).toMatch(/^ns1   success  28\.4s     3 packages, \+1\.2 MiB  \/nix\/store\/…$/);
    expect(cut[1]).toHaveLength(59);
  });

  it("shows the time left from the expected duration", () => {
    expect(timeLeftText(30_000, 12_000)).toBe("~18.0s left");
    expect(timeLeftText(30_000, 40_000)).toBe("10.0s over the usual 30.0s");
    expect(timeLeftText(null, 1)).toBeUndefined();
    expect(describeMessage({ type: "host_started", jobId: "j0123456789", host: "ns1", index: 1, total: 1, startedAt: "2026-11-24T10:00:00.000Z", expectedMs: 28_000 })).toEqual([
      "[1/1] ns1: building (usually 28.0s)",
    ]);
  });

  it("lists the history newest first", () => {
    const lines = describeHistory(
      {
        type: "history",
        repo: "nixos-servers",
        host: null,
        entries: [
          { host: "ns1", jobId: "j0123456789", revision: "9b0c7f6e2a51ffffffffffffffffffffffffffff", ref: null, status: "success", durationMs: 28_400, storePath: "/nix/store/a-ns1", finishedAt: "2026-11-24T10:00:00.000Z" },
          { host: "ns2", jobId: "j0123456789", revision: null, ref: "flake-update", status: "failure", durationMs: 4_100, finishedAt: "2026-11-24T09:00:00.000Z", error: "builder failed\nmore" },
        ],
      },
      Date.parse("2026-11-24T10:05:00.000Z"),
    );
    expect(lines).toEqual([
      "HOST  STATUS   DURATION  REVISION      REF           FINISHED   RESULT",
      "ns1   success  28.4s     9b0c7f6e2a51  -             5m00s ago  /nix/store/a-ns1",
      "ns2   failure  4.1s      -             flake-update  1h05m ago  builder failed",
    ]);
  });

  it("describes status with the running host and the queue", () => {
    const lines = describeStatus(
      {
        type: "status",
        version: "0.1.0",
        builder: "b",
        running: {
          jobId: "j0123456789",
          repo: "nixos-servers",
          target: "all",
          ref: null,
          startedAt: "2026-11-24T10:00:00.000Z",
          requesters: 1,
          currentHost: "ns2",
          hostIndex: 2,
          totalHosts: 16,
          hostStartedAt: "2026-11-24T10:01:00.000Z",
          progress: null,
          expectedMs: 150_000,
          evaluation: { evaluated: 5, total: 16, failed: 0 },
        },
        queued: [{ jobId: "jabcdefabcd", repo: "nixos", target: "gunter", ref: "flake-update", position: 1, requesters: 2, enqueuedAt: "2026-11-24T10:02:00.000Z" }],
      },
      Date.parse("2026-11-24T10:03:00.000Z"),
    );
    expect(lines).toEqual([
      "builder b (homelab-deploy 0.1.0)",
      "running: job j0123456789 nixos-servers all, started 3m00s ago",
      "  [2/16] ns2 for 2m00s (~30.0s left)",
      "  5/16 hosts evaluated",
      "queued: 1 job",
      "  1. job jabcdefabcd nixos gunter --ref flake-update (2 requesters)",
    ]);
  });
});

describe("progressText", () => {
  it("names the remote builder that builds the derivation", () => {
    const zero = { done: 0, expected: 0, running: 0, failed: 0 };
    const progress = { derivations: { ...zero, done: 2, expected: 5 }, substitutions: zero, downloadedBytes: 0 };
    expect(progressText({ ...progress, building: { drv: "unbound.conf", phase: "buildPhase", machine: "ssh-ng://nix-build01" } })).toBe(
      "2/5 derivations, building unbound.conf on ssh-ng://nix-build01 (buildPhase)",
    );
    expect(progressText({ ...progress, building: { drv: "unbound.conf", phase: null } })).toBe("2/5 derivations, building unbound.conf");
  });
});

describe("while no builder is listening", () => {
  it("says so once in plain output, and nothing on the JSON stream", () => {
    const plain = terminal(false);
    const reporter = createReporter({ json: false, out: plain.out, env: {} });
    const reason = "no builder is listening on build.r.ns1 (NATS reported no responders); is the builder running?";
    reporter.waiting(reason, Date.now() + 30_000);
    reporter.waiting(reason, Date.now() + 29_000);
    expect(plain.text()).toMatch(/^waiting for a builder: no builder is listening on build\.r\.ns1 \(NATS reported no responders\); asking again for up to (30|29)(\.\d)?s\n$/);
    const json = terminal(false);
    createReporter({ json: true, out: json.out, env: {} }).waiting(reason, Date.now() + 30_000);
    expect(json.text()).toBe("");
  });
});
