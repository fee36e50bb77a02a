import type { Readable } from "node:stream";

/**
 * Calls `onLine` for every line of `stream`. Unlike readline, a line that
 * never ends (a builder printing a progress bar with \r) cannot grow
 * without bound: past `maxLineLength` characters it is cut and the rest of
 * it dropped.
 */
export function forEachLine(
  stream: Readable,
  onLine: (line: string) => void,
  maxLineLength = 64 * 1024,
): Promise<void> {
  let pending = "";
  let overflowed = false;
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf("\n", start);
      if (newline === -1) break;
      emit(chunk.slice(start, newline));
      start = newline + 1;
    }
    append(chunk.slice(start));
  });

  function append(text: string): void {
    if (overflowed || text.length === 0) return;
    pending += text;
    if (pending.length > maxLineLength) {
      pending = `${pending.slice(0, maxLineLength)}…`;
      overflowed = true;
    }
  }

  function emit(end: string): void {
    append(end);
    const line = pending.endsWith("\r") ? pending.slice(0, -1) : pending;
    pending = "";
    overflowed = false;
    onLine(line);
  }

  return new Promise((resolve) => {
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (pending.length > 0) onLine(pending);
      pending = "";
      resolve();
    };
    stream.once("end", finish);
    stream.once("error", finish);
    stream.once("close", finish);
  });
}
