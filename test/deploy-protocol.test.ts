import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  DeployDiscoverResponseSchema,
  DeployRequestSchema,
  DeployResponseSchema,
  classifyDeploySubject,
  deploySubject,
  isSystemOfHost,
  isValidDeployHost,
  isValidDeployReplySubject,
  isValidTier,
} from "../src/deploy-protocol.js";
import { MAX_REQUEST_BYTES, parseRequestBody } from "../src/util/json.js";
import { ROOT } from "./support/cli.js";

const SYSTEM = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-25.05";
const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
const parseRequest = (text: string) => parseRequestBody(encode(text), DeployRequestSchema, "a deploy request");

describe("deploy names", () => {
  it("accepts tiers of lower-case letters, digits and -, starting with a letter", () => {
    for (const ok of ["test", "prod", "a", "staging-2", "x".repeat(63)]) expect(isValidTier(ok), ok).toBe(true);
    for (const bad of ["", "Test", "1prod", "-prod", "pr od", "prod.x", "prod>", "*", "pr_od", "x".repeat(64), "a\nb", "responses", "discover", "ä"]) {
      expect(isValidTier(bad), bad).toBe(false);
    }
  });

  it("takes host names as the builder does, except `all`, which addresses every host", () => {
    expect(isValidDeployHost("web1")).toBe(true);
    for (const bad of ["all", "", "a.b", "$(id)", "a b", "..", "-rf", "a\nb"]) expect(isValidDeployHost(bad), bad).toBe(false);
  });

  it("tells a host's own system from another host's", () => {
    expect(isSystemOfHost(SYSTEM, "web1")).toBe(true);
    expect(isSystemOfHost(SYSTEM, "web")).toBe(false);
    expect(isSystemOfHost(SYSTEM.replace("web1", "web10"), "web1")).toBe(false);
    expect(isSystemOfHost("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-web1-1", "web1")).toBe(false);
  });
});

describe("deploy subjects", () => {
  it("builds and classifies host, all and role subjects", () => {
    expect(deploySubject("test", { kind: "host", host: "web1" })).toBe("deploy.test.web1");
    expect(deploySubject("test", { kind: "all" })).toBe("deploy.test.all");
    expect(deploySubject("prod", { kind: "role", role: "dns" })).toBe("deploy.prod.role.dns");
    expect(classifyDeploySubject("deploy.test.web1")).toEqual({ kind: "deploy", tier: "test", target: { kind: "host", host: "web1" } });
    expect(classifyDeploySubject("deploy.test.all")).toEqual({ kind: "deploy", tier: "test", target: { kind: "all" } });
    expect(classifyDeploySubject("deploy.prod.role.dns")).toEqual({ kind: "deploy", tier: "prod", target: { kind: "role", role: "dns" } });
    expect(classifyDeploySubject("deploy.discover")).toEqual({ kind: "discover" });
    expect(classifyDeploySubject("deploy.responses.x.y")).toEqual({ kind: "response" });
  });

  it("calls anything else invalid", () => {
    for (const bad of ["deploy", "deploy.test", "deploy.Test.web1", "deploy.test.web1.x", "deploy.test.role.a.b", "deploy.test.role.a b", "build.test.web1", "deploy.test.a b"]) {
      expect(classifyDeploySubject(bad).kind, bad).toBe("invalid");
    }
  });

  it("answers only on concrete subjects under deploy.responses.", () => {
    expect(isValidDeployReplySubject("deploy.responses.abc.1")).toBe(true);
    for (const bad of [undefined, "", "_INBOX.x", "deploy.responses.", "deploy.responses.>", "deploy.responses.*", "deploy.test.web1", "build.responses.x", "deploy.responses..x", "deploy.responses.a b", `deploy.responses.${"x".repeat(300)}`]) {
      expect(isValidDeployReplySubject(bad), String(bad)).toBe(false);
    }
  });
});

