/** What a person sees of a deploy: the plan, event lines, live lines per host, the summary table and the fleet list. */
import { describe, expect, it } from "vitest";
import type { DeployResponse } from "../../src/deploy-protocol.js";
import type { HostOutcome } from "../../src/client/deploy.js";
import { createDeployReporter, deploySummaryTable, describeDeployMessage, describePlan, fleetTable } from "../../src/client/deploy-report.js";

const A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web1-1";
const B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-web1-2";
const base = { deployId: "d0123456789", host: "web1" };

const success: Extract<DeployResponse, { type: "completed" }> = {
  type: "completed",
  seq: 6,
  ...base,
  action: "switch",
  status: "success",
  toplevel: B,
  previous: A,
  generation: 7,
  rebootRequired: true,
  changes: { against: A, againstRevision: null, packages: [{ name: "openssl", before: ["3.0.1"], after: ["3.0.2"], sizeDeltaBytes: 0 }], sizeDeltaBytes: 1024 * 1024 * 1.5 },
  durationMs: 4200,
};
const rolledBack: Extract<DeployResponse, { type: "completed" }> = {
  ...success,
  host: "web2",
  status: "rolled_back",
  toplevel: B.replace("web1", "web2"),
  previous: A.replace("web1", "web2"),
  rebootRequired: false,
  changes: null,
  durationMs: 31_000,
  error: { code: "health_failed", message: "a health command failed", cause: "systemctl is-system-running: degraded\n" },
};

function terminal(isTTY: boolean) {
  const chunks: string[] = [];
  return { out: { isTTY, columns: 200, write: (text: string) => chunks.push(text) }, text: () => chunks.join("") };
}

describe("deploy lines", () => {
  it("say whether a host gets the builder's system or evaluates itself", () => {
    expect(describePlan({ host: "web1", toplevel: B }, "test")).toBe(`web1: deploying the builder's ${B} (test)`);
    expect(describePlan({ host: "web1", evaluatedBecause: "never_built" }, "test")).toBe("web1: the builder has never built it; evaluating on the host (test)");
    expect(describePlan({ host: "web1", evaluatedBecause: "no_prebuilt" }, "test")).toBe("web1: evaluating on the host (test)");
  });

  it("show the result, the generation, a pending reboot and what changed; a rollback with its cause", () => {
    expect(describeDeployMessage(success)).toEqual([
      `web1: success in 4.2s → ${B} (generation 7); reboot required`,
      "    1 package changed (openssl 3.0.1 → 3.0.2), +1.5 MiB",
    ]);
    expect(describeDeployMessage(rolledBack)).toEqual([
      "web2: rolled_back in 31.0s: health_failed: a health command failed",
      `    back on ${A.replace("web1", "web2")}`,
      "    │ systemctl is-system-running: degraded",
    ]);
    expect(describeDeployMessage({ type: "rejected", host: "web1", code: "busy", error: "a deploy is running", runningDeployId: "d9999999999" })).toEqual([
      "web1: rejected (busy): a deploy is running (running: d9999999999)",
    ]);
    expect(
      describeDeployMessage({ type: "started", seq: 2, ...base, action: "switch", toplevel: B, prebuilt: true }),
    ).toEqual([`web1: started switch of ${B} (prebuilt: fetched from the cache, no evaluation)`]);
  });
});

describe("the summary table", () => {
  it("has a row per host, sorted, with what ended each: completed, rejected, not built, no answer", () => {
    const outcomes: HostOutcome[] = [
      { kind: "completed", host: "web2", message: rolledBack },
      { kind: "completed", host: "web1", message: success },
      { kind: "no_answer", host: "web4", error: "the listener was discovered but did not answer the deploy request (nothing for 600s)" },
      { kind: "not_built", host: "web3", error: "the builder did not build it (failure): builder for x failed" },
    ];
    const table = deploySummaryTable(outcomes);
    expect(table[0]).toMatch(/^HOST\s+STATUS\s+ACTION\s+DURATION\s+REBOOT\s+CHANGES\s+RESULT$/);
    expect(table.slice(1).map((l) => l.split(/\s{2,}/))).toEqual([
      ["web1", "success", "switch", "4.2s", "yes", "1 package, +1.5 MiB", B],
      ["web2", "rolled_back", "switch", "31.0s", "no", "health_failed: a health command failed"],
      ["web3", "not built", "the builder did not build it (failure): builder for x failed"],
      ["web4", "no answer", "the listener was discovered but did not answer the deploy request (nothing for 600s)"],
    ]);
  });
});

