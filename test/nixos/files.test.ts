/**
 * The Nix side of the repository, as far as it can be checked without
 * nixpkgs: every .nix file parses, the flake has the outputs
 * docs/deployment.md lists, and the VM test's NATS keys belong together.
 */
import { execFile } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { fromSeed } from "nkeys.js";
import { describe, expect, it } from "vitest";
import { ROOT } from "../support/cli.js";

const run = promisify(execFile);
const SKIP = new Set(["node_modules", "dist", ".git", "coverage", ".tmp"]);

async function nixFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const nested = await Promise.all(
    entries.map(async (entry) => {
      if (SKIP.has(entry.name)) return [];
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return nixFiles(path);
      return entry.isFile() && entry.name.endsWith(".nix") ? [path] : [];
    }),
  );
  return nested.flat();
}

async function evalJson(expression: string): Promise<unknown> {
  const { stdout } = await run("nix-instantiate", ["--eval", "--strict", "--json", "--expr", expression], { cwd: ROOT });
  return JSON.parse(stdout);
}

describe("Nix files", () => {
  it("every .nix file in the repository parses", async () => {
    const files = await nixFiles(ROOT);
    const names = files.map((file) => relative(ROOT, file));
    // The files this issue ships are among them (a moved file must not drop out silently).
    expect(names).toEqual(
      expect.arrayContaining([
        "flake.nix",
        "nix/package.nix",
        "nix/npm-lock.nix",
        "nix/module.nix",
        "nix/modules/builder.nix",
        "nix/modules/scheduled-builds.nix",
        "nix/modules/listener.nix",
        "nix/modules/common.nix",
        "nix/tests/vm.nix",
        "nix/tests/module-eval.nix",
      ]),
    );
    const failures: string[] = [];
    await Promise.all(
      files.map(async (file) => {
        try {
          await run("nix-instantiate", ["--parse", file]);
        } catch (err) {
          failures.push(`${relative(ROOT, file)}: ${(err as { stderr?: string }).stderr ?? String(err)}`);
        }
      }),
    );
    expect(failures).toEqual([]);
  });

  it("the flake has the outputs the docs list, for both systems, and no lock file it could not have generated", async () => {
    // Only the flake's own structure: its outputs function is applied to
    // stand-in inputs so no nixpkgs is needed, and nothing is evaluated
    // below the attribute names.
    const outputs = (await evalJson(`
      let
        flake = import ./flake.nix;
        lib = {
          genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
        };
        nixpkgs = { inherit lib; legacyPackages = { x86_64-linux = { }; aarch64-linux = { }; }; };
        out = flake.outputs { self = out; inherit nixpkgs; };
      in {
        top = builtins.attrNames out;
        packages = builtins.mapAttrs (_: builtins.attrNames) out.packages;
        checks = builtins.mapAttrs (_: builtins.attrNames) out.checks;
        devShells = builtins.mapAttrs (_: builtins.attrNames) out.devShells;
        nixosModules = builtins.attrNames out.nixosModules;
        inputs = builtins.attrNames flake.inputs;
      }`)) as Record<string, unknown>;
    expect(outputs).toEqual({
      top: ["checks", "devShells", "nixosModules", "overlays", "packages"],
      packages: { "aarch64-linux": ["default", "homelab-deploy"], "x86_64-linux": ["default", "homelab-deploy"] },
      checks: { "aarch64-linux": ["module-eval", "package", "vm"], "x86_64-linux": ["module-eval", "package", "vm"] },
      devShells: { "aarch64-linux": ["default"], "x86_64-linux": ["default"] },
      nixosModules: ["builder", "default", "listener", "scheduled-builds"],
      inputs: ["nixpkgs"],
    });
    await expect(readFile(join(ROOT, "flake.lock"))).rejects.toThrow(/ENOENT/);
  });

  it("the VM test's NATS seeds belong to the public keys its nats-server is given", async () => {
    const keys = (await evalJson("import ./nix/tests/keys.nix")) as Record<string, { seed: string; publicKey: string }>;
    expect(Object.keys(keys).sort()).toEqual(["builder", "deployer", "scheduler"]);
    for (const [who, key] of Object.entries(keys)) {
      expect(fromSeed(new TextEncoder().encode(key.seed)).getPublicKey(), who).toBe(key.publicKey);
    }
  });
});
