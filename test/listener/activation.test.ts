/**
 * The activation steps on a real nix-env profile (in a temp dir) and real
 * store paths shaped like NixOS systems; the whole deploy, with the fetch
 * from a signed cache, is test/e2e/listener.test.ts.
 */
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { Activation } from "../../src/listener/activation.js";
import { profileGeneration, rebootRequired, systemAt } from "../../src/listener/system.js";
import { NixRunner } from "../../src/nix/runner.js";

const run = promisify(execFile);

/** A kernel package in the store. */
async function kernelPackage(dir: string, version: string): Promise<string> {
  const src = join(dir, `linux-${version}`);
  await mkdir(src);
  await writeFile(join(src, "bzImage"), `linux ${version}`);
  const { stdout } = await run("nix-store", ["--add", src]);
  return stdout.trim();
}

/** A store path named like `host`'s NixOS system whose switch script appends its action to `log`. */
async function system(dir: string, host: string, version: string, log: string, { kernel = "", exit = 0 } = {}): Promise<string> {
  const src = join(dir, `nixos-system-${host}-${version}`);
  await mkdir(join(src, "bin"), { recursive: true });
  await writeFile(join(src, "bin", "switch-to-configuration"), `#!/bin/sh\necho "$1 ${version}" >> ${log}\nexit ${exit}\n`);
  await chmod(join(src, "bin", "switch-to-configuration"), 0o755);
  // As in NixOS: kernel, initrd and kernel-modules point into packages of their own.
  if (kernel) await symlink(`${kernel}/bzImage`, join(src, "kernel"));
  const { stdout } = await run("nix-store", ["--add", src]);
  return stdout.trim();
}

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), "hd-activation-"));
  const log = join(dir, "log");
  await writeFile(log, "");
  const paths = { profile: join(dir, "profiles", "system"), current: join(dir, "current"), booted: join(dir, "booted") };
  await mkdir(join(dir, "profiles"));
  const nix = new NixRunner({ nixBin: "nix", killGraceMs: 1_000, logTailLines: 20 });
  const activation = new Activation({ nix, host: "web1", repoUrl: "git+file:///nonexistent", system: paths, root: join(dir, "last-deployed-system"), timeouts: { fetch: 60_000, build: 60_000, switch: 60_000 } });
  return { dir, log, paths, activation };
}

describe("activation steps", () => {
  it("sets the profile generation by generation and switches back to an earlier one", async () => {
    const { dir, log, paths, activation } = await setup();
    const one = await system(dir, "web1", "1", log);
    const two = await system(dir, "web1", "2", log);
    expect(await activation.generation()).toBeNull();
    expect(await activation.setProfile(one)).toEqual({ ok: true, value: 1 });
    expect(await activation.setProfile(two)).toEqual({ ok: true, value: 2 });
    expect(await activation.profileSystem()).toBe(two);
    expect(await activation.switchGeneration(1)).toEqual({ ok: true, value: undefined });
    expect(await profileGeneration(paths.profile)).toBe(1);
    expect(await activation.profileSystem()).toBe(one);
    const missing = await activation.switchGeneration(7);
    expect(missing).toMatchObject({ ok: false, error: { code: "rollback_failed", message: "cannot switch the system profile back to generation 7" } });
  });

  it("runs only the system's own switch-to-configuration, and reports its failure with its output", async () => {
    const { dir, log, activation } = await setup();
    const good = await system(dir, "web1", "1", log);
    const bad = await system(dir, "web1", "2", log, { exit: 3 });
    expect(await activation.switchTo(good, "test")).toEqual({ ok: true, value: undefined });
    const failed = await activation.switchTo(bad, "switch");
    expect(failed).toMatchObject({ ok: false, error: { code: "switch_failed", message: `switch-to-configuration switch of ${bad} failed` } });
    expect(!failed.ok && failed.error.cause).toMatch(/switch-to-configuration exited with code 3/);
    expect(await readFile(log, "utf8")).toBe("test 1\nswitch 2\n");
  });

  it("accepts only this host's systems with a switch script", async () => {
    const { dir, log, activation } = await setup();
    expect(await activation.checkSystem(await system(dir, "web1", "1", log))).toEqual({ ok: true, value: undefined });
    const other = await system(dir, "web2", "1", log);
    expect(await activation.checkSystem(other)).toMatchObject({ ok: false, error: { code: "not_a_system", message: expect.stringContaining("is not a NixOS system of web1") } });
    const src = join(dir, "nixos-system-web1-noswitch");
    await mkdir(src);
    const { stdout } = await run("nix-store", ["--add", src]);
    expect(await activation.checkSystem(stdout.trim())).toMatchObject({ ok: false, error: { code: "not_a_system", message: expect.stringContaining("has no bin/switch-to-configuration") } });
  });
});

describe("system links", () => {
  it("reads what a link points to only when it is a store path", async () => {
    const { dir, log } = await setup();
    const one = await system(dir, "web1", "1", log);
    await symlink(one, join(dir, "current"));
    await symlink(dir, join(dir, "elsewhere"));
    expect(await systemAt(join(dir, "current"))).toBe(one);
    expect(await systemAt(join(dir, "elsewhere"))).toBeNull();
    expect(await systemAt(join(dir, "missing"))).toBeNull();
  });

  it("requires a reboot when the kernel differs from the booted system's", async () => {
    const { dir, log } = await setup();
    const [k1, k2] = [await kernelPackage(dir, "6.6.1"), await kernelPackage(dir, "6.6.2")];
    const booted = await system(dir, "web1", "1", log, { kernel: k1 });
    const sameKernel = await system(dir, "web1", "2", log, { kernel: k1 });
    const newKernel = await system(dir, "web1", "3", log, { kernel: k2 });
    expect(await rebootRequired(booted, booted)).toBe(false);
    expect(await rebootRequired(sameKernel, booted)).toBe(false);
    expect(await rebootRequired(newKernel, booted)).toBe(true);
    expect(await rebootRequired(newKernel, null)).toBe(false);
  });
});
