/**
 * Running nix: resolve a flake to a locked revision, list its hosts, build
 * one host's system closure. Each nix runs through the supervisor
 * (supervisor.ts: no shell, a process group of its own, timeout, cancel,
 * the process ledger). A failed build is returned, not thrown.
 *
 * Flags are chosen to work on Nix 2.8 (Debian) and current Nix alike:
 * `--json` instead of `--print-out-paths` (absent in 2.8), and `-L` *before*
 * `--log-format internal-json` (in 2.8 a later `-L` resets the format).
 */
import { readlink } from "node:fs/promises";
import { stripVTControlCharacters } from "node:util";
import { dirname, join } from "node:path";
import { z } from "zod";
import { NixLogState, type NixProgress } from "./log.js";
import { parseJsonAs } from "../util/json.js";
import { cannotRun, Supervisor, type ProcessOutcome, type ProcessRecorder, type ProcessResult } from "./supervisor.js";
import { formatSetting } from "../util/duration.js";
import { isCommitId, type HostStatus, type SourceLocation } from "../protocol.js";
import type { NixError } from "./log.js";
import { isStorePath, pathInSource } from "../store-path.js";

export type { ProcessRecorder } from "./supervisor.js";

export interface NixRunnerOptions {
  nixBin: string;
  killGraceMs: number;
  logTailLines: number;
  keepGoing?: boolean;
  env?: Record<string, string>;
  ledger?: ProcessRecorder;
}

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Called with the log state whenever nix reports visible progress. */
  onProgress?: (progress: NixProgress) => void;
  /** Samples the process tree's RSS this often: `peakRssBytes` in the result. */
  rssSampleMs?: number;
  /** false: left out of the process ledger (supervisor.ts: a switch that restarts its own daemon). */
  record?: boolean;
}

export type RunOutcome = ProcessOutcome;

export interface RunResult extends ProcessResult {
  log: NixLogState;
  /** The limit this run had (the time it took may be a little longer: killing takes time). */
  timeoutMs: number;
}

/** What an operator is told when nix cannot be started at all. */
export const NIX_PATH_HINT = "is nix on the builder's PATH?";

/**
 * A failed nix call: why, in nix's (or git's) words. `location` is set when
 * nix blamed a place in the flake (an evaluation error: syntax error,
 * missing attribute, stack overflow where nix names one).
 */
export type Outcome<T> =
  | { ok: true; value: T }
  | { ok: false; error: string; outcome: RunOutcome; evalError?: boolean; location?: SourceLocation };

/** Every nix call logs as JSON on stderr: one error extraction (NixLogState) for all of them. */
const LOG_JSON = ["--log-format", "internal-json"] as const;

export interface FlakeLock {
  /** The locked URL every host of a job is built from, pinned to one revision. */
  lockedUrl: string;
  revision: string | null;
}

export interface HostBuild {
  status: HostStatus;
  durationMs: number;
  storePath?: string;
  error?: string;
  location?: SourceLocation;
  logTail?: string[];
}

// `nix flake metadata --json`: "url" is the locked URL in Nix 2.8 and in
// current Nix; other fields vary between versions and are ignored.
const FlakeMetadataSchema = z.looseObject({
  url: z.string().min(1),
  revision: z.string().optional(),
  locked: z.looseObject({ rev: z.string().optional() }).optional(),
});

const BuildOutputSchema = z
  .array(z.looseObject({ drvPath: z.string(), outputs: z.record(z.string(), z.string()) }))
  .min(1);

const HostListSchema = z.array(z.string());


/** A locked URL pins a revision (or a NAR hash): what it evaluates to never changes. */
export function isLockedUrl(url: string): boolean {
  return /[?&](rev|narHash)=/.test(url);
}

const REF_CAPABLE = /^(?:git\+|hg\+|github:|gitlab:|sourcehut:)/;

export function supportsRef(url: string): boolean {
  return REF_CAPABLE.test(url);
}

/** The repo's flake URL pinned to a branch/tag (`ref=`) or a commit (`rev=`). */
export function flakeUrlWithRef(url: string, ref: string | null): string {
  if (ref === null) return url;
  const parsed = new URL(url);
  parsed.searchParams.set(isCommitId(ref) ? "rev" : "ref", ref);
  return parsed.toString();
}

export function toplevelInstallable(lockedUrl: string, host: string): string {
  // The host name is already checked against a strict pattern; quoting the
  // attribute keeps the path unambiguous even so.
  return `${lockedUrl}#nixosConfigurations."${host}".config.system.build.toplevel`;
}

function siblingOfNix(nixBin: string, name: string): string {
  return nixBin.includes("/") ? join(dirname(nixBin), name) : name;
}

