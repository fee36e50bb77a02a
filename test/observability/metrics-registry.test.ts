/**
 * BuildMetrics in-process: restoring saved state, and what it does with
 * events it does not know (the protocol grows; the metrics must not break).
 * The daemon end to end is test/e2e/metrics.test.ts.
 */
import { describe, expect, it } from "vitest";
import { EventBus, type BuilderEvent } from "../../src/events.js";
import { BuildMetrics } from "../../src/observability/metrics.js";
import { Job } from "../../src/job.js";
import { parseExposition, valueOf } from "../support/metrics.js";

async function exposition(metrics: BuildMetrics) {
  return parseExposition(await metrics.registry.metrics());
}

/** The builder's own series (process metrics change by themselves). */
async function ownSeries(metrics: BuildMetrics) {
  return (await exposition(metrics)).samples.filter((s) => s.name.startsWith("homelab_deploy_"));
}

describe("BuildMetrics", () => {
  it("restores saved values, dropping repos that are no longer configured", async () => {
    const metrics = new BuildMetrics({ repos: ["nixos-servers", "nixos"], version: "9.9.9" });
    const dropped = metrics.restore({
      builds: [
        { repo: "nixos-servers", status: "success", value: 7 },
        { repo: "retired", status: "success", value: 4 },
      ],
      hostBuilds: [{ repo: "nixos-servers", host: "ns1", status: "failure", value: 2 }],
      lastBuild: { "nixos-servers": 1_760_000_100, retired: 1_700_000_000 },
      lastSuccess: { "nixos-servers": 1_760_000_000, retired: 1_700_000_000 },
      hostLastSuccess: [
        { repo: "nixos-servers", host: "ns1", value: 1_759_000_000 },
        { repo: "retired", host: "old", value: 1_700_000_000 },
      ],
    });
    expect(dropped).toEqual(["retired"]);
    const text = await exposition(metrics);
    expect(valueOf(text, "homelab_deploy_builds_total", { repo: "nixos-servers", status: "success" })).toBe(7);
    expect(valueOf(text, "homelab_deploy_builds_total", { repo: "nixos", status: "success" })).toBe(0);
    expect(valueOf(text, "homelab_deploy_build_host_total", { repo: "nixos-servers", host: "ns1", status: "failure" })).toBe(2);
    expect(valueOf(text, "homelab_deploy_build_last_success_timestamp", { repo: "nixos-servers" })).toBe(1_760_000_000);
    expect(valueOf(text, "homelab_deploy_build_last_success_timestamp", { repo: "retired" })).toBeUndefined();
    expect(valueOf(text, "homelab_deploy_builds_total", { repo: "retired", status: "success" })).toBeUndefined();
    // What it restored is what it would save again.
    const snapshot = await metrics.snapshot();
    expect(snapshot.builds).toContainEqual({ repo: "nixos-servers", status: "success", value: 7 });
    expect(snapshot.lastSuccess).toEqual({ "nixos-servers": 1_760_000_000 });
    expect(snapshot.hostLastSuccess).toEqual([{ repo: "nixos-servers", host: "ns1", value: 1_759_000_000 }]);
    expect(valueOf(text, "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns1" })).toBe(1_759_000_000);
  });

  it("sets a host's last success when it builds, and drops a host gone from its repo's next build of all hosts", async () => {
    const metrics = new BuildMetrics({ repos: ["nixos-servers"], version: "9.9.9", now: () => 1_760_000_000_000 });
    const finished = (job: Job, host: string, status: "success" | "failure") =>
      metrics.onEvent({ type: "response", job, message: { type: "host_finished", jobId: job.id, index: 1, total: 1, host, status, durationMs: 1 } });
    const all = new Job({ repo: "nixos-servers", target: "all", ref: null });
    finished(all, "ns1", "success");
    finished(all, "ns2", "success");
    finished(all, "ns3", "failure");
    let text = await exposition(metrics);
    expect(valueOf(text, "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns1" })).toBe(1_760_000_000);
    expect(valueOf(text, "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns3" })).toBeUndefined();
    // A ref build's host list says nothing about the default branch.
    const ref = new Job({ repo: "nixos-servers", target: "all", ref: "flake-update" });
    metrics.onEvent({ type: "response", job: ref, message: { type: "job_started", jobId: ref.id, repo: "nixos-servers", target: "all", ref: "flake-update", revision: null, lockedUrl: "x", hosts: ["ns1"] } });
    expect(valueOf(await exposition(metrics), "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns2" })).toBe(1_760_000_000);
    const next = new Job({ repo: "nixos-servers", target: "all", ref: null });
    metrics.onEvent({ type: "response", job: next, message: { type: "job_started", jobId: next.id, repo: "nixos-servers", target: "all", ref: null, revision: null, lockedUrl: "x", hosts: ["ns1", "ns3"] } });
    text = await exposition(metrics);
    expect(valueOf(text, "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns2" })).toBeUndefined();
    expect(valueOf(text, "homelab_deploy_build_host_last_success_timestamp", { repo: "nixos-servers", host: "ns1" })).toBe(1_760_000_000);
  });

  it("ignores event and message types it does not know, and keeps counting the ones it does", async () => {
    const metrics = new BuildMetrics({ repos: ["nixos-servers"], version: "9.9.9", now: () => 1_760_000_000_000 });
    let changes = 0;
    metrics.onPersistentChange(() => (changes += 1));
    const bus = new EventBus((err) => {
      throw err;
    });
    bus.on(metrics.onEvent);
    const job = new Job({ repo: "nixos-servers", target: "ns1", ref: null });
    const before = await ownSeries(metrics);
    // Shapes a later protocol may add: a new event type and a new message type.
    bus.emit({ type: "cancelled", jobId: job.id } as unknown as BuilderEvent);
    bus.emit({ type: "response", job, message: { type: "progress", jobId: job.id, host: "ns1", done: 3, expected: 9 } } as unknown as BuilderEvent);
    expect(await ownSeries(metrics)).toEqual(before);
    expect(changes).toBe(0);

    bus.emit({
      type: "response",
      job,
      message: { type: "host_finished", jobId: job.id, index: 1, total: 1, host: "ns1", status: "success", durationMs: 42_000 },
    });
    bus.emit({
      type: "response",
      job,
      message: { type: "completed", jobId: job.id, ...job.spec, status: "success", revision: null, durationMs: 43_000, results: [] },
    });
    const text = await exposition(metrics);
    expect(valueOf(text, "homelab_deploy_builds_total", { repo: "nixos-servers", status: "success" })).toBe(1);
    expect(valueOf(text, "homelab_deploy_build_host_total", { repo: "nixos-servers", host: "ns1", status: "success" })).toBe(1);
    expect(valueOf(text, "homelab_deploy_build_duration_seconds_sum", { repo: "nixos-servers", host: "ns1" })).toBe(42);
    expect(valueOf(text, "homelab_deploy_build_duration_seconds_bucket", { repo: "nixos-servers", host: "ns1", le: "30" })).toBe(0);
    expect(valueOf(text, "homelab_deploy_build_duration_seconds_bucket", { repo: "nixos-servers", host: "ns1", le: "60" })).toBe(1);
    expect(valueOf(text, "homelab_deploy_build_last_success_timestamp", { repo: "nixos-servers" })).toBe(1_760_000_000);
    expect(changes).toBe(2);
  });

  it("does not put cancelled host builds into the duration histogram", async () => {
    const metrics = new BuildMetrics({ repos: ["nixos"], version: "9.9.9" });
    const job = new Job({ repo: "nixos", target: "all", ref: null });
    metrics.onEvent({
      type: "response",
      job,
      message: { type: "host_finished", jobId: job.id, index: 1, total: 2, host: "laptop", status: "cancelled", durationMs: 5_000 },
    });
    const text = await exposition(metrics);
    expect(valueOf(text, "homelab_deploy_build_host_total", { repo: "nixos", host: "laptop", status: "cancelled" })).toBe(1);
    expect(valueOf(text, "homelab_deploy_build_duration_seconds_count", { repo: "nixos", host: "laptop" })).toBeUndefined();
    expect(valueOf(text, "homelab_deploy_build_last_success_timestamp", { repo: "nixos" })).toBeUndefined();
  });
});
