/**
 * A private nix store for tests that garbage-collect: NIX_STORE_DIR,
 * NIX_STATE_DIR and NIX_LOG_DIR under a temp dir, handed to the builder
 * process (and to the nix commands the test runs itself). The shared
 * /nix/store is never collected: other test files build in it at the same time.
 */
import { execa } from "execa";
import { chmod, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface IsolatedStore {
  dir: string;
  storeDir: string;
  env: Record<string, string>;
  /** `nix-store --gc` in this store only. */
  gc(): Promise<void>;
  isValid(path: string): Promise<boolean>;
}

export async function createIsolatedStore(extraNixConfig: string[] = []): Promise<IsolatedStore> {
  const dir = await mkdtemp(join(tmpdir(), "hd-store-"));
  await chmod(dir, 0o755);
  const storeDir = join(dir, "store");
  const env = {
    NIX_STORE_DIR: storeDir,
    NIX_STATE_DIR: join(dir, "state"),
    NIX_LOG_DIR: join(dir, "log"),
    // nix's fetcher and eval caches name store paths: keep them apart from the shared store's.
    XDG_CACHE_HOME: join(dir, "cache"),
    // No build users: this store's nix keeps its own user pool, so it could
    // take nixbld1 while the shared store's nix builds as nixbld1 too, and
    // nix kills every process of a build user around each build: it would
    // kill other test files' builds.
    NIX_CONFIG: [process.env["NIX_CONFIG"] ?? "", "build-users-group =", ...extraNixConfig].join("\n"),
  };
  const nixStore = (args: string[]) => execa("nix-store", args, { env, extendEnv: true, reject: false, stdin: "ignore" });
  return {
    dir,
    storeDir,
    env,
    async gc() {
      const result = await nixStore(["--gc"]);
      if (result.exitCode !== 0) throw new Error(`nix-store --gc failed: ${String(result.stderr)}`);
    },
    async isValid(path) {
      return (await nixStore(["--check-validity", path])).exitCode === 0;
    },
  };
}
