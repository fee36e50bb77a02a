/**
 * Fixture flakes turned into real git repositories, so the builder fetches
 * them exactly as it fetches git+https repos in production.
 */
import { execFile } from "node:child_process";
import { chmod, cp, mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
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
  events(): Promise<Array<{ what: "start" | "end"; host: string; at: number }>>;
}

/** `fixture`: a directory name under test/fixtures, or an absolute path to a flake directory. */
export async function createFixtureFlake(fixture = "flake"): Promise<FixtureFlake> {
  const dir = await mkdtemp(join(tmpdir(), "hd-flake-"));
  await chmod(dir, 0o755);
  const eventsDir = join(dir, ".events");
  // nix runs builders as the nixbld users, even without a sandbox, and
  // which one depends on what else nix is building: the log must be
  // appendable by all of them, not only by whichever created it.
  await mkdir(eventsDir, { mode: 0o1777 });
  await chmod(eventsDir, 0o1777);
  const eventsLog = join(eventsDir, "events.log");
  await writeFile(eventsLog, "");
  await chmod(eventsLog, 0o666);
  await cp(isAbsolute(fixture) ? fixture : join(FIXTURES, fixture), dir, { recursive: true });
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
