/**
 * What must survive a restart: the build counters and the last-build and
 * last-success timestamps the alert rules read. Without them "no successful
 * build in 24 h" goes blind after every restart, and every counter reset
 * looks like history lost. One JSON file under `stateDir`, a StateFile
 * like every other state file, so a crash leaves either the old or the new
 * file, never half of one. A missing or unreadable file is one warning and
 * an empty start, never a stopped daemon.
 */
import { join } from "node:path";
import { z } from "zod";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { HostNameSchema, HostStatusSchema, JobStatusSchema, RepoNameSchema } from "../protocol.js";
import { STATE_FILES } from "../state-files.js";
import { StateFile } from "../util/state-file.js";

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

type StateFileContents = z.infer<typeof StateFileSchema>;

export interface MetricsStateFileOptions {
  dir: string;
  logger: Logger;
  /** The metrics as they are now (the registry's values are gathered asynchronously). */
  snapshot: () => Promise<MetricsState>;
  /** Told after every write: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
}

/**
 * The metrics state file: a StateFile (src/util/state-file.ts), so read
 * with its schema without blocking on a FIFO, and saved after every change
 * by one coalescing writer, atomically and durably. What is special here
 * is only what a bad file means: a warning and empty metrics.
 */
export class MetricsStateFile {
  readonly file: string;
  private readonly state: StateFile<StateFileContents>;

  constructor(private readonly options: MetricsStateFileOptions) {
    this.file = join(options.dir, STATE_FILE_NAME);
    this.state = new StateFile({
      file: this.file,
      schema: StateFileSchema,
      snapshot: async () => ({ version: FORMAT_VERSION, savedAt: new Date().toISOString(), metrics: await options.snapshot() }),
      onSaved: (error) => {
        // The daemon keeps building; the metrics only lose their memory.
        if (error !== undefined) options.logger.warn({ file: this.file, err: error }, "cannot save the metrics state file; metrics will not survive a restart");
        options.onSaved?.(error);
      },
    });
  }

  /** The saved metrics, or undefined (after one warning) when there are none that can be used. */
  async load(): Promise<MetricsState | undefined> {
    const { logger } = this.options;
    const read = await this.state.read();
    switch (read.status) {
      case "loaded":
        logger.info({ file: this.file, savedAt: read.value.savedAt }, "metrics state loaded");
        return read.value.metrics;
      case "missing":
        logger.warn({ file: this.file }, "metrics state file not loaded, it does not exist yet (first start?); starting with empty build metrics");
        return undefined;
      case "unreadable":
        logger.warn({ file: this.file, err: errorMessage(read.error) }, "metrics state file not loaded, it cannot be read; starting with empty build metrics");
        return undefined;
      case "corrupt":
        logger.warn(
          { file: this.file, problem: read.problem },
          "metrics state file is corrupt and was ignored; starting with empty build metrics (it is rewritten after the next build)",
        );
        return undefined;
    }
  }

  /** Something worth keeping changed: save it soon (a burst of changes is one write). A failed write is logged. */
  request(): void {
    this.state.save().catch(() => undefined);
  }

  /** Resolves once every requested change is on disk (or its write failed and was logged). */
  flush(): Promise<void> {
    return this.state.flush();
  }
}
