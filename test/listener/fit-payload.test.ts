import { describe, expect, it } from "vitest";
import type { DeployCompleted } from "../../src/deploy-protocol.js";
import { deployCutSteps } from "../../src/listener/fit-payload.js";
import { fitPayload, payloadBytes } from "../../src/nats/fit-payload.js";

const huge: DeployCompleted = {
  type: "completed",
  seq: 5,
  deployId: "d0123456789",
  host: "web1",
  action: "switch",
  status: "rolled_back",
  toplevel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1",
  previous: "/nix/store/0123456789abcdfghijklmnpqrsvwxyy-nixos-system-web1-0",
  generation: 1,
  rebootRequired: false,
  changes: {
    against: "/nix/store/0123456789abcdfghijklmnpqrsvwxyy-nixos-system-web1-0",
    againstRevision: null,
    packages: Array.from({ length: 50 }, (_, i) => ({ name: `package-${i}-${"x".repeat(200)}`, before: ["1"], after: ["2"], sizeDeltaBytes: 1 })),
    sizeDeltaBytes: 50,
  },
  durationMs: 1,
  error: { code: "switch_failed", message: "switch-to-configuration switch failed", cause: "y".repeat(200_000) },
};

describe("deploy messages and max_payload", () => {
  it("cuts a completed's cause, then its package list, and always sends it", () => {
    for (const max of [100_000, 8_000, 3_000, 900]) {
      const fitted = fitPayload(huge, max, deployCutSteps) as DeployCompleted;
      expect(fitted.type).toBe("completed");
      expect(fitted.status).toBe("rolled_back");
      expect(fitted.error?.code).toBe("switch_failed");
      if (max >= 3_000) expect(payloadBytes(fitted)).toBeLessThanOrEqual(max);
    }
    const small = fitPayload(huge, 8_000, deployCutSteps) as DeployCompleted;
    expect(small.error?.cause).toMatch(/cut to fit the NATS server's max_payload\)$/);
    expect(small.changes?.omittedPackages).toBe(50);
  });
});
