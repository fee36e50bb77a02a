/** Store paths: where nix's store is, and what counts as a path in it. */
import { describe, expect, it } from "vitest";
import { isStorePath, isStorePathIn, storeDir } from "../src/store-path.js";

const hash = "0123456789abcdfghijklmnpqrsvwxyz";

describe("storeDir", () => {
  it("is nix's own choice: NIX_STORE_DIR, else NIX_STORE, else /nix/store, without a trailing slash", () => {
    expect(storeDir({})).toBe("/nix/store");
    expect(storeDir({ NIX_STORE: "/gnu/store" })).toBe("/gnu/store");
    expect(storeDir({ NIX_STORE_DIR: "/tmp/s/", NIX_STORE: "/gnu/store" })).toBe("/tmp/s");
    expect(storeDir({ NIX_STORE_DIR: "" })).toBe("/nix/store");
  });
});

describe("isStorePathIn", () => {
  it("takes only a path directly in the store directory", () => {
    expect(isStorePathIn(`/nix/store/${hash}-nixos-system-web1-1`, "/nix/store")).toBe(true);
    for (const path of [
      `/tmp/${hash}-nixos-system-web1-1`,
      `/nix/store/x/${hash}-nixos-system-web1-1`,
      `/nix/store/${hash}-nixos-system-web1-1/bin`,
      `/nix/storeX/${hash}-nixos-system-web1-1`,
      `/nix/store/../store/${hash}-nixos-system-web1-1`,
    ]) {
      expect(isStorePathIn(path, "/nix/store"), path).toBe(false);
    }
    // Shaped like one anywhere, which is all a build result elsewhere can be checked for.
    expect(isStorePath(`/tmp/${hash}-nixos-system-web1-1`)).toBe(true);
  });
});
