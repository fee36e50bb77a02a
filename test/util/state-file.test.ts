import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { StateFile } from "../../src/util/state-file.js";

const Schema = z.object({ version: z.literal(1), items: z.array(z.string()) });

async function stateFile(writer: "async" | "in-place") {
  const dir = await mkdtemp(join(tmpdir(), "hd-state-file-"));
  const items: string[] = [];
  const outcomes: Array<string | undefined> = [];
  const state = new StateFile({
    file: join(dir, "deploys.json"),
    schema: Schema,
    snapshot: () => ({ version: 1 as const, items }),
    mode: 0o600,
    writer,
    onSaved: (error) => outcomes.push(error),
  });
  return { dir, items, outcomes, state };
}

describe.each(["async", "in-place"] as const)("StateFile (%s writer)", (writer) => {
  it("reads nothing at first, then what was saved, with the mode asked for, and reports each write", async () => {
    const { items, outcomes, state } = await stateFile(writer);
    expect(await state.read()).toEqual({ status: "missing" });
    items.push("d1");
    await state.save();
    items.push("d2");
    await state.save();
    expect(await state.read()).toEqual({ status: "loaded", value: { version: 1, items: ["d1", "d2"] } });
    expect((await stat(state.file)).mode & 0o777).toBe(0o600);
    // What is on disk, read by a fresh reader (another process after a restart).
    const again = new StateFile({ file: state.file, schema: Schema, snapshot: () => ({ version: 1 as const, items: [] }), writer });
    expect(await again.read()).toEqual({ status: "loaded", value: { version: 1, items: ["d1", "d2"] } });
    if (writer === "async") expect(JSON.parse(await readFile(state.file, "utf8"))).toEqual({ version: 1, items: ["d1", "d2"] });
    expect(outcomes).toEqual([undefined, undefined]);
  });

  it("refuses to replace a FIFO: the save rejects with the reason, and onSaved is told", async () => {
    const { dir, outcomes, state } = await stateFile(writer);
    execFileSync("mkfifo", [join(dir, "deploys.json")]);
    await expect(state.save()).rejects.toThrow(/deploys\.json is a FIFO, not a regular file/);
    expect(outcomes).toEqual([expect.stringMatching(/is a FIFO/)]);
    expect(await state.read()).toMatchObject({ status: "unreadable" });
  });
});
