/** The deployer's choices that need no network: which listeners a target addresses, which build a host gets, what it is sent. */
import { describe, expect, it } from "vitest";
import type { DeployDiscoverResponse } from "../../src/deploy-protocol.js";
import type { HistoryEntry } from "../../src/protocol.js";
import { addressed, fleetRows, newestBuild, parseTarget, requestBody } from "../../src/client/deploy.js";
import { UsageError } from "../../src/errors.js";

const listener = (host: string, tier: string, roles: string[] = []): DeployDiscoverResponse => ({
  type: "discover",
  host,
  tier,
  roles,
  repo: { name: "fleet", url: "git+file:///srv/fleet" },
  current: `/nix/store/${"c".repeat(32)}-nixos-system-${host}-1`,
  booted: `/nix/store/${"c".repeat(32)}-nixos-system-${host}-1`,
  rebootRequired: false,
  busy: null,
  version: "0.0.0",
});

const entry = (host: string, storePath: string, finishedAt: string, extra: Partial<HistoryEntry> = {}): HistoryEntry => ({
  host,
  jobId: "j0123456789",
  revision: "a".repeat(40),
  ref: null,
  status: "success",
  durationMs: 1000,
  storePath,
  finishedAt,
  ...extra,
});

describe("targets", () => {
  it("parses a host, all and role:NAME, and refuses anything else", () => {
    expect(parseTarget("web1")).toEqual({ kind: "host", host: "web1" });
    expect(parseTarget("all")).toEqual({ kind: "all" });
    expect(parseTarget("role:dns")).toEqual({ kind: "role", role: "dns" });
    for (const bad of ["role:", "role:a.b", "-x", "a b", "web1;reboot", "deploy.prod"]) expect(() => parseTarget(bad), bad).toThrow(UsageError);
  });

  it("addresses the tier's listeners only: one host, all, or those with the role", () => {
    const fleet = [listener("b", "test", ["dns"]), listener("a", "test"), listener("c", "prod", ["dns"]), listener("a", "test")];
    expect(addressed(fleet, "test", { kind: "all" }).map((l) => l.host)).toEqual(["a", "b"]);
    expect(addressed(fleet, "test", { kind: "role", role: "dns" }).map((l) => l.host)).toEqual(["b"]);
    expect(addressed(fleet, "prod", { kind: "host", host: "a" })).toEqual([]);
  });
});

describe("which build a host gets", () => {
  const history = [
    entry("web1", "/nix/store/old-nixos-system-web1-1", "2026-11-01T10:00:00.000Z"),
    entry("web1", "/nix/store/new-nixos-system-web1-2", "2026-11-02T10:00:00.000Z"),
    entry("web1", "/nix/store/failed", "2026-11-03T10:00:00.000Z", { status: "failure", storePath: undefined }),
    entry("web1", "/nix/store/branch-nixos-system-web1-3", "2026-11-04T10:00:00.000Z", { ref: "flake-update" }),
  ];
  it("the newest successful build of the default branch, or of --ref; none when never built", () => {
    expect(newestBuild(history, "web1", undefined)?.toplevel).toBe("/nix/store/new-nixos-system-web1-2");
    expect(newestBuild(history, "web1", "flake-update")?.toplevel).toBe("/nix/store/branch-nixos-system-web1-3");
    expect(newestBuild(history, "web2", undefined)).toBeUndefined();
    expect(newestBuild(history, "web1", "other")).toBeUndefined();
  });

  it("a host is behind when it does not run the newest build; unknown without one", () => {
    const rows = fleetRows([listener("web1", "test"), listener("web2", "test")], new Map([["web1", { toplevel: "/nix/store/new", revision: null, ref: null, finishedAt: "" }]]));
    expect(rows.map((r) => [r.host, r.built, r.behind])).toEqual([
      ["web1", "/nix/store/new", true],
      ["web2", null, null],
    ]);
  });
});

describe("the request body", () => {
  it("is empty for a plain switch, names the toplevel when prebuilt, the ref only when the host evaluates", () => {
    expect(requestBody({ tier: "test", action: "switch" }, undefined)).toEqual({});
    expect(requestBody({ tier: "test", action: "boot", ref: "x" }, "/nix/store/p")).toEqual({ action: "boot", toplevel: "/nix/store/p" });
    expect(requestBody({ tier: "test", action: "test", ref: "x" }, undefined)).toEqual({ action: "test", ref: "x" });
  });
});
