/**
 * Every host's toplevel .drv per locked flake URL, so that building an
 * unchanged revision again evaluates nothing (nix's own eval cache does
 * the same for a lone `nix build`, but not for the evaluation workers of an
 * `all` job). A locked URL pins a revision, and flake evaluation is pure, so
 * the answer never changes, except with another nix: the file records the
 * nix it was made with and is ignored under a different one. Kept in
 * memory and in `<stateDir>/toplevels.json`, so a restart does not cost an
 * evaluation either; a missing or unusable file just means a cold start.
 */
import { STATE_FILES } from "../state-files.js";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { StateFile } from "../util/state-file.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { LruMap } from "../util/lru.js";
import { DrvPathSchema } from "../store-path.js";

export const TOPLEVEL_CACHE_FILE = STATE_FILES.toplevels;
const CAPACITY = 8;

// Only a store derivation may reach `nix-store --realise`, whether from nix
// eval or from the file (any store dir: tests use a private one).
/** Host → its toplevel's .drv path, or null when evaluating it threw. */
export const ToplevelDrvsSchema = z.record(z.string(), DrvPathSchema.nullable());
export type ToplevelDrvs = z.infer<typeof ToplevelDrvsSchema>;

const FileSchema = z.strictObject({
  version: z.literal(1),
  nix: z.string(),
  entries: z.array(z.tuple([z.string(), ToplevelDrvsSchema])).max(CAPACITY),
});

export interface ToplevelCacheOptions {
  /** Where to keep the cache across restarts; memory only when undefined. */
  stateDir?: string;
  /** `nix --version` of the nix that evaluates. */
  nixVersion: string;
  logger: Logger;
  /** Told after every write: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
}

export class ToplevelCache {
  private readonly entries = new LruMap<string, ToplevelDrvs>(CAPACITY);
  private readonly state: StateFile<z.infer<typeof FileSchema>> | undefined;

  constructor(private readonly options: ToplevelCacheOptions) {
    this.state = options.stateDir
      ? new StateFile({
          file: join(options.stateDir, TOPLEVEL_CACHE_FILE),
          schema: FileSchema,
          snapshot: () => ({ version: 1 as const, nix: options.nixVersion, entries: this.entries.entries() }),
          ...(options.onSaved ? { onSaved: options.onSaved } : {}),
        })
      : undefined;
  }

  private get file(): string | undefined {
    return this.state?.file;
  }

  async load(): Promise<void> {
    if (!this.state) return;
    const read = await this.state.read();
    if (read.status === "missing") return;
    if (read.status === "unreadable") {
      this.options.logger.warn({ file: this.file, err: errorMessage(read.error) }, "toplevel .drv cache not loaded; starting cold");
      return;
    }
    if (read.status === "corrupt" || read.value.nix !== this.options.nixVersion) {
      this.options.logger.info({ file: this.file }, "ignoring the toplevel .drv cache: unreadable or made by another nix");
      return;
    }
    for (const [url, drvs] of read.value.entries) this.entries.set(url, drvs);
  }

  /**
   * The cached .drvs, unless garbage collection deleted one of them since:
   * then the entry is dropped and the caller evaluates again (one
   * evaluation of all hosts is cheaper than each host on its own).
   */
  get(lockedUrl: string): ToplevelDrvs | undefined {
    const drvs = this.entries.get(lockedUrl);
    if (!drvs) return undefined;
    const missing = Object.values(drvs).find((drv) => drv !== null && !existsSync(drv));
    if (missing === undefined) return drvs;
    this.options.logger.info({ lockedUrl, missing }, "a cached toplevel .drv was garbage-collected; evaluating again");
    this.entries.delete(lockedUrl);
    return undefined;
  }

  set(lockedUrl: string, drvs: ToplevelDrvs): void {
    this.entries.set(lockedUrl, drvs);
    this.state
      ?.save()
      .catch((err: unknown) =>
        this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "cannot save the toplevel .drv cache; a restart will evaluate again"),
      );
  }

  /** Resolves when what was set so far is on disk (or its write failed and was logged). */
  async flush(): Promise<void> {
    await this.state?.flush();
  }
}