export class NixRunner {
  /** nix-store, found next to nix (NixStore runs it too). */
  readonly nixStoreBin: string;
  /** nix-env, found next to nix (the deploy listener sets the system profile with it). */
  readonly nixEnvBin: string;
  /** Starts every nix process of this daemon, the evaluation pool's workers too. */
  readonly supervisor: Supervisor;

  get nixBin(): string {
    return this.options.nixBin;
  }

  constructor(private readonly options: NixRunnerOptions) {
    // nix-store ships next to nix in every Nix release, 2.8 to current.
    this.nixStoreBin = siblingOfNix(options.nixBin, "nix-store");
    this.nixEnvBin = siblingOfNix(options.nixBin, "nix-env");
    const { killGraceMs, env, ledger } = options;
    this.supervisor = new Supervisor({ killGraceMs, ...(env ? { env } : {}), ...(ledger ? { ledger } : {}) });
  }

  async run(args: readonly string[], options: RunOptions, bin = this.options.nixBin): Promise<RunResult> {
    const log = new NixLogState(this.options.logTailLines);
    const { timeoutMs, signal, onProgress, rssSampleMs, record } = options;
    const result = await this.supervisor.run(bin, args, {
      timeoutMs,
      ...(signal ? { signal } : {}),
      ...(rssSampleMs ? { rssSampleMs } : {}),
      ...(record === false ? { record } : {}),
      onStderrLine: (line) => {
        if (log.push(line)) onProgress?.(log.progress);
      },
    });
    return { ...result, log, timeoutMs };
  }

  /** `nix flake metadata --refresh`: fetch the latest commit of the repo (or of `ref`) and lock it. */
  async resolveFlake(url: string, ref: string | null, options: RunOptions): Promise<Outcome<FlakeLock>> {
    const target = flakeUrlWithRef(url, ref);
    const run = await this.run(["flake", "metadata", ...LOG_JSON, "--json", "--refresh", target], options);
    const failure = this.failure(run, `fetching ${target}`, ref);
    if (failure) return failure;
    const metadata = parseJsonAs(run.stdout, FlakeMetadataSchema);
    if (!metadata) return { ok: false, error: `nix flake metadata printed unexpected output for ${target}`, outcome: "exited" };
    return {
      ok: true,
      value: {
        lockedUrl: metadata.url,
        revision: metadata.revision ?? metadata.locked?.rev ?? null,
      },
    };
  }

  /** The names under `nixosConfigurations`, without evaluating any of them. */
  async listHosts(lockedUrl: string, options: RunOptions): Promise<Outcome<string[]>> {
    const run = await this.run(
      ["eval", ...LOG_JSON, "--json", `${lockedUrl}#nixosConfigurations`, "--apply", "builtins.attrNames"],
      options,
    );
    const failure = this.failure(run, "listing nixosConfigurations");
    if (failure) return failure;
    const hosts = parseJsonAs(run.stdout, HostListSchema);
    if (!hosts) return { ok: false, error: "nix eval printed unexpected output for nixosConfigurations", outcome: "exited" };
    return { ok: true, value: hosts };
  }

  /** `nix --version`, e.g. "nix (Nix) 2.8.0", or why nix cannot be run. */
  async version(options: RunOptions = { timeoutMs: 10_000 }): Promise<Outcome<string>> {
    const run = await this.run(["--version"], options);
    const failure = this.failure(run, "nix --version");
    return failure ?? { ok: true, value: run.stdout.trim() };
  }

  /**
   * Evaluates and builds one host: `nix build` (uses nix's own eval cache).
   * `root`: a symlink made a GC root for the result (`--out-link`), for a
   * result that must stay in the store after nix exits; without it, none.
   */
  async buildHost(lockedUrl: string, host: string, options: RunOptions, root?: string): Promise<HostBuild> {
    const args = ["build", "-L", ...LOG_JSON, ...(root ? ["--out-link", root] : ["--no-link"]), "--json"];
    if (this.options.keepGoing) args.push("--keep-going");
    args.push(toplevelInstallable(lockedUrl, host));
    const run = await this.run(args, options);
    return hostBuildFrom(run, this.options.nixBin);
  }

