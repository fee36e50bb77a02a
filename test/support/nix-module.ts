/**
 * Evaluates nix/module.nix (the builder and scheduled-builds NixOS modules)
 * with nix-instantiate and the stand-in lib, pkgs and module system of
 * test/fixtures/nix-module-eval, for the operator's definitions given as a
 * JS object. Packages are directories: this checkout's CLI behind a
 * wrapper (as the Nix package's bin/homelab-deploy is), and the nix and git
 * this machine has.
 */
import { execFile } from "node:child_process";
import { mkdtemp, realpath, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { CLI, ROOT } from "./cli.js";

const run = promisify(execFile);
const EVAL = join(ROOT, "test", "fixtures", "nix-module-eval", "eval.nix");

export interface Unit {
  description?: string;
  wantedBy?: string[];
  wants?: string[];
  after?: string[];
  path?: string[];
  environment?: Record<string, string>;
  unitConfig?: Record<string, unknown>;
  serviceConfig: Record<string, unknown>;
}

export interface ModuleOutput {
  systemd?: {
    services?: Record<string, Unit>;
    timers?: Record<string, { wantedBy?: string[]; timerConfig: Record<string, unknown>; description?: string }>;
    tmpfiles?: { rules: string[] };
  };
  users?: { users?: Record<string, Record<string, unknown>>; groups?: Record<string, unknown> };
  networking?: { firewall?: { allowedTCPPorts?: number[] } };
}

export interface Evaluation {
  failedAssertions: string[];
  output: ModuleOutput;
}

export interface Packages {
  "homelab-deploy": string;
  nix: string;
  git: string;
  systemd: string;
}

async function prefixOf(program: string): Promise<string> {
  const { stdout } = await run("sh", ["-c", `command -v ${program}`]);
  return dirname(dirname(await realpath(stdout.trim())));
}

/** Stand-ins for the packages: real directories with bin/ in them. */
export async function standInPackages(): Promise<Packages> {
  const dir = await mkdtemp(join(tmpdir(), "hd-package-"));
  await mkdir(join(dir, "bin"));
  // What makeWrapper writes for the Nix package: node running dist/cli.js.
  await writeFile(join(dir, "bin", "homelab-deploy"), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} "$@"\n`, {
    mode: 0o755,
  });
  return { "homelab-deploy": dir, nix: await prefixOf("nix"), git: await prefixOf("git"), systemd: await prefixOf("systemctl") };
}

export async function bashPath(): Promise<string> {
  const { stdout } = await run("sh", ["-c", "command -v bash"]);
  return realpath(stdout.trim());
}

/** Evaluates; a Nix evaluation error rejects with nix's message. */
export async function evalModules(
  definitions: unknown,
  packages: Packages,
  options: { system?: unknown; runtimeShell?: string } = {},
): Promise<Evaluation> {
  try {
    const { stdout } = await run(
      "nix-instantiate",
      [
        // read-write: the rendered config and the scheduler's script are
        // written to the store (builtins.toFile), as NixOS would build them.
        "--read-write-mode",
        "--eval",
        "--strict",
        "--json",
        EVAL,
        "--argstr",
        "definitions",
        JSON.stringify(definitions),
        "--argstr",
        "system",
        JSON.stringify(options.system ?? {}),
        "--argstr",
        "packages",
        JSON.stringify(packages),
        "--argstr",
        "runtimeShell",
        options.runtimeShell ?? "/bin/sh",
      ],
      { maxBuffer: 16 * 1024 * 1024 },
    );
    return JSON.parse(stdout) as Evaluation;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr;
    throw new Error(stderr ? stderr.trim() : String(err));
  }
}

/** The unit's value as a line of a unit file: booleans as true/false, lists space-separated. */
export function unitValue(value: unknown): string {
  if (Array.isArray(value)) return value.map(unitValue).join(" ");
  return String(value);
}
