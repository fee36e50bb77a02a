import { describe, expect, it } from "vitest";
import { fitBuildPayload as fitPayload } from "../../src/builder/fit-payload.js";
import { payloadBytes } from "../../src/nats/fit-payload.js";
import type { Completed, HostFinished } from "../../src/protocol.js";

const longError = (n: number) => `error of host${n}: ${"x".repeat(5_000)}`;

function completed(hosts: number): Completed {
  return {
    type: "completed",
    jobId: "j0123456789",
    repo: "r",
    target: "all",
    ref: null,
    status: "failure",
    revision: null,
    durationMs: 1,
    results: Array.from({ length: hosts }, (_, n) => ({ host: `h${n}`, status: "eval_error", durationMs: 1, error: longError(n) })),
  };
}

describe("fitPayload", () => {
  it("leaves a message that fits alone", () => {
    const message = completed(2);
    expect(fitPayload(message, 1_000_000)).toBe(message);
    expect(fitPayload(message, undefined)).toBe(message);
  });

  it("cuts the errors a completed repeats, keeping every host's status", () => {
    const fitted = fitPayload(completed(24), 65_536);
    expect(payloadBytes(fitted)).toBeLessThanOrEqual(65_536);
    expect(fitted.results.map((r) => r.status)).toEqual(Array(24).fill("eval_error"));
    expect(fitted.results[0]?.error).toMatch(/^error of host0: x+… \(cut to fit the NATS server's max_payload\)$/);
  });

  it("drops the results of a completed too large even without errors, and says so", () => {
    const fitted = fitPayload(completed(2_000), 16_384);
    expect(payloadBytes(fitted)).toBeLessThanOrEqual(16_384);
    expect(fitted).toMatchObject({ type: "completed", status: "failure", results: [] });
    expect(fitted.error).toMatch(/the 2000 host results did not fit the NATS server's max_payload: each host_finished has its own/);
  });

  it("keeps the newest log lines of a host_finished", () => {
    const message: HostFinished = {
      type: "host_finished",
      jobId: "j0123456789",
      index: 1,
      total: 1,
      host: "h",
      status: "failure",
      durationMs: 1,
      error: "builder failed",
      logTail: Array.from({ length: 100 }, (_, i) => `line ${i} ${"y".repeat(300)}`),
    };
    const fitted = fitPayload(message, 8_192);
    expect(payloadBytes(fitted)).toBeLessThanOrEqual(8_192);
    expect(fitted.logTail?.at(-1)).toMatch(/^line 99 /);
    expect(fitted.error).toBe("builder failed");
  });
});
