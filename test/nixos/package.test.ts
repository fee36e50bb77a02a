/**
 * nix/npm-lock.nix: the tarball URLs the Nix package fetches the npm
 * dependencies from (importNpmLock needs a `resolved` URL per package, and
 * this repository's lock file has none). Checked against the repository's
 * own lock file, and against what npm itself did here: npm's cache records
 * the URL it downloaded each installed package from, with its integrity.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../support/cli.js";

const run = promisify(execFile);

interface LockPackage {
  version?: string;
  integrity?: string;
  resolved?: string;
  link?: boolean;
  name?: string;
}

/** The lock file as nix/package.nix hands it to importNpmLock. */
async function resolvedLock(): Promise<Record<string, LockPackage>> {
  const { stdout } = await run(
    "nix-instantiate",
    ["--eval", "--strict", "--json", "--expr", "(import ./nix/npm-lock.nix { }) (builtins.fromJSON (builtins.readFile ./package-lock.json))"],
    { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 },
  );
  return (JSON.parse(stdout) as { packages: Record<string, LockPackage> }).packages;
}

/** npm's own record of where it fetched `url` from (cacache index, as npm writes it). */
async function npmCacheEntry(cacheDir: string, url: string): Promise<{ integrity: string | null } | undefined> {
  const key = `make-fetch-happen:request-cache:${url}`;
  const hash = createHash("sha256").update(key).digest("hex");
  let text: string;
  try {
    text = await readFile(join(cacheDir, "_cacache", "index-v5", hash.slice(0, 2), hash.slice(2, 4), hash.slice(4)), "utf8");
  } catch {
    return undefined;
  }
  const entries = text
    .split("\n")
    .filter((line) => line.includes("\t"))
    .map((line) => JSON.parse(line.slice(line.indexOf("\t") + 1)) as { key: string; integrity: string | null })
    .filter((entry) => entry.key === key);
  return entries.at(-1);
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

describe("nix/npm-lock.nix", () => {
  let original: Record<string, LockPackage>;
  let resolved: Record<string, LockPackage>;

  beforeAll(async () => {
    const lockfile = JSON.parse(await readFile(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, LockPackage> };
    original = lockfile.packages;
    resolved = await resolvedLock();
  });

  it("gives every registry package of package-lock.json a tarball URL and changes nothing else", () => {
    expect(Object.keys(resolved)).toEqual(Object.keys(original));
    for (const [key, pkg] of Object.entries(original)) {
      if (key === "") {
        expect(resolved[key]).toEqual(pkg);
        continue;
      }
      const { resolved: url, ...rest } = resolved[key] as LockPackage;
      const { resolved: originalUrl, ...originalRest } = pkg;
      expect(rest, key).toEqual(originalRest);
      if (originalUrl) expect(url, key).toBe(originalUrl);
      else expect(url, key).toMatch(/^https:\/\/registry\.npmjs\.org\/(@[^/]+\/)?[^/@]+\/-\/[^/]+\.tgz$/);
    }
  });

  it("names scoped, unscoped and nested packages as the registry does", () => {
    const url = (key: string) => resolved[key]?.resolved;
    const version = (key: string) => original[key]?.version;
    expect(url("node_modules/zod")).toBe(`https://registry.npmjs.org/zod/-/zod-${version("node_modules/zod")}.tgz`);
    expect(url("node_modules/@modelcontextprotocol/sdk")).toBe(
      `https://registry.npmjs.org/@modelcontextprotocol/sdk/-/sdk-${version("node_modules/@modelcontextprotocol/sdk")}.tgz`,
    );
    const nested = Object.keys(original).find((key) => key.split("node_modules/").length > 2 && !original[key]?.link);
    expect(nested, "the lock file has a nested package").toBeDefined();
    const name = (nested as string).slice((nested as string).lastIndexOf("node_modules/") + "node_modules/".length);
    expect(url(nested as string)).toBe(`https://registry.npmjs.org/${name}/-/${name.split("/").at(-1)}-${version(nested as string)}.tgz`);
  });

  it("for every package npm installed here, is the URL npm downloaded it from, with the lock file's integrity", async () => {
    const { stdout } = await run("npm", ["config", "get", "cache"], { cwd: ROOT });
    const cacheDir = stdout.trim();
    const installed = (
      await Promise.all(Object.keys(resolved).map(async (key) => (key !== "" && (await exists(join(ROOT, key, "package.json"))) ? key : null)))
    ).filter((key): key is string => key !== null);
    expect(installed.length).toBeGreaterThan(100);
    const problems: string[] = [];
    for (const key of installed) {
      const pkg = resolved[key] as LockPackage;
      const entry = await npmCacheEntry(cacheDir, pkg.resolved as string);
      if (!entry) problems.push(`${key}: npm's cache (${cacheDir}) has no download from ${pkg.resolved} (run npm ci first)`);
      else if (entry.integrity !== pkg.integrity) problems.push(`${key}: ${pkg.resolved} has integrity ${entry.integrity}, the lock file ${pkg.integrity}`);
    }
    expect(problems).toEqual([]);
  });
});
