/**
 * The health check's two halves: the operator's commands (real processes
 * through the supervisor) and NATS reached again, here a stand-in confirm
 * function so the retry and deadline rules can be driven exactly; the real
 * NATS pause is test/e2e/listener.test.ts.
 */
import { describe, expect, it } from "vitest";
import { Activation } from "../../src/listener/activation.js";
import { checkHealth } from "../../src/listener/health.js";
import { NixRunner } from "../../src/nix/runner.js";

const activation = new Activation({
  nix: new NixRunner({ nixBin: "nix", killGraceMs: 500, logTailLines: 20 }),
  host: "web1",
  repoUrl: "git+file:///nonexistent",
  system: { profile: "/nonexistent/profile", current: "/nonexistent/current", booted: "/nonexistent/booted" },
  root: "/nonexistent/last-deployed-system",
  timeouts: { fetch: 1_000, build: 1_000, switch: 1_000 },
});

const confirmed = () => Promise.resolve();

describe("health check", () => {
  it("runs every command in order and reports each, with the failing one's exit code and output", async () => {
    const report = await checkHealth({
      activation,
      commands: [["/bin/true"], ["/bin/sh", "-c", "echo 'unit nginx.service failed' >&2; exit 3"], ["/bin/true"]],
      timeoutMs: 20_000,
      confirmTimeoutMs: 20_000,
      confirmNats: confirmed,
    });
    expect(report.ok).toBe(false);
    expect(report.natsConfirmed).toBe(true);
    expect(report.checks.map((c) => [c.argv[0], c.ok, c.exitCode])).toEqual([
      ["/bin/true", true, 0],
      ["/bin/sh", false, 3],
      ["/bin/true", true, 0],
    ]);
    expect(report.checks[1]?.error).toBe("/bin/sh exited with code 3\nunit nginx.service failed");
  });

  it("ends a command that outlasts the health timeout, and does not start the rest", async () => {
    const report = await checkHealth({ activation, commands: [["/bin/sleep", "30"], ["/bin/true"]], timeoutMs: 300, confirmTimeoutMs: 20_000, confirmNats: confirmed });
    expect(report.ok).toBe(false);
    expect(report.checks[0]).toMatchObject({ ok: false, exitCode: null, error: expect.stringMatching(/^\/bin\/sleep timed out after/) });
    expect(report.checks[1]).toMatchObject({ ok: false, error: "not run: the health timeout had passed" });
  });

  it("tries NATS again after a failed flush until the confirm timeout", async () => {
    let attempts = 0;
    const flaky = () => (++attempts < 3 ? Promise.reject(new Error("NATS is disconnected")) : Promise.resolve());
    const report = await checkHealth({ activation, commands: [], timeoutMs: 1_000, confirmTimeoutMs: 20_000, confirmNats: flaky });
    expect(report).toEqual({ ok: true, checks: [], natsConfirmed: true });
    expect(attempts).toBe(3);

    const never = () => new Promise<void>(() => undefined);
    expect(await checkHealth({ activation, commands: [["/bin/true"]], timeoutMs: 1_000, confirmTimeoutMs: 200, confirmNats: never })).toMatchObject({
      ok: false,
      natsConfirmed: false,
      checks: [{ ok: true }],
    });
    const down = () => Promise.reject(new Error("NATS is closed"));
    expect((await checkHealth({ activation, commands: [], timeoutMs: 1_000, confirmTimeoutMs: 1_200, confirmNats: down })).natsConfirmed).toBe(false);
  });
});
