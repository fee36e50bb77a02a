/**
 * Filling one binary cache from several builders: after a host builds, its
 * closure goes to `build.copyTo` with `nix copy --to` (what Nix offers for
 * exactly this; a store already holding a path skips it). A failed copy is
 * reported, never a failed build: the closure is still in this builder's
 * store (and so in the cache it serves itself).
 */
import { describeFailure, type NixRunner } from "./runner.js";

export interface CopyResult {
  ok: boolean;
  durationMs: number;
  /** Why the copy failed, in nix's words when it said something. */
  error?: string;
}

export interface CopyOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/** `nix copy --to <url> <storePath>`: the path and everything it references. */
export async function copyClosure(nix: NixRunner, storePath: string, url: string, options: CopyOptions): Promise<CopyResult> {
  // The store path comes from nix itself, the URL from the validated config;
  // "--" keeps even a strange path from reading as a flag.
  const run = await nix.run(["copy", "--log-format", "internal-json", "--to", url, "--", storePath], options);
  if (run.outcome === "exited" && run.exitCode === 0) return { ok: true, durationMs: run.durationMs };
  return { ok: false, durationMs: run.durationMs, error: `copying to ${redactStoreUrl(url)}: ${describeFailure(run, "nix")}` };
}

/** The URL without its settings (a `?secret-key=` path or S3 profile is nobody's business in a result). */
export function redactStoreUrl(url: string): string {
  const query = url.indexOf("?");
  return query === -1 ? url : url.slice(0, query);
}
