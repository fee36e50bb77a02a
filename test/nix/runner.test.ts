/**
 * The nix runner against real nix on the fixture flake, and against stand-in
 * "nix" executables that misbehave the ways a real one can.
 */
import { chmod, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { NixRunner, flakeUrlWithRef, supportsRef, toplevelInstallable } from "../../src/nix/runner.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { isRunning } from "../support/processes.js";

const runner = (nixBin = "nix") => new NixRunner({ nixBin, killGraceMs: 500, logTailLines: 20, keepGoing: true });
const run = { timeoutMs: 60_000 };

async function fakeNix(script: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hd-fakenix-"));
  const file = join(dir, "nix");
  await writeFile(file, `#!/bin/sh\n${script}\n`);
  await chmod(file, 0o755);
  return file;
}

describe("flake URLs", () => {
  it("pins a branch with ref= and a commit with rev=, keeping other parameters", () => {
    expect(flakeUrlWithRef("git+https://git.t-juice.club/torjus/nixos-servers.git", null)).toBe("git+https://git.t-juice.club/torjus/nixos-servers.git");
    expect(flakeUrlWithRef("git+https://git.t-juice.club/torjus/nixos-servers.git", "flake-update")).toBe(
      "git+https://git.t-juice.club/torjus/nixos-servers.git?ref=flake-update",
    );
    const rev = "0123456789abcdef0123456789abcdef01234567";
    expect(flakeUrlWithRef("git+ssh://git@host/r.git?dir=sub", rev)).toBe(`git+ssh://git@host/r.git?dir=sub&rev=${rev}`);
    expect(flakeUrlWithRef("github:torjus/nixos", "feature/x")).toBe("github:torjus/nixos?ref=feature%2Fx");
    expect(supportsRef("path:/srv/flake")).toBe(false);
    expect(supportsRef("git+file:///srv/flake")).toBe(true);
  });

  it("quotes the host in the installable", () => {
    expect(toplevelInstallable("git+file:///f?rev=abc", "ns1")).toBe('git+file:///f?rev=abc#nixosConfigurations."ns1".config.system.build.toplevel');
  });
});

describe("NixRunner with real nix", () => {
  let flake: FixtureFlake;
  let progressFlake: FixtureFlake;
  beforeAll(async () => {
    [flake, progressFlake] = await Promise.all([createFixtureFlake(), createFixtureFlake("progress-flake")]);
  });

  it("locks the flake to its head commit and lists its hosts", async () => {
    const lock = await runner().resolveFlake(flake.url, null, run);
    if (!lock.ok) throw new Error(lock.error);
    expect(lock.value.revision).toBe(await flake.head());
    expect(lock.value.lockedUrl).toContain(`rev=${await flake.head()}`);
    const hosts = await runner().listHosts(lock.value.lockedUrl, run);
    expect(hosts).toEqual({ ok: true, value: ["alpha", "beta", "broken", "delta", "gamma", "slow"] });
  });

  it("builds a host and returns its store path", async () => {
    const lock = await runner().resolveFlake(flake.url, null, run);
    if (!lock.ok) throw new Error(lock.error);
    const build = await runner().buildHost(lock.value.lockedUrl, "gamma", run);
    expect(build.status).toBe("success");
    expect(build.storePath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-gamma$/);
  });

  it("tells an evaluation error from a build failure", async () => {
    const lock = await runner().resolveFlake(progressFlake.url, null, run);
    if (!lock.ok) throw new Error(lock.error);
    const evalError = await runner().buildHost(lock.value.lockedUrl, "evalfail", run);
    expect(evalError.status).toBe("eval_error");
    expect(evalError.error).toMatch(/^attribute 'services' missing/);
    expect(evalError.error).toMatch(/flake\.nix:\d+:\d+/);
    const failure = await runner().buildHost(lock.value.lockedUrl, "failing", run);
    expect(failure.status).toBe("failure");
    expect(failure.error).toMatch(/^builder for '.*-failing-system\.drv' failed with exit code 2$/);
    expect(failure.logTail?.at(-2)).toBe("failing-system> error: the service failed to start");
  });

  it("reports a ref that does not exist as a failure with nix's reason", async () => {
    const lock = await runner().resolveFlake(flake.url, "does-not-exist", run);
    expect(lock.ok).toBe(false);
    if (!lock.ok) expect(lock.error).toMatch(/does-not-exist/);
  });
});

describe("NixRunner with a misbehaving nix", () => {
  it("reports a nix killed with 137 plainly", async () => {
    const nix = await fakeNix("echo 'some output' >&2; exit 137");
    const build = await runner(nix).buildHost("git+file:///x", "h", run);
    expect(build).toMatchObject({ status: "failure", error: "nix exited with code 137 (killed, perhaps out of memory)" });
  });

  it("does not take garbage for a store path", async () => {
    const nix = await fakeNix("echo '@nix {garbage'; echo '\\033[31m???'; echo 'not json at all'; exit 0");
    const build = await runner(nix).buildHost("git+file:///x", "h", run);
    expect(build.status).toBe("failure");
    expect(build.error).toBe("nix build succeeded but printed no store path: @nix {garbage ??? not json at all");
    const lock = await runner(nix).resolveFlake("git+file:///x", null, run);
    expect(lock).toMatchObject({ ok: false, error: expect.stringContaining("unexpected output") });
  });

  it("says when nix cannot be run at all", async () => {
    const build = await runner("/nonexistent/bin/nix").buildHost("git+file:///x", "h", run);
    expect(build.status).toBe("failure");
    expect(build.error).toMatch(/^cannot run \/nonexistent\/bin\/nix: .*ENOENT.*\(is nix on the builder's PATH\?\)$/);
  });

  it("kills descendants that escaped into their own session on timeout", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-tree-"));
    const pidFile = join(dir, "grandchild.pid");
    // Like nix's builders: the grandchild calls setsid, leaving nix's process group.
    const nix = await fakeNix(`setsid sh -c 'echo $$ > ${pidFile}; exec sleep 3600' & sleep 3600`);
    // Returning at all is the point: a runner that waited for the escaped grandchild's
    // stdout would wait the hour out (and the test's own timeout would end it).
    const build = await runner(nix).buildHost("git+file:///x", "h", { timeoutMs: 700 });
    expect(build.status).toBe("timeout");
    const pid = Number(await readFile(pidFile, "utf8"));
    expect(pid).toBeGreaterThan(1);
    expect(isRunning(pid)).toBe(false);
  });

  it("stops at once when cancelled", async () => {
    const nix = await fakeNix("exec sleep 3600");
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 200);
    const build = await runner(nix).buildHost("git+file:///x", "h", { timeoutMs: 60_000, signal: abort.signal });
    // "cancelled", not "timeout": the abort ended it, not the 60 s timeout behind it.
    expect(build.status).toBe("cancelled");
    expect(build.durationMs).toBeLessThan(60_000);
  });
});
