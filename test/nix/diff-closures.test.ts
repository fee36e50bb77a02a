/**
 * The `nix store diff-closures` parser on output recorded from real nix
 * (test/fixtures/diff-closures/, Nix 2.8; re-record with record.sh there),
 * and the store path shapes a private store (NIX_STORE_DIR) produces.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseDiffClosures } from "../../src/nix/diff-closures.js";
import { DrvPathSchema, isStorePath, pathInSource } from "../../src/store-path.js";
import { ROOT } from "../support/cli.js";

const fixture = (name: string) => readFile(join(ROOT, "test", "fixtures", "diff-closures", name), "utf8");

describe("parseDiffClosures", () => {
  it("reads version changes, added and removed packages, sizes and several versions from recorded output", async () => {
    expect(parseDiffClosures(await fixture("changed.txt"))).toEqual([
      { name: "added", before: [], after: ["0.5"], sizeDeltaBytes: 0 },
      { name: "etc", before: [], after: [""], sizeDeltaBytes: 0 },
      { name: "grows", before: [], after: [], sizeDeltaBytes: Math.round(74.9 * 1024) },
      { name: "linux", before: ["6.6.1"], after: ["6.6.2"], sizeDeltaBytes: Math.round(58.6 * 1024) },
      { name: "openssl", before: ["3.0.1"], after: ["1.1.1w", "3.0.2"], sizeDeltaBytes: 0 },
      { name: "removed", before: ["2.0"], after: [], sizeDeltaBytes: 0 },
      { name: "tool", before: ["1.0"], after: ["1.1"], sizeDeltaBytes: 0 },
    ]);
  });

  it("ignores terminal control codes: the terminal recording parses the same", async () => {
    expect(parseDiffClosures(await fixture("tty.txt"))).toEqual(parseDiffClosures(await fixture("changed.txt")));
  });

  it("gives no packages for identical closures and skips lines that are not package lines", async () => {
    expect(parseDiffClosures(await fixture("identical.txt"))).toEqual([]);
    expect(parseDiffClosures("warning: something\nnot a package line\n")).toEqual([]);
    expect(parseDiffClosures("kdeconnect: 20.08.2 → ∅, -6597.8 KiB\nbig: +1.5 MiB\n")).toEqual([
      { name: "kdeconnect", before: ["20.08.2"], after: [], sizeDeltaBytes: -Math.round(6597.8 * 1024) },
      { name: "big", before: [], after: [], sizeDeltaBytes: Math.round(1.5 * 1024 ** 2) },
    ]);
  });
});

describe("store paths", () => {
  it("accepts any store directory but only store-path shapes", () => {
    expect(isStorePath("/nix/store/8f3k0000000000000000000000000000-nixos-system-ns1-25.05")).toBe(true);
    expect(isStorePath("/tmp/hd-store-x/store/8f3k0000000000000000000000000000-nixos-system-ns1")).toBe(true);
    expect(isStorePath("nix/store/8f3k0000000000000000000000000000-a")).toBe(false);
    expect(isStorePath("/nix/store/short-a")).toBe(false);
    expect(isStorePath("/nix/../etc/8f3k0000000000000000000000000000-a")).toBe(false);
    expect(isStorePath("/nix/store/8f3k0000000000000000000000000000-a b")).toBe(false);
    expect(DrvPathSchema.safeParse("/tmp/s/store/8f3k0000000000000000000000000000-a.drv").success).toBe(true);
    expect(DrvPathSchema.safeParse("/tmp/s/store/8f3k0000000000000000000000000000-a").success).toBe(false);
    expect(pathInSource("/tmp/s/store/8f3k0000000000000000000000000000-source/hosts/ns1.nix")).toBe("hosts/ns1.nix");
  });
});
