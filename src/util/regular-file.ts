/**
 * State files are only ever regular files. Opening a FIFO for reading
 * blocks until a writer comes (at start-up: forever), so a path is opened
 * non-blocking and checked before a byte is read, and a write never
 * replaces something that is not a regular file: whatever put it there
 * wants an operator to look.
 */
import { constants, lstatSync } from "node:fs";
import { lstat, open } from "node:fs/promises";
import type { z } from "zod";
import { StateFileError } from "../errors.js";
import { checkJson } from "./json.js";

function kind(stats: { isFIFO(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isSocket(): boolean }): string {
  if (stats.isFIFO()) return "a FIFO";
  if (stats.isDirectory()) return "a directory";
  if (stats.isSymbolicLink()) return "a symbolic link";
  if (stats.isSocket()) return "a socket";
  return "a device";
}

function refused(file: string, what: string): StateFileError {
  return new StateFileError(`${file} is ${what}, not a regular file; remove it (the builder writes a fresh one)`);
}

/** The file's text; ENOENT and other read errors are thrown as they are, a non-regular file as StateFileError. */
export async function readRegularFile(file: string): Promise<string> {
  return (await readRegularFileBytes(file)).toString("utf8");
}

/** The same, as bytes. */
export async function readRegularFileBytes(file: string): Promise<Buffer> {
  const handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW).catch(async (err: NodeJS.ErrnoException) => {
    // O_NOFOLLOW on a symlink fails with ELOOP: say what is there.
    if (err.code === "ELOOP") throw refused(file, "a symbolic link");
    throw err;
  });
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw refused(file, kind(stats));
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** A state file read at start-up: each caller decides what a missing, unreadable or corrupt one means. */
export type StateFileRead<T> =
  | { status: "loaded"; value: T }
  | { status: "missing" }
  /** Not a regular file (StateFileError) or not readable. */
  | { status: "unreadable"; error: unknown }
  /** Not JSON of the expected shape; `problem` says why ("not JSON: …", "<key path>: …"). */
  | { status: "corrupt"; problem: string };

/** A state file's JSON checked against `schema`, never blocking on a FIFO (see readRegularFile). */
export async function readStateFile<T>(file: string, schema: z.ZodType<T>): Promise<StateFileRead<T>> {
  let text: string;
  try {
    text = await readRegularFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { status: "missing" };
    return { status: "unreadable", error: err };
  }
  return stateFileText(text, schema);
}

/** A state file's text checked against `schema`: loaded, or corrupt saying why. */
export function stateFileText<T>(text: string, schema: z.ZodType<T>): Extract<StateFileRead<T>, { status: "loaded" | "corrupt" }> {
  const checked = checkJson(text, schema);
  return checked.ok ? { status: "loaded", value: checked.value } : { status: "corrupt", problem: checked.problem };
}

/** Throws StateFileError when something other than a regular file (or nothing) is at `file`. */
export async function assertReplaceable(file: string): Promise<void> {
  const stats = await lstat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  if (stats && !stats.isFile()) throw refused(file, kind(stats));
}

/** The same, blocking (for writeFileAtomicSync). */
export function assertReplaceableSync(file: string): void {
  let stats;
  try {
    stats = lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (!stats.isFile()) throw refused(file, kind(stats));
}
