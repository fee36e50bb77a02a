/**
 * The GC roots the builder owns, so the cache it keeps warm survives
 * `nix-collect-garbage`. Each root is an indirect root: a symlink under
 * `<stateDir>/gcroots/<repo>/<host>/` that nix registers in
 * /nix/var/nix/gcroots/auto (works for a nix-daemon user and for
 * single-user nix alike). Deleting the link releases the root.
 *
 * The link files are the truth: their names say the kind and when it was
 * built (`default-<ms>-<hash>`, `ref-<ms>-<hash>`), their targets the
 * toplevel. `<stateDir>/gcroots.json` only adds what a name cannot carry
 * (revision, ref); a link without bookkeeping is still a root, and
 * bookkeeping without a link is dropped.
 *
 * Policy per repo and host: the newest `keepGenerations` distinct
 * default-branch toplevels; ref builds for `keepRefBuilds` after they were
 * built; a host gone from the flake (or a repo gone from the config) until
 * `keepRefBuilds` after its last build. A new root is always written
 * before an old one is released, and nothing is released when the new
 * root could not be written.
 */
import { STATE_FILES } from "../../state-files.js";
import { lstat, mkdir, readdir, readlink, rmdir, unlink } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { errorMessage } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { NixStore } from "../../nix/store.js";
import { isStorePath, storeHash } from "../../store-path.js";
import { isValidHostName, isValidRepoName } from "../../protocol.js";
import { StateFile } from "../../util/state-file.js";

export const GC_ROOTS_DIR = "gcroots";
export const GC_ROOTS_FILE = STATE_FILES.gcRoots;
const LINK_RE = /^(default|ref)-(\d{13})-([0-9a-z]{32})$/;
const ADD_ROOT_TIMEOUT_MS = 60_000;

const RootSchema = z.strictObject({
  repo: z.string(),
  host: z.string(),
  kind: z.enum(["default", "ref"]),
  storePath: z.string(),
  revision: z.string().nullable(),
  ref: z.string().nullable(),
  builtAt: z.number().int(),
  link: z.string(),
});
export type GcRoot = z.infer<typeof RootSchema>;

const FileSchema = z.strictObject({ version: z.literal(1), roots: z.array(RootSchema) });

export interface GcRootsOptions {
  stateDir: string;
  store: NixStore;
  keepGenerations: number;
  keepRefBuildsMs: number;
  logger: Logger;
  /** Repos in the config: roots of any other repo are a repo gone from the config. */
  repos: string[];
  /** Told after every write of gcroots.json: undefined when it worked, else why it failed. */
  onSaved?: (error: string | undefined) => void;
  now?: () => number;
}

export interface Rooted {
  repo: string;
  host: string;
  storePath: string;
  revision: string | null;
  ref: string | null;
}

export class GcRoots {
  private roots: GcRoot[] = [];
  private readonly dir: string;
  private readonly file: string;
  /** Per repo, the hosts its default branch had at its last `all` build. */
  private readonly currentHosts = new Map<string, Set<string>>();
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * The bookkeeping is written behind the build (the links are what keep
   * the roots; the file only adds revisions): writes that pile up while one
   * runs fold into one.
   */
  private readonly saves: StateFile<z.infer<typeof FileSchema>>;
  private readonly now: () => number;

  constructor(private readonly options: GcRootsOptions) {
    this.dir = join(options.stateDir, GC_ROOTS_DIR);
    this.file = join(options.stateDir, GC_ROOTS_FILE);
    this.now = options.now ?? Date.now;
    this.saves = new StateFile({
      file: this.file,
      schema: FileSchema,
      snapshot: () => ({ version: 1 as const, roots: this.roots }),
      ...(options.onSaved ? { onSaved: options.onSaved } : {}),
    });
  }

  /** Reads the links (the truth) and the bookkeeping, then releases what has expired. */
  async load(): Promise<void> {
    const booked = new Map<string, GcRoot>();
    const read = await this.saves.read();
    if (read.status === "loaded") for (const root of read.value.roots) booked.set(root.link, root);
    else if (read.status === "unreadable") this.options.logger.warn({ file: this.file, err: errorMessage(read.error) }, "the GC root bookkeeping was not loaded");
    else if (read.status === "corrupt") this.options.logger.warn({ file: this.file, problem: read.problem }, "the GC root bookkeeping is unreadable; the root links themselves are kept");
    this.roots = [];
    for (const repo of await names(this.dir)) {
      if (!isValidRepoName(repo)) continue;
      for (const host of await names(join(this.dir, repo))) {
        if (!isValidHostName(host)) continue;
        for (const name of await names(join(this.dir, repo, host))) {
          const match = LINK_RE.exec(name);
          if (!match) continue;
          const link = join(this.dir, repo, host, name);
          const target = await readlink(link).catch(() => undefined);
          if (!target || !isStorePath(target)) continue;
          const known = booked.get(link);
          const kind = match[1] as GcRoot["kind"];
          this.roots.push({
            repo,
            host,
            kind,
            storePath: target,
            revision: known?.storePath === target ? known.revision : null,
            ref: known?.storePath === target ? known.ref : null,
            // A root refreshed by a rebuild keeps its link; the bookkeeping has the newer time.
            builtAt: known?.storePath === target ? Math.max(known.builtAt, Number(match[2])) : Number(match[2]),
            link,
          });
        }
      }
    }
    await this.serially(() => this.applyPolicy());
  }

