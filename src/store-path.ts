/**
 * The shape of a store path, wherever the store is. Production's store is
 * /nix/store, but nix honours NIX_STORE_DIR (tests use a private store so
 * they can garbage-collect it), so nothing may hard-code the prefix. What
 * stays strict: an absolute path of plain segments, then a 32-character
 * nix-base32 hash and a name — nothing a flag or a shell could misread.
 */
import { z } from "zod";

const DIR = String.raw`(?:/[A-Za-z0-9._+-]+)+`;
const BASE = String.raw`[0-9a-z]{32}-[A-Za-z0-9+._?=-]+`;

export const STORE_PATH_RE = new RegExp(`^${DIR}/${BASE}$`);
const DRV_PATH_RE = new RegExp(`^${DIR}/${BASE}\\.drv$`);
/** A file inside a store path: "<store>/<hash>-source/<file>" → "<file>". */
const IN_SOURCE_RE = new RegExp(`^${DIR}/[0-9a-z]{32}-source/`);

export function isStorePath(path: string): boolean {
  return STORE_PATH_RE.test(path) && !path.includes("/../") && !path.includes("/./");
}

/**
 * The store directory nix uses in this process's environment, as nix
 * itself decides it: NIX_STORE_DIR, else NIX_STORE, else /nix/store.
 */
export function storeDir(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env["NIX_STORE_DIR"] || env["NIX_STORE"] || "/nix/store";
  return dir.length > 1 ? dir.replace(/\/+$/, "") : dir;
}

/** A store path directly in `dir` (not merely shaped like one somewhere else). */
export function isStorePathIn(path: string, dir: string): boolean {
  return isStorePath(path) && path.slice(0, path.lastIndexOf("/")) === dir;
}

export const StorePathSchema = z.string().refine(isStorePath, { message: "expected a nix store path" });
export const DrvPathSchema = z.string().refine((p) => isStorePath(p) && DRV_PATH_RE.test(p), { message: "expected a store derivation (.drv)" });

/** The path of a file relative to the source tree it is in, when it is in one. */
export function pathInSource(file: string): string {
  return file.replace(IN_SOURCE_RE, "");
}

/** "<store>/<hash>-name" → "<hash>", for naming things after a store path. */
export function storeHash(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return base.slice(0, 32);
}
