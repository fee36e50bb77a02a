/**
 * The host catalog with a stand-in nix that counts its fetches and reads
 * the repo's host list when a fetch starts, as git would: what a refresh
 * sees, and how many fetches concurrent refreshes cost. No timing: the
 * stand-in's fetch waits for the test to let it finish.
 */
import { access, chmod, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { HostCatalog } from "../../src/builder/catalog.js";
import { NixRunner } from "../../src/nix/runner.js";
import { memoryLogger } from "../support/logger.js";

let dir: string;
let catalog: HostCatalog;

/** `nix flake metadata`: count, snapshot hosts.json, wait for `release-<n>`, print a locked URL naming the snapshot. `nix eval`: print the snapshot. */
const FAKE_NIX = `#!/bin/sh
dir=@DIR@
case "$1" in
  flake)
    n=$(wc -l < "$dir/fetches" | tr -d ' ')
    cp "$dir/hosts.json" "$dir/snap-$n.json"
    echo "fetch" >> "$dir/fetches"
    while [ ! -e "$dir/release-$n" ]; do sleep 0.02; done
    echo "{\\"url\\": \\"path:$dir/snap-$n.json?narHash=x\\", \\"revision\\": \\"r$n\\"}"
    ;;
  eval)
    for arg in "$@"; do case "$arg" in path:*) f=\${arg#path:}; cat "\${f%%\\?*}";; esac; done
    ;;
esac
`;

async function fetches(): Promise<number> {
  return (await readFile(join(dir, "fetches"), "utf8")).split("\n").filter(Boolean).length;
}

async function waitForFetches(n: number): Promise<void> {
  while ((await fetches()) < n) await new Promise((resolve) => setTimeout(resolve, 10));
}

const release = (n: number) => writeFile(join(dir, `release-${n}`), "");

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "hd-catalog-"));
  await writeFile(join(dir, "fetches"), "");
  await writeFile(join(dir, "hosts.json"), '["a"]');
  const nixBin = join(dir, "nix");
  await writeFile(nixBin, FAKE_NIX.replace("@DIR@", dir));
  await chmod(nixBin, 0o755);
  await access(nixBin);
  const nix = new NixRunner({ nixBin, killGraceMs: 500, logTailLines: 10 });
  catalog = new HostCatalog({ nix, repos: { r: { url: "git+file:///r" } }, logger: memoryLogger().logger, timeoutMs: 60_000 });
});

describe("HostCatalog refreshes", () => {
  it("shares one fetch among refreshes asked together, and one more among those asked while it runs", async () => {
    const together = [catalog.hosts("r", true), catalog.hosts("r", false)];
    await waitForFetches(1);
    const during = Array.from({ length: 5 }, () => catalog.hosts("r", true));
    await release(0);
    for (const answer of await Promise.all(together)) expect(answer).toMatchObject({ hosts: ["a"], revision: "r0" });
    await waitForFetches(2);
    await release(1);
    for (const answer of await Promise.all(during)) expect(answer).toMatchObject({ revision: "r1" });
    expect(await fetches()).toBe(2);
  });

  it("runs a second fetch for a refresh asked during a fetch, and it sees the change", async () => {
    const first = catalog.hosts("r", true);
    await waitForFetches(1);
    // The running fetch has read the repo already; the operator pushes a host and refreshes.
    await writeFile(join(dir, "hosts.json"), '["a", "b"]');
    const second = catalog.hosts("r", true);
    const third = catalog.hosts("r", true);
    expect(catalog.state("r").loading).toBe(true);
    await release(0);
    expect(await first).toMatchObject({ hosts: ["a"] });
    await waitForFetches(2);
    await release(1);
    expect(await second).toMatchObject({ hosts: ["a", "b"], revision: "r1" });
    expect(await third).toMatchObject({ hosts: ["a", "b"], revision: "r1" });
    expect(await fetches()).toBe(2);
    expect(catalog.state("r")).toMatchObject({ loading: false, value: { hosts: ["a", "b"] } });
  });
});

describe("HostCatalog start-up", () => {
  it("fetches at most two repos at once; the third waits for a slot and says it is loading", async () => {
    const nix = new NixRunner({ nixBin: join(dir, "nix"), killGraceMs: 500, logTailLines: 10 });
    const repos = { r1: { url: "git+file:///r1" }, r2: { url: "git+file:///r2" }, r3: { url: "git+file:///r3" } };
    const three = new HostCatalog({ nix, repos, logger: memoryLogger().logger, timeoutMs: 60_000 });
    three.start();
    await waitForFetches(2);
    // A third fetch, if the bound did not hold, would have started by now (it needs no slot to be released).
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await fetches()).toBe(2);
    expect(three.state("r3")).toEqual({ loading: true });
    await release(0);
    await waitForFetches(3);
    await Promise.all([release(1), release(2)]);
    await three.hosts("r3");
    expect(["r1", "r2", "r3"].map((r) => three.state(r))).toEqual(
      expect.arrayContaining([expect.objectContaining({ loading: false, value: expect.objectContaining({ hosts: ["a"] }) })]),
    );
    expect(three.state("r3")).toMatchObject({ loading: false, value: { hosts: ["a"] } });
  });
});