  /** The roots of one host (newest first), for tests and the log. */
  rootsOf(repo: string, host: string): GcRoot[] {
    return this.roots.filter((r) => r.repo === repo && r.host === host).sort((a, b) => b.builtAt - a.builtAt);
  }

  /** Whether this toplevel of the host is rooted now (the status page's "GC root kept"). */
  isRooted(repo: string, host: string, storePath: string): boolean {
    return this.roots.some((r) => r.repo === repo && r.host === host && r.storePath === storePath);
  }

  /** Roots a successful build's toplevel; true when the root is on disk. Never throws. */
  add(build: Rooted): Promise<boolean> {
    return this.serially(() => this.addNow(build));
  }

  /** The hosts a repo's default branch has now: the others are released `keepRefBuilds` after their last build. */
  retainHosts(repo: string, hosts: string[]): Promise<void> {
    this.currentHosts.set(repo, new Set(hosts));
    return this.serially(() => this.applyPolicy());
  }

  /** Resolves when every change so far is done and on disk. */
  async flush(): Promise<void> {
    await this.serially(async () => undefined);
    await this.saves.flush();
  }

  private serially<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async addNow(build: Rooted): Promise<boolean> {
    const { repo, host, storePath } = build;
    const kind: GcRoot["kind"] = build.ref === null ? "default" : "ref";
    // The same toplevel rebuilt (an unchanged revision): its root stays, only
    // its time moves — no nix process, no new generation.
    const existing = this.roots.find((r) => r.repo === repo && r.host === host && r.kind === kind && r.storePath === storePath);
    if (existing && (await isLink(existing.link))) {
      Object.assign(existing, { builtAt: Math.max(existing.builtAt, this.now()), revision: build.revision, ref: build.ref });
      await this.applyPolicy();
      return true;
    }
    let builtAt = this.now();
    // Names carry the time; two roots of one host in one millisecond must not collide.
    while (this.roots.some((r) => r.repo === repo && r.host === host && r.builtAt === builtAt)) builtAt += 1;
    const link = join(this.dir, repo, host, `${kind}-${String(builtAt).padStart(13, "0")}-${storeHash(storePath)}`);
    try {
      await mkdir(join(this.dir, repo, host), { recursive: true, mode: 0o755 });
    } catch (err) {
      this.options.logger.warn({ repo, host, storePath, err: errorMessage(err) }, "cannot create the GC root directory; the build is not protected from garbage collection");
      return false;
    }
    const added = await this.options.store.addRoot(storePath, link, ADD_ROOT_TIMEOUT_MS);
    if (!added.ok) {
      await unlink(link).catch(() => undefined);
      this.options.logger.warn({ repo, host, storePath, err: added.error }, "cannot register the toplevel as a GC root; the build is not protected from garbage collection");
      return false;
    }
    // The same toplevel rooted again (an unchanged revision rebuilt) replaces its older root: no new generation.
    const replaced = this.roots.filter((r) => r.repo === repo && r.host === host && r.kind === kind && r.storePath === storePath);
    this.roots.push({ repo, host, kind, storePath, revision: build.revision, ref: build.ref, builtAt, link });
    await this.release(replaced, "the same toplevel was rooted again");
    await this.applyPolicy();
    return true;
  }

  private async applyPolicy(): Promise<void> {
    const { keepGenerations, keepRefBuildsMs, repos } = this.options;
    const now = this.now();
    const expired: GcRoot[] = [];
    const byHost = new Map<string, GcRoot[]>();
    for (const root of this.roots) {
      const key = `${root.repo}/${root.host}`;
      byHost.set(key, [...(byHost.get(key) ?? []), root]);
    }
    for (const roots of byHost.values()) {
      const { repo, host } = roots[0] as GcRoot;
      const lastBuilt = Math.max(...roots.map((r) => r.builtAt));
      const current = this.currentHosts.get(repo);
      const gone = !repos.includes(repo) || (current !== undefined && !current.has(host));
      if (gone) {
        if (lastBuilt + keepRefBuildsMs <= now) expired.push(...roots);
        continue;
      }
      const defaults = roots.filter((r) => r.kind === "default").sort((a, b) => b.builtAt - a.builtAt);
      expired.push(...defaults.slice(keepGenerations));
      expired.push(...roots.filter((r) => r.kind === "ref" && r.builtAt + keepRefBuildsMs <= now));
    }
    await this.release(expired, "past the keep policy");
    this.save();
  }

  private async release(roots: GcRoot[], why: string): Promise<void> {
    for (const root of roots) {
      try {
        await unlink(root.link);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
          this.options.logger.warn({ link: root.link, err: errorMessage(err) }, "cannot release a GC root");
          continue;
        }
      }
      this.roots = this.roots.filter((r) => r !== root);
      this.options.logger.info({ repo: root.repo, host: root.host, storePath: root.storePath, kind: root.kind, why }, "released a GC root");
    }
    // Empty host and repo directories of released roots go too.
    for (const root of roots) {
      await rmdir(join(this.dir, root.repo, root.host)).catch(() => undefined);
      await rmdir(join(this.dir, root.repo)).catch(() => undefined);
    }
  }

  private save(): void {
    this.saves
      .save()
      .catch((err: unknown) =>
        this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "cannot save the GC root bookkeeping (the root links are unaffected)"),
      );
  }
}

async function isLink(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => undefined))?.isSymbolicLink() === true;
}

async function names(dir: string): Promise<string[]> {
  const stat = await lstat(dir).catch(() => undefined);
  if (!stat?.isDirectory()) return [];
  return readdir(dir).catch(() => []);
}
