/**
 * Every nix call explains its failure in nix's (or git's) words: fetching a
 * missing branch or commit, a refused connection, a flake with a syntax
 * error, an evaluation that overflows the stack. Real nix, loopback only
 * (a failed DNS lookup is covered on recorded output in log.test.ts).
 */
import { beforeAll, describe, expect, it } from "vitest";
import { NixRunner } from "../../src/nix/runner.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { refusedPort } from "../support/ports.js";

const runner = new NixRunner({ nixBin: "nix", killGraceMs: 500, logTailLines: 20, keepGoing: true });
const run = { timeoutMs: 60_000 };


function errorOf(outcome: { ok: boolean; error?: string }): string {
  expect(outcome.ok).toBe(false);
  return outcome.error ?? "";
}

describe("fetch failures name their cause", () => {
  let tiny: FixtureFlake;
  beforeAll(async () => {
    tiny = await createFixtureFlake("tiny-flake");
  });

  it("a missing branch", async () => {
    const error = errorOf(await runner.resolveFlake(tiny.url, "no-such-branch", run));
    expect(error).toMatch(/^fetching git\+file:\/\/.*\?ref=no-such-branch: no branch or tag no-such-branch: fatal: .*'no-such-branch': unknown revision/);
    expect(error).not.toMatch(/show-trace/);
  });

  it("a missing commit", async () => {
    const error = errorOf(await runner.resolveFlake(tiny.url, "0123456789".repeat(4), run));
    expect(error).toMatch(/Cannot find Git revision '0123456789{1}.*' in ref 'main'/);
  });

  it("a refused connection", async () => {
    const port = await refusedPort();
    const error = errorOf(await runner.resolveFlake(`git+http://127.0.0.1:${port}/x`, null, run));
    expect(error).toMatch(new RegExp(`^fetching git\\+http://127\\.0\\.0\\.1:${port}/x: fatal: unable to access 'http://127\\.0\\.0\\.1:${port}/x/': .*Couldn't connect to server`));
  });
});

describe("evaluation failures are eval errors with nix's location", () => {
  let broken: FixtureFlake;
  let deep: FixtureFlake;
  beforeAll(async () => {
    [broken, deep] = await Promise.all([createFixtureFlake("tiny-flake"), createFixtureFlake("tiny-flake")]);
    await broken.editFlake((text) => text.replace(/\}\s*$/, ""));
    await deep.editFlake((text) => text.replace("nixosConfigurations = {", "nixosConfigurations = let f = n: 1 + f (n + 1); in builtins.seq (f 0) {"));
  });

  it("a syntax error in flake.nix, when fetching (nix reads flake.nix) and when building a host", async () => {
    const lock = await runner.resolveFlake(broken.url, null, run);
    expect(lock).toMatchObject({ ok: false, evalError: true, location: { file: "flake.nix", line: 22, column: 7 } });
    expect(errorOf(lock)).toMatch(/^fetching git\+file:.*: syntax error, unexpected end of file/);
    const build = await runner.buildHost(broken.url, "a", run);
    expect(build).toMatchObject({ status: "eval_error", location: { file: "flake.nix", line: 22, column: 7 } });
    expect(build.error).toMatch(/^syntax error, unexpected end of file/);
  });

  it("a stack overflow", async () => {
    const lock = await runner.resolveFlake(deep.url, null, run);
    if (!lock.ok) throw new Error(lock.error);
    const listed = await runner.listHosts(lock.value.lockedUrl, run);
    expect(listed).toMatchObject({ ok: false, evalError: true });
    expect(errorOf(listed)).toBe("listing nixosConfigurations: stack overflow (possible infinite recursion)");
    const build = await runner.buildHost(lock.value.lockedUrl, "a", run);
    expect(build).toMatchObject({ status: "eval_error", error: "stack overflow (possible infinite recursion)" });
  });
});
