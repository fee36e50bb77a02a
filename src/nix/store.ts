/**
 * The store operations that keep what the builder built: GC roots, closure
 * comparisons and sizes. Flags work on Nix 2.8 and current Nix alike:
 * `nix-store --realise P --add-root L --indirect` (current Nix accepts and
 * ignores `--indirect`; 2.8 needs it for a root outside gcroots/), and the
 * text output of `nix store diff-closures` and `nix path-info -S` (their
 * JSON differs between versions or does not exist in 2.8).
 */
import { parseDiffClosures } from "./diff-closures.js";
import { describeFailure, type NixRunner, type Outcome } from "./runner.js";
import { isStorePath } from "../store-path.js";
import { MAX_CHANGED_PACKAGES, keepPackages, type Changes, type PackageChange } from "../protocol.js";

export interface ClosureDiff {
  packages: PackageChange[];
  sizeDeltaBytes: number;
}

export class NixStore {
  private readonly nixBin: string;
  private readonly nixStoreBin: string;

  constructor(private readonly runner: NixRunner) {
    this.nixBin = runner.nixBin;
    this.nixStoreBin = runner.nixStoreBin;
  }

  /**
   * Makes `link` (a symlink the builder owns) a GC root for `storePath`.
   * The link is what keeps it: deleting the link releases the root.
   */
  async addRoot(storePath: string, link: string, timeoutMs: number): Promise<Outcome<void>> {
    if (!isStorePath(storePath)) return { ok: false, error: `not a store path: ${storePath}`, outcome: "exited" };
    const run = await this.runner.run(["--realise", storePath, "--add-root", link, "--indirect"], { timeoutMs }, this.nixStoreBin);
    if (run.outcome === "exited" && run.exitCode === 0) return { ok: true, value: undefined };
    return { ok: false, error: describeFailure(run, this.nixStoreBin), outcome: run.outcome };
  }

  /** The package changes from `before` to `after` and the change of the whole closure's size. */
  async diffClosures(before: string, after: string, timeoutMs: number): Promise<Outcome<ClosureDiff>> {
    if (!isStorePath(before) || !isStorePath(after)) return { ok: false, error: "not a store path", outcome: "exited" };
    const [diff, sizes] = await Promise.all([
      this.runner.run(["store", "diff-closures", before, after], { timeoutMs }),
      this.closureSizes([before, after], timeoutMs),
    ]);
    if (diff.outcome !== "exited" || diff.exitCode !== 0) {
      return { ok: false, error: `nix store diff-closures: ${describeFailure(diff, this.nixBin)}`, outcome: diff.outcome };
    }
    if (!sizes.ok) return sizes;
    const delta = (sizes.value.get(after) ?? 0) - (sizes.value.get(before) ?? 0);
    return { ok: true, value: { packages: parseDiffClosures(diff.stdout), sizeDeltaBytes: delta } };
  }

  /**
   * What changed from `before` to `after` as the protocol reports it (at
   * most MAX_CHANGED_PACKAGES packages, the rest counted). The same
   * toplevel has the same closure: nothing to ask nix.
   */
  async changes(before: string, after: string, againstRevision: string | null, timeoutMs: number): Promise<Outcome<Changes>> {
    if (before === after) return { ok: true, value: { against: before, againstRevision, packages: [], sizeDeltaBytes: 0 } };
    const diff = await this.diffClosures(before, after, timeoutMs);
    if (!diff.ok) return diff;
    const { packages, sizeDeltaBytes } = diff.value;
    return { ok: true, value: keepPackages({ against: before, againstRevision, packages, sizeDeltaBytes }, MAX_CHANGED_PACKAGES) };
  }

  /** `nix path-info -S`: each path's closure size in bytes. */
  async closureSizes(paths: string[], timeoutMs: number): Promise<Outcome<Map<string, number>>> {
    const run = await this.runner.run(["path-info", "-S", ...paths], { timeoutMs });
    if (run.outcome !== "exited" || run.exitCode !== 0) {
      return { ok: false, error: `nix path-info: ${describeFailure(run, this.nixBin)}`, outcome: run.outcome };
    }
    const sizes = new Map<string, number>();
    for (const line of run.stdout.split("\n")) {
      const [path, size] = line.trim().split(/\s+/);
      if (path && size && /^\d+$/.test(size)) sizes.set(path, Number(size));
    }
    if (!paths.every((p) => sizes.has(p))) return { ok: false, error: "nix path-info printed no size for a path", outcome: "exited" };
    return { ok: true, value: sizes };
  }
}