describe("deploy request bodies", () => {
  it("reads an empty body as a switch", () => {
    expect(parseRequest("")).toEqual({ ok: true, value: { action: "switch" } });
    expect(parseRequest("  \n")).toEqual({ ok: true, value: { action: "switch" } });
    expect(parseRequest("{}")).toEqual({ ok: true, value: { action: "switch" } });
  });

  it("takes every action, a ref and a toplevel store path", () => {
    for (const action of ["switch", "boot", "test", "dry-activate"]) {
      expect(parseRequest(JSON.stringify({ action }))).toEqual({ ok: true, value: { action } });
    }
    expect(parseRequest(JSON.stringify({ action: "boot", ref: "flake-update", toplevel: SYSTEM }))).toEqual({
      ok: true,
      value: { action: "boot", ref: "flake-update", toplevel: SYSTEM },
    });
  });

  it("refuses unknown actions and keys, bad refs and toplevels that are not store paths", () => {
    const bad = [
      { action: "reboot" },
      { action: "switch; rm -rf /" },
      { action: "switch", extra: 1 },
      { ref: "--upload-pack=x" },
      { ref: "a..b" },
      { ref: "main\nx" },
      { toplevel: "/etc/passwd" },
      { toplevel: "relative/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1" },
      { toplevel: "/nix/store/../0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1" },
      { toplevel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1/../../etc" },
      { toplevel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1\n" },
      { toplevel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos system" },
      { toplevel: "/nix/store/short-nixos-system-web1-1" },
      { toplevel: 42 },
    ];
    for (const body of bad) {
      const parsed = parseRequest(JSON.stringify(body));
      expect(parsed.ok, JSON.stringify(body)).toBe(false);
      if (!parsed.ok) expect(parsed.error).toMatch(/^malformed request body: .+; expected a deploy request$/);
    }
  });

  it("refuses what is not JSON and bodies over the limit, before parsing them", () => {
    expect(parseRequest("switch")).toEqual({ ok: false, error: "request body is not JSON; send a deploy request" });
    const huge = JSON.stringify({ action: "switch", ref: "x".repeat(MAX_REQUEST_BYTES) });
    expect(parseRequest(huge)).toEqual({ ok: false, error: `request body too large (${huge.length} bytes, at most ${MAX_REQUEST_BYTES})` });
    expect(parseRequest("[]").ok).toBe(false);
    expect(parseRequest("null").ok).toBe(false);
  });
});

describe("deploy answers", () => {
  const base = { seq: 1, deployId: "d0123456789", host: "web1" };

  it("parses every answer a deployer can get", () => {
    const messages = [
      { type: "accepted", ...base, tier: "test", action: "switch", ref: null, toplevel: SYSTEM },
      { type: "rejected", host: "web1", code: "busy", error: "deploy d0123456789 is running", runningDeployId: "d0123456789" },
      { type: "started", ...base, seq: 2, action: "switch", toplevel: SYSTEM, prebuilt: true },
      {
        type: "progress",
        ...base,
        seq: 2,
        phase: "fetching",
        elapsedMs: 10,
        derivations: { done: 0, expected: 0, running: 0, failed: 0 },
        substitutions: { done: 1, expected: 3, running: 1, failed: 0 },
        downloadedBytes: 100,
        expectedDownloadBytes: 300,
        building: null,
      },
      { type: "activating", ...base, seq: 3, action: "switch", toplevel: SYSTEM, previous: null, generation: 2 },
      { type: "health", ...base, seq: 4, ok: false, natsConfirmed: true, checks: [{ argv: ["false"], ok: false, exitCode: 1, durationMs: 3, error: "exited 1" }] },
      { type: "resumed", ...base, seq: 5, activated: true },
      {
        type: "completed",
        ...base,
        seq: 6,
        action: "switch",
        status: "rolled_back",
        toplevel: SYSTEM,
        previous: SYSTEM.replace("25.05", "24.11"),
        generation: 1,
        rebootRequired: false,
        changes: null,
        durationMs: 1234,
        error: { code: "health_failed", message: "health command false failed", cause: "exited 1" },
      },
    ];
    for (const message of messages) expect(DeployResponseSchema.parse(message)).toEqual(message);
  });

  it("refuses an unknown status or error code", () => {
    const completed = { type: "completed", ...base, action: "switch", toplevel: null, previous: null, generation: null, rebootRequired: false, changes: null, durationMs: 1 };
    expect(DeployResponseSchema.safeParse({ ...completed, status: "ok" }).success).toBe(false);
    expect(DeployResponseSchema.safeParse({ ...completed, status: "failure", error: { code: "oops", message: "x" } }).success).toBe(false);
  });

  it("parses a discover answer", () => {
    const answer = {
      type: "discover",
      host: "web1",
      tier: "test",
      roles: ["web"],
      repo: { name: "nixos-servers", url: "git+https://git.example.org/nixos-servers" },
      current: SYSTEM,
      booted: SYSTEM,
      rebootRequired: false,
      busy: null,
      version: "1.0.0",
    };
    expect(DeployDiscoverResponseSchema.parse(answer)).toEqual(answer);
  });
});

describe("docs/protocol.md's deploy section", () => {
  it("shows only deploy messages the schemas accept, every type at least once", async () => {
    const doc = await readFile(join(ROOT, "docs", "protocol.md"), "utf8");
    const blocks = [...doc.matchAll(/```json deploy\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1] as string) as { type: string });
    for (const block of blocks) {
      const parsed = DeployResponseSchema.safeParse(block);
      expect(parsed.success, `${JSON.stringify(block)}\n${parsed.error?.message}`).toBe(true);
    }
    expect(new Set(blocks.map((b) => b.type))).toEqual(new Set(["accepted", "rejected", "started", "progress", "activating", "heartbeat", "health", "resumed", "completed"]));
    const discover = [...doc.matchAll(/```json deploy-discover\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1] as string) as unknown);
    expect(discover).toHaveLength(1);
    for (const answer of discover) expect(DeployDiscoverResponseSchema.safeParse(answer).success).toBe(true);
    const request = /```json\n(\{"action"[\s\S]*?)```/.exec(doc)?.[1];
    expect(parseRequestBody(encode(request ?? ""), DeployRequestSchema, "").ok).toBe(true);
  });
});