  /**
   * Builds an already evaluated toplevel (a .drv), or fetches a store path
   * from the substituters (nix checks their signatures). `nix-store --realise` works on
   * Nix 2.8 and current Nix alike (`nix build <drv>^*` does not exist in 2.8).
   * `root`: a symlink made a GC root for the result (`--add-root`,
   * `--indirect` for 2.8), as for buildHost.
   */
  async realise(drvPath: string, options: RunOptions, root?: string): Promise<HostBuild> {
    const args = [...LOG_JSON, "--realise", drvPath, ...(root ? ["--add-root", root, "--indirect"] : [])];
    if (this.options.keepGoing) args.push("--keep-going");
    const run = await this.run(args, options, this.nixStoreBin);
    if (run.outcome === "exited" && run.exitCode === 0) {
      // With a root, nix prints the root's path: the result is where it points.
      const storePath = root ? await readlink(root).catch(() => undefined) : run.stdout.split("\n").find((line) => isStorePath(line.trim()));
      if (storePath) return { status: "success", durationMs: run.durationMs, storePath: storePath.trim() };
    }
    return hostBuildFrom(run, this.nixStoreBin);
  }

  private failure(run: RunResult, what: string, ref: string | null = null): Outcome<never> | undefined {
    if (run.outcome === "exited" && run.exitCode === 0) return undefined;
    const why = describeFailure(run, this.options.nixBin);
    const missingRef = ref !== null && !isCommitId(ref) && MISSING_REF.test(why);
    const error = missingRef ? `${what}: no branch or tag ${ref}: ${why}` : `${what}: ${why}`;
    const nixError = run.outcome === "exited" ? run.log.mainError() : undefined;
    const location = nixError ? sourceLocation(nixError) : undefined;
    const evalError = nixError !== undefined && isEvalError(nixError);
    return { ok: false, error, outcome: run.outcome, ...(evalError ? { evalError } : {}), ...(location ? { location } : {}) };
  }
}

/** git's words for a branch or tag that is not there (local repo, remote repo). */
const MISSING_REF = /unknown revision|couldn't find remote ref|not a valid (?:object name|ref)/i;

/**
 * An error of the Nix language rather than of fetching or building: nix
 * blamed a place in a file, or ran out of stack (possible infinite
 * recursion; Nix 2.8 names no place for that one).
 */
export function isEvalError(error: NixError): boolean {
  return error.file !== undefined || /stack overflow|infinite recursion|max-call-depth/.test(error.message);
}

/** One line saying why nix did not succeed, in the words an operator needs. */
export function describeFailure(run: RunResult, nixBin: string): string {
  switch (run.outcome) {
    case "spawn_failed":
      return cannotRun(nixBin, run, NIX_PATH_HINT);
    case "timeout":
      return `timed out after ${formatSetting(run.timeoutMs)}; the nix process tree was killed`;
    case "cancelled":
      return "cancelled; the nix process tree was killed";
    case "exited":
      break;
  }
  const nixError = run.log.mainError();
  if (nixError) return nixError.message.replace(/^error:\s*/, "");
  if (run.signal) return `nix was killed by ${run.signal}`;
  if (run.exitCode === 137) return "nix exited with code 137 (killed, perhaps out of memory)";
  const tail = run.log.logTail().at(-1);
  return `nix exited with code ${run.exitCode ?? "?"}${tail ? `: ${tail}` : ""}`;
}

export function hostBuildFrom(run: RunResult, nixBin: string): HostBuild {
  const durationMs = run.durationMs;
  if (run.outcome === "timeout") return { status: "timeout", durationMs, error: describeFailure(run, nixBin), logTail: run.log.logTail() };
  if (run.outcome === "cancelled") return { status: "cancelled", durationMs, error: describeFailure(run, nixBin) };
  if (run.outcome === "exited" && run.exitCode === 0) {
    const outputs = parseJsonAs(run.stdout, BuildOutputSchema);
    const storePath = outputs?.[0]?.outputs["out"];
    if (storePath) return { status: "success", durationMs, storePath };
    return { status: "failure", durationMs, error: `nix build succeeded but printed no store path: ${truncate(run.stdout)}` };
  }
  // No Realise/Builds activity means nix never got past evaluation.
  const nixError = run.log.mainError();
  if (run.outcome === "exited" && !run.log.realiseStarted && nixError) {
    const location = sourceLocation(nixError);
    return { status: "eval_error", durationMs, error: describeFailure(run, nixBin), ...(location ? { location } : {}) };
  }
  return { status: "failure", durationMs, error: describeFailure(run, nixBin), logTail: run.log.logTail() };
}

/** nix names files by their store path; the part after "-source/" is the path in the repo. */
export function sourceLocation(error: NixError): SourceLocation | undefined {
  if (!error.file) return undefined;
  const file = pathInSource(error.file);
  const location: SourceLocation = { file };
  if (error.line !== undefined) location.line = error.line;
  if (error.column !== undefined) location.column = error.column;
  return location;
}

function truncate(text: string, max = 200): string {
  const flat = stripVTControlCharacters(text).replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max)}…` : flat || "(nothing)";
}

