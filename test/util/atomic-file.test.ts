import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { writeFileAtomic, writeFileAtomicSync } from "../../src/util/atomic-file.js";

const dir = () => mkdtemp(join(tmpdir(), "hd-atomic-"));

describe.each([
  ["writeFileAtomic", (file: string, body: string, mode?: number) => writeFileAtomic(file, body, mode)],
  ["writeFileAtomicSync", async (file: string, body: string, mode?: number) => writeFileAtomicSync(file, body, mode)],
  ["writeFileAtomicSync, not durable", async (file: string, body: string, mode?: number) => writeFileAtomicSync(file, body, mode, { durable: false })],
])("%s", (_name, write) => {
  it("replaces the file with the new text, with the mode asked for, and leaves no temp file", async () => {
    const d = await dir();
    const file = join(d, "state.json");
    await write(file, "one\n", 0o600);
    await write(file, "two\n", 0o600);
    expect(await readFile(file, "utf8")).toBe("two\n");
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readdir(d)).toEqual(["state.json"]);
  });

  it("refuses to replace a FIFO, naming it, and does not block on it", async () => {
    const d = await dir();
    const file = join(d, "state.json");
    execFileSync("mkfifo", [file]);
    await expect(write(file, "x")).rejects.toThrow(/state\.json is a FIFO, not a regular file/);
    expect((await stat(file)).isFIFO()).toBe(true);
  });

  it("does not block on a FIFO left at its temp path: it writes past it", async () => {
    const d = await dir();
    const file = join(d, "state.json");
    execFileSync("mkfifo", [`${file}.${process.pid}.tmp`]);
    await write(file, "written\n");
    expect(await readFile(file, "utf8")).toBe("written\n");
  });
});
