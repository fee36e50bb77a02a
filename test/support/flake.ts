/**
 * Fixture flakes turned into real git repositories, so the builder fetches
 * them exactly as it fetches git+https repos in production.
 */
import { execFile } from "node:child_process";
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";

const run = promisify(execFile);
const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures");

export const nixSystem = `${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux`;

async function git(dir: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("git", ["-C", dir, "-c", "user.name=test", "-c", "user.email=test@example.org", ...args]);
  return stdout.trim();
}

export interface BuildInterval {
  host: string;
  start: number;
  end: number;
}

export interface FixtureFlake {
  dir: string;
  /** The directory every build appends start/end lines to. */
  eventsDir: string;
  url: string;
  /** Commits a new nonce so the next build of every host really builds. */
  bump(): Promise<string>;
  /** Creates (or updates) a branch whose builds differ from the default branch. */
  branch(name: string): Promise<string>;
  head(): Promise<string>;
  /** Rewrites flake.nix on the default branch and commits it. */
  editFlake(transform: (text: string) => string): Promise<string>;
  events(): Promise<Array<{ what: "start" | "end"; host: string; at: number }>>;
  /** Each build as [start, end] from those events; a build that never ended (killed) ends at +inf. */
  intervals(): Promise<BuildInterval[]>;
  /**
   * Removes the slow host's pid file before a build of it, so the pid read
   * afterwards is that build's (a stale file could belong to another
   * nixbld user and not be overwritten).
   */
  clearPid(): Promise<void>;
  /** The pid the slow host's build wrote (waits up to 10 s for the build to get there). */
  slowPid(): Promise<number>;
}

/**
 * `fixture`: a directory name under test/fixtures, or an absolute path to a
 * flake directory; several are copied in order, each over the one before
 * (a benchmark's bigger sizes over a test fixture).
 */
export async function createFixtureFlake(fixture: string | readonly string[] = "flake"): Promise<FixtureFlake> {
  const dir = await mkdtemp(join(tmpdir(), "hd-flake-"));
  await chmod(dir, 0o755);
  const eventsDir = join(dir, ".events");
  // nix runs builders as whichever nixbld user is free, even without a
  // sandbox: the log must be writable by all of them (a file one of them
  // created would be read-only to the others).
  await mkdir(eventsDir, { mode: 0o1777 });
  await chmod(eventsDir, 0o1777);
  await writeFile(join(eventsDir, "events.log"), "");
  await chmod(join(eventsDir, "events.log"), 0o666);
  for (const layer of typeof fixture === "string" ? [fixture] : fixture) {
    await cp(isAbsolute(layer) ? layer : join(FIXTURES, layer), dir, { recursive: true });
  }
  const flakeFile = join(dir, "flake.nix");
  const template = await readFile(flakeFile, "utf8");
  await writeFile(flakeFile, template.replaceAll("@SYSTEM@", nixSystem).replaceAll("@EVENTS@", eventsDir));
  await writeFile(join(dir, ".gitignore"), ".events/\n");
  await writeFile(join(dir, "nonce"), randomBytes(8).toString("hex"));
  await run("git", ["init", "-q", "-b", "main", dir]);
  await git(dir, "add", "-A");
  await git(dir, "commit", "-q", "-m", "fixture");
  const flake: FixtureFlake = {
    dir,
    eventsDir,
    url: `git+file://${dir}`,
    async bump() {
      await writeFile(join(dir, "nonce"), randomBytes(8).toString("hex"));
      await git(dir, "commit", "-q", "-am", "bump nonce");
      return git(dir, "rev-parse", "HEAD");
    },
    async branch(name: string) {
      await git(dir, "checkout", "-q", "-B", name);
      await writeFile(join(dir, "nonce"), `${name}-${randomBytes(8).toString("hex")}`);
      await git(dir, "commit", "-q", "-am", `branch ${name}`);
      const rev = await git(dir, "rev-parse", "HEAD");
      await git(dir, "checkout", "-q", "main");
      return rev;
    },
    head: () => git(dir, "rev-parse", "HEAD"),
    async editFlake(transform) {
      await writeFile(flakeFile, transform(await readFile(flakeFile, "utf8")));
      await git(dir, "commit", "-q", "-am", "edit flake.nix");
      return git(dir, "rev-parse", "HEAD");
    },
    async clearPid() {
      await rm(join(eventsDir, "slow.pid"), { force: true });
    },
    async slowPid() {
      for (let waited = 0; ; waited += 50) {
        const text = await readFile(join(eventsDir, "slow.pid"), "utf8").catch(() => "");
        if (/^\d+\s*$/.test(text)) return Number(text);
        if (waited > 10_000) throw new Error("the slow host's build never wrote its pid");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async intervals() {
      const intervals: BuildInterval[] = [];
      for (const event of await flake.events()) {
        if (event.what === "start") intervals.push({ host: event.host, start: event.at, end: Number.POSITIVE_INFINITY });
        else {
          const open = [...intervals].reverse().find((i) => i.host === event.host && i.end === Number.POSITIVE_INFINITY);
          if (open) open.end = event.at;
        }
      }
      return intervals;
    },
    async events() {
      const text = await readFile(join(eventsDir, "events.log"), "utf8").catch(() => "");
      return text
        .split("\n")
        .filter(Boolean)
        .map((line) => {
          const [what, host, at] = line.split(" ");
          return { what: what as "start" | "end", host: host as string, at: Number(at) };
        });
    },
  };
  return flake;
}
