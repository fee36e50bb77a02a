import { execFileSync, spawn } from "node:child_process";
import { mkdtemp, open, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { StateFileError } from "../../src/errors.js";
import { SlotFile } from "../../src/util/slot-file.js";

const here = dirname(fileURLToPath(import.meta.url));
const SLOT = 64 * 1024;

async function fresh() {
  const dir = await mkdtemp(join(tmpdir(), "hd-slots-"));
  const file = join(dir, "jobs.json");
  return { dir, file, slots: new SlotFile(file) };
}

/** What a restarted process reads: a new SlotFile on the same path. */
const reread = (file: string) => new SlotFile(file).read();

/** The slot header of copy `i` (0 or 1), as an operator sees it with `head`. */
async function header(file: string, i: number): Promise<string> {
  const data = await readFile(file);
  const slot = data.subarray((i * data.length) / 2);
  return slot.subarray(0, slot.indexOf(0x0a)).toString("latin1");
}

describe("SlotFile", () => {
  it("reads nothing at first; after writes, the newest text, in a file of two slots with mode 0600", async () => {
    const { file, slots } = await fresh();
    expect(await slots.read()).toEqual({ status: "missing" });
    await slots.write("one\n");
    await slots.write("two\n");
    await slots.write("three\n");
    expect(await reread(file)).toEqual({ status: "loaded", text: "three\n" });
    const stats = await stat(file);
    expect(stats.size).toBe(2 * SLOT);
    expect(stats.mode & 0o777).toBe(0o600);
    // The two copies, written in turn: the third write went where the first was.
    expect(await header(file, 0)).toMatch(/^homelab-deploy state slot 1 seq=3 bytes=6 sha256=[0-9a-f]{64}$/);
    expect(await header(file, 1)).toMatch(/ seq=2 bytes=4 /);
  });

  it("writes in place after the first write: the same file (inode), its size unchanged, no temp file", async () => {
    const { dir, file, slots } = await fresh();
    await slots.write("first\n");
    const made = await stat(file);
    for (let i = 0; i < 20; i++) await slots.write(`${"y".repeat(i * 100)}\n`);
    const after = await stat(file);
    expect(after.ino).toBe(made.ino);
    expect(after.size).toBe(made.size);
    expect(await readdir(dir)).toEqual(["jobs.json"]);
    expect(await reread(file)).toEqual({ status: "loaded", text: `${"y".repeat(1900)}\n` });
  });

  it("goes on from a file another process wrote, into the slot that does not hold the newest copy", async () => {
    const { file, slots } = await fresh();
    await slots.write("a\n");
    await slots.write("b\n");
    const next = new SlotFile(file);
    expect(await next.read()).toEqual({ status: "loaded", text: "b\n" });
    await next.write("c\n");
    expect(await header(file, 0)).toMatch(/ seq=3 /);
    expect(await header(file, 1)).toMatch(/ seq=2 /);
    expect(await reread(file)).toEqual({ status: "loaded", text: "c\n" });
  });

  it("a torn write (the newest copy damaged) reads as the copy before it; both damaged is corrupt, saying why", async () => {
    const { file, slots } = await fresh();
    await slots.write('{"n":1}\n');
    await slots.write('{"n":2}\n');
    // A crash halfway through the second write: part of its text never reached the disk.
    const handle = await open(file, "r+");
    await handle.write(Buffer.from("\0\0\0"), 0, 3, SLOT + 116);
    await handle.close();
    expect(await reread(file)).toEqual({ status: "loaded", text: '{"n":1}\n' });
    // And the next write goes over the torn copy, not over the intact one.
    const next = new SlotFile(file);
    await next.read();
    await next.write('{"n":3}\n');
    expect(await header(file, 1)).toMatch(/ seq=2 /);
    expect(await reread(file)).toEqual({ status: "loaded", text: '{"n":3}\n' });
    // Both copies damaged: nothing is made up.
    const again = await open(file, "r+");
    await again.write(Buffer.from("garbage"), 0, 7, 0);
    await again.write(Buffer.from("\0\0\0"), 0, 3, SLOT + 116);
    await again.close();
    expect(await reread(file)).toEqual({ status: "corrupt", problem: "no intact copy (copy 1: no header; copy 2: checksum mismatch (a torn write))" });
  });

  it("a text larger than a slot makes a fresh file with slots twice its size, then writes in place again", async () => {
    const { file, slots } = await fresh();
    await slots.write("small\n");
    const big = `${"z".repeat(100_000)}\n`;
    await slots.write(big);
    const grown = await stat(file);
    expect(grown.size).toBe(2 * 256 * 1024);
    expect(await reread(file)).toEqual({ status: "loaded", text: big });
    await slots.write("small again\n");
    expect((await stat(file)).ino).toBe(grown.ino);
    expect(await reread(file)).toEqual({ status: "loaded", text: "small again\n" });
  });

  it("reads a plain JSON file (written before slots) as it is, and replaces it with slots at the first write", async () => {
    const { file, slots } = await fresh();
    await writeFile(file, '{"version":1,"jobs":[]}\n');
    expect(await slots.read()).toEqual({ status: "loaded", text: '{"version":1,"jobs":[]}\n' });
    await slots.write('{"version":1,"jobs":["x"]}\n');
    expect(await header(file, 0)).toMatch(/ seq=1 /);
    expect(await reread(file)).toEqual({ status: "loaded", text: '{"version":1,"jobs":["x"]}\n' });
  });

  it("a file of another size (truncated by hand) is corrupt; one removed while running is made again at the next write", async () => {
    const { file, slots } = await fresh();
    await slots.write("one\n");
    await writeFile(file, "x".repeat(101));
    expect(await reread(file)).toEqual({ status: "corrupt", problem: "101 bytes: neither plain JSON nor two slots of one size" });
    await rm(file);
    await slots.write("two\n");
    expect(await reread(file)).toEqual({ status: "loaded", text: "two\n" });
  });

  it("never reads from or writes through a FIFO or a symlink at its path, and says what is there", async () => {
    const { dir, file, slots } = await fresh();
    await slots.write("one\n");
    await rm(file);
    execFileSync("mkfifo", [file]);
    expect(await reread(file)).toMatchObject({ status: "unreadable", error: expect.any(StateFileError) });
    await expect(slots.write("two\n")).rejects.toThrow(/jobs\.json is a FIFO, not a regular file/);
    await rm(file);
    const elsewhere = join(dir, "elsewhere");
    await writeFile(elsewhere, "keep me");
    await symlink(elsewhere, file);
    await expect(slots.write("three\n")).rejects.toThrow(/jobs\.json is a symbolic link, not a regular file/);
    expect(await readFile(elsewhere, "utf8")).toBe("keep me");
  });

  it("killed (SIGKILL) in the middle of writing, leaves the last text it finished or a newer one", async () => {
    const { file } = await fresh();
    const writer = spawn(process.execPath, ["--import", "tsx", join(here, "..", "fixtures", "slot-writer.ts"), file], { stdio: ["ignore", "pipe", "inherit"] });
    let finished = 0;
    await new Promise<void>((resolve, reject) => {
      writer.on("error", reject);
      writer.on("exit", (code) => reject(new Error(`the writer exited (${code}) before it was killed`)));
      writer.stdout.on("data", (chunk: Buffer) => {
        for (const line of chunk.toString().split("\n").filter(Boolean)) finished = Number(line);
        if (finished >= 300) {
          writer.removeAllListeners("exit");
          writer.kill("SIGKILL");
          writer.once("exit", () => resolve());
        }
      });
    });
    const read = await reread(file);
    expect(read.status).toBe("loaded");
    const { n } = JSON.parse((read as { text: string }).text) as { n: number };
    // Its stdout may lag its writes, never lead them: what it reported done is on disk (or newer).
    expect(n).toBeGreaterThanOrEqual(finished);
  });
});
