/**
 * What must survive a restart: the build counters and the last-build and
 * last-success timestamps the alert rules read. Without them "no successful
 * build in 24 h" goes blind after every restart, and every counter reset
 * looks like history lost. One JSON file under `stateDir`, written
 * atomically (temp file, fsync, rename, fsync of the directory) so a crash
 * leaves either the old or the new file, never half of one. A missing or
 * unreadable file is one warning and an empty start, never a stopped daemon.
 */
import { STATE_FILES } from "../state-files.js";
import { readRegularFile } from "../util/regular-file.js";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic-file.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { HostNameSchema, HostStatusSchema, JobStatusSchema, RepoNameSchema } from "../protocol.js";
import { SaveLoop } from "../util/save-loop.js";

export const STATE_FILE_NAME = STATE_FILES.metrics;
const FORMAT_VERSION = 1;

const CountSchema = z.number().finite().nonnegative();
const TimestampSchema = z.number().finite().positive();

/** The persisted metrics, as the metrics module snapshots and restores them. */
export const MetricsStateSchema = z.strictObject({
  /** homelab_deploy_builds_total, one entry per label set. */
  builds: z.array(z.strictObject({ repo: RepoNameSchema, status: JobStatusSchema, value: CountSchema })),
  /** homelab_deploy_build_host_total, one entry per label set. */
  hostBuilds: z.array(
    z.strictObject({ repo: RepoNameSchema, host: HostNameSchema, status: HostStatusSchema, value: CountSchema }),
  ),
  /** Unix seconds per repo: homelab_deploy_build_last_timestamp. */
  lastBuild: z.record(RepoNameSchema, TimestampSchema),
  /** Unix seconds per repo: homelab_deploy_build_last_success_timestamp. */
  lastSuccess: z.record(RepoNameSchema, TimestampSchema),
  /** Unix seconds per repo and host: homelab_deploy_build_host_last_success_timestamp (absent in files from before it existed). */
  hostLastSuccess: z.array(z.strictObject({ repo: RepoNameSchema, host: HostNameSchema, value: TimestampSchema })).default([]),
});
export type MetricsState = z.infer<typeof MetricsStateSchema>;

const StateFileSchema = z.strictObject({
  version: z.literal(FORMAT_VERSION),
  savedAt: z.string(),
  metrics: MetricsStateSchema,
});

export interface StateStoreOptions {
  dir: string;
  logger: Logger;
}

export class StateStore {
  readonly file: string;

  constructor(private readonly options: StateStoreOptions) {
    this.file = join(options.dir, STATE_FILE_NAME);
  }

  /** The saved metrics, or undefined (after one warning) when there are none that can be used. */
  async load(): Promise<MetricsState | undefined> {
    const { logger } = this.options;
    let text: string;
    try {
      text = await readRegularFile(this.file);
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
      const why = missing ? "it does not exist yet (first start?)" : `it cannot be read: ${errorMessage(err)}`;
      logger.warn({ file: this.file }, `metrics state file not loaded, ${why}; starting with empty build metrics`);
      return undefined;
    }
    const parsed = parseStateFile(text);
    if (!parsed.ok) {
      logger.warn(
        { file: this.file, problem: parsed.problem },
        "metrics state file is corrupt and was ignored; starting with empty build metrics (it is rewritten after the next build)",
      );
      return undefined;
    }
    logger.info({ file: this.file, savedAt: parsed.savedAt }, "metrics state loaded");
    return parsed.metrics;
  }

  /** Replaces the file atomically. Throws when the directory cannot be written. */
  async save(metrics: MetricsState): Promise<void> {
    const body = JSON.stringify({ version: FORMAT_VERSION, savedAt: new Date().toISOString(), metrics }, null, 2);
    await writeFileAtomic(this.file, `${body}\n`);
  }
}

type ParsedState = { ok: true; metrics: MetricsState; savedAt: string } | { ok: false; problem: string };

export function parseStateFile(text: string): ParsedState {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, problem: `not JSON: ${errorMessage(err)}` };
  }
  const result = StateFileSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue?.path.length ? `${issue.path.map(String).join(".")}: ` : "";
    return { ok: false, problem: `${where}${issue?.message ?? "invalid"}` };
  }
  return { ok: true, metrics: result.data.metrics, savedAt: result.data.savedAt };
}

export interface StatePersisterOptions {
  store: StateStore;
  snapshot: () => Promise<MetricsState>;
  logger: Logger;
  /** Told after every write: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
}

/** Saves after every change, a burst of events folded into one write (SaveLoop). */
export class StatePersister {
  private readonly loop = new SaveLoop(() => this.writeOnce());

  constructor(private readonly options: StatePersisterOptions) {}

  /** Something worth keeping changed; save it soon. */
  request(): void {
    this.loop.request();
  }

  /** Resolves once every requested change is on disk (or its write failed and was logged). */
  flush(): Promise<void> {
    return this.loop.flush();
  }

  private async writeOnce(): Promise<void> {
    const { store, snapshot, logger } = this.options;
    try {
      await store.save(await snapshot());
      this.options.onSaved?.(undefined);
    } catch (err) {
      this.options.onSaved?.(errorMessage(err));
      // The daemon keeps building; the metrics only lose their memory.
      logger.warn({ file: store.file, err: errorMessage(err) }, "cannot save the metrics state file; metrics will not survive a restart");
    }
  }
}
