/**
 * build.copyTo for one built host: its closure goes to the shared cache.
 * The host stays built whatever happens here; a failure is a warning in
 * its result (and so in the metrics and the log).
 */
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import { copyClosure } from "../nix/copy.js";
import type { NixRunner } from "../nix/runner.js";
import type { HostCopy } from "../protocol.js";
import { boundedText } from "../util/log-tail.js";
import type { Job } from "../job.js";

export async function copyToCache(
  deps: { config: Config; nix: NixRunner; logger: Logger },
  job: Job,
  host: string,
  storePath: string,
): Promise<HostCopy | undefined> {
  const { copyTo, copyTimeout } = deps.config.build;
  if (copyTo === undefined) return undefined;
  const copied = await copyClosure(deps.nix, storePath, copyTo, { timeoutMs: copyTimeout, signal: job.abort.signal });
  const fields = { jobId: job.id, repo: job.spec.repo, host, storePath, durationMs: copied.durationMs };
  if (copied.ok) {
    deps.logger.info(fields, "copied the host's closure to build.copyTo");
    return { ok: true, durationMs: copied.durationMs };
  }
  deps.logger.warn({ ...fields, err: copied.error }, "copying the host's closure to build.copyTo failed; the host is built all the same");
  return { ok: false, durationMs: copied.durationMs, error: boundedText(copied.error ?? "nix copy failed") };
}
