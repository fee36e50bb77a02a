/** How the answers of several builders to one control request combine. */
import { describe, expect, it } from "vitest";
import { combineAnswers } from "../../src/client/gather.js";
import type { ControlResponse, StatusResponse } from "../../src/protocol.js";

const status = (builder: string, jobId?: string): StatusResponse => ({
  type: "status",
  version: "0.1.0",
  builder,
  running: null,
  queued: jobId ? [{ jobId, repo: "r", target: "all", ref: null, position: 1, requesters: 1, enqueuedAt: "2026-12-01T00:00:00.000Z" }] : [],
});
const unknownJob: ControlResponse = { type: "rejected", code: "unknown_job", error: "no queued or running job j0000000001 (it may have finished already)" };

describe("combineAnswers", () => {
  it("keeps one answer per builder, sorted by name (a builder heard twice counts once)", () => {
    const combined = combineAnswers("status", [status("nix-cache03"), status("nix-cache02"), status("nix-cache03", "j0000000001")]);
    expect(combined).toEqual({ ok: true, builders: 3, answers: [status("nix-cache02"), status("nix-cache03", "j0000000001")] });
  });

  it("takes the holder's cancel answer over the others' unknown_job, whatever came first", () => {
    const holder: ControlResponse = { type: "cancel", jobId: "j0000000001", outcome: "removed" };
    expect(combineAnswers("cancel", [unknownJob, holder, unknownJob])).toEqual({ ok: true, builders: 3, answers: [holder] });
  });

  it("says unknown_job only when no builder has the job, and how many were asked", () => {
    expect(combineAnswers("cancel", [unknownJob])).toEqual({ ok: false, builders: 1, rejected: unknownJob });
    const combined = combineAnswers("cancel", [unknownJob, unknownJob]);
    expect(combined.ok).toBe(false);
    if (!combined.ok) {
      expect(combined.rejected.code).toBe("unknown_job");
      expect(combined.rejected.error).toBe(`${unknownJob.type === "rejected" ? unknownJob.error : ""}; none of the 2 builders that answered has it`);
    }
  });

  it("reports a refusal other than unknown_job first (a bad request is refused by all)", () => {
    const malformed: ControlResponse = { type: "rejected", code: "malformed_payload", error: "expected nothing" };
    expect(combineAnswers("status", [malformed, malformed])).toEqual({ ok: false, builders: 2, rejected: malformed });
    expect(combineAnswers("cancel", [unknownJob, malformed])).toEqual({ ok: false, builders: 2, rejected: malformed });
  });
});