describe("reporters", () => {
  it("plain: lines only, then the table", () => {
    const t = terminal(false);
    const reporter = createDeployReporter({ json: false, out: t.out });
    reporter.planned({ host: "web1", toplevel: B }, "test");
    reporter.message(success);
    reporter.finish([{ kind: "completed", host: "web1", message: success }]);
    expect(t.text()).not.toContain("\x1b");
    expect(t.text()).toContain(`web1: deploying the builder's ${B} (test)\nweb1: success in 4.2s`);
    expect(t.text()).toMatch(/\nHOST +STATUS/);
  });

  it("terminal: one live line per host still deploying, cleared before each event line", () => {
    const t = terminal(true);
    const reporter = createDeployReporter({ json: false, out: t.out, env: { NO_COLOR: "1" } });
    reporter.planned({ host: "web1", toplevel: B }, "test");
    reporter.planned({ host: "web2", toplevel: B }, "test");
    reporter.message({ type: "activating", seq: 4, ...base, action: "switch", toplevel: B, previous: A, generation: 7 });
    const live = (reporter as unknown as { liveLines(now?: number): string[] }).liveLines();
    expect(live).toHaveLength(2);
    expect(live[0]).toMatch(/^web1: activating \(switch\) · \d/);
    expect(live[1]).toMatch(/^web2: waiting for the listener · \d/);
    reporter.message(success);
    expect((reporter as unknown as { liveLines(): string[] }).liveLines().map((l) => l.split(":")[0])).toEqual(["web2"]);
    reporter.close();
    // Two live lines are cleared by going up one line.
    expect(t.text()).toContain("\r\x1b[2K\x1b[1A\x1b[2K");
  });

  it("--json: the plan and every message as one JSON line each", () => {
    const t = terminal(false);
    const reporter = createDeployReporter({ json: true, out: t.out });
    reporter.planned({ host: "web1", evaluatedBecause: "never_built" }, "test");
    reporter.message(success);
    reporter.outcome({ kind: "no_answer", host: "web4", error: "silent" });
    const lines = t.text().trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toEqual([
      { type: "plan", host: "web1", tier: "test", toplevel: null, prebuilt: false, evaluatedBecause: "never_built" },
      success,
      { type: "no_answer", host: "web4", error: "silent" },
    ]);
  });
});

describe("the fleet list", () => {
  it("shows what runs and booted, the newest build, whether the host is behind, reboots and busy hosts", () => {
    const lines = fleetTable([
      { host: "web1", tier: "prod", roles: ["web"], current: A, booted: A, built: B, behind: true, rebootRequired: false, busy: null },
      { host: "web2", tier: "prod", roles: [], current: B, booted: A, built: B, behind: false, rebootRequired: true, busy: "d0123456789" },
      { host: "web3", tier: "test", roles: [], current: A, booted: A, built: null, behind: null, rebootRequired: false, busy: null },
    ]);
    expect(lines.map((l) => l.split(/\s{2,}/))).toEqual([
      ["HOST", "TIER", "ROLES", "STATE", "REBOOT", "BUSY", "RUNNING", "BOOTED", "BUILT"],
      ["web1", "prod", "web", "behind", "no", "-", A, "same", B],
      ["web2", "prod", "-", "up to date", "yes", "d0123456789", B, A, "same"],
      ["web3", "test", "-", "never built", "no", "-", A, "same", "-"],
    ]);
  });
});
