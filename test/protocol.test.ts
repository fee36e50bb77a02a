import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  BuildResponseSchema,
  ControlResponseSchema,
  classifySubject,
  isValidHostName,
  isValidRef,
  isValidReplySubject,
  isValidRepoName,
} from "../src/protocol.js";
import { ROOT } from "./support/cli.js";

describe("names", () => {
  it("accepts NixOS host names and nothing a shell or nix could misread", () => {
    for (const ok of ["ns1", "nix-cache02", "testvm01", "a", "host_1", "A1", "x".repeat(63)]) expect(isValidHostName(ok), ok).toBe(true);
    for (const bad of ["", "-rf", "a-", "a;b", "$(id)", "a b", "a.b", "x".repeat(64), "a/b", "..", "ä", "a\nb", "*", ">"]) {
      expect(isValidHostName(bad), bad).toBe(false);
    }
  });

  it("accepts branches, tags and commit ids, and refuses what git or nix would read as something else", () => {
    for (const ok of ["main", "master", "flake-update/2026-11-24", "v1.2.3", "release_1", "a".repeat(40), "0123456789abcdef0123456789abcdef01234567"]) {
      expect(isValidRef(ok), ok).toBe(true);
    }
    for (const bad of ["", "-main", "--upload-pack=x", "a..b", "a//b", "feature/", "main.lock", "x.", "a/.b", "main;id", "$(id)", " main", "a b", "a\nb", "@{-1}", "x".repeat(201)]) {
      expect(isValidRef(bad), bad).toBe(false);
    }
  });

  it("reserves the control tokens as repo names", () => {
    expect(isValidRepoName("nixos-servers")).toBe(true);
    for (const reserved of ["responses", "discover", "status", "cancel", "history"]) expect(isValidRepoName(reserved)).toBe(false);
  });
});

describe("subjects", () => {
  it("tells requests, responses, control and garbage apart", () => {
    expect(classifySubject("build.nixos-servers.all")).toEqual({ kind: "build", repo: "nixos-servers", target: "all" });
    expect(classifySubject("build.responses.abc")).toEqual({ kind: "response" });
    expect(classifySubject("build.responses.a.b.c")).toEqual({ kind: "response" });
    expect(classifySubject("build.responses")).toEqual({ kind: "response" });
    expect(classifySubject("build.status")).toEqual({ kind: "control", name: "status" });
    expect(classifySubject("build.nixos-servers")).toMatchObject({ kind: "invalid" });
    expect(classifySubject("build.a.b.c")).toMatchObject({ kind: "invalid" });
  });

  it("only answers on reply subjects the builder may publish to", () => {
    expect(isValidReplySubject("build.responses.x1")).toBe(true);
    expect(isValidReplySubject("build.responses.a.b")).toBe(true);
    for (const bad of [undefined, "", "_INBOX.abc", "build.responses.", "build.responses.*", "build.responses.>", "deploy.responses.x", `build.responses.${"x".repeat(300)}`]) {
      expect(isValidReplySubject(bad), String(bad)).toBe(false);
    }
  });
});

describe("docs/protocol.md", () => {
  it("shows only messages that the schemas accept", async () => {
    const doc = await readFile(join(ROOT, "docs", "protocol.md"), "utf8");
    const blocks = [...doc.matchAll(/```json response\n([\s\S]*?)```/g)].map((m) => m[1] as string);
    expect(blocks.length).toBeGreaterThanOrEqual(7);
    for (const block of blocks) {
      const parsed = BuildResponseSchema.safeParse(JSON.parse(block));
      expect(parsed.success, `${block}\n${parsed.error?.message}`).toBe(true);
    }
    const types = new Set(blocks.map((b) => (JSON.parse(b) as { type: string }).type));
    for (const type of ["accepted", "queued", "job_started", "evaluating", "host_started", "progress", "heartbeat", "host_finished", "interrupted", "resumed", "completed", "rejected"]) {
      expect(types.has(type), type).toBe(true);
    }
  });

  it("shows only control answers that the schemas accept", async () => {
    const doc = await readFile(join(ROOT, "docs", "protocol.md"), "utf8");
    const blocks = [...doc.matchAll(/```json control\n([\s\S]*?)```/g)].map((m) => m[1] as string);
    const types = blocks.map((block) => {
      const parsed = ControlResponseSchema.safeParse(JSON.parse(block));
      expect(parsed.success, `${block}\n${parsed.error?.message}`).toBe(true);
      return (JSON.parse(block) as { type: string }).type;
    });
    expect(new Set(types)).toEqual(new Set(["discover", "status", "cancel", "history", "rejected"]));
  });
});
