/**
 * The fixed-width tables the client prints (a build's per-host summary, a
 * deploy's, the fleet list): columns padded to their widest cell, the last
 * left ragged, each line cut to `width` on a terminal instead of wrapping,
 * and one column's cells coloured after cutting (so the cut counts visible
 * characters only).
 */
export type Paint = (color: "green" | "red" | "yellow" | "dim" | "bold", text: string) => string;

export interface TableOptions {
  /** Cut each line to this many characters (a terminal's width). */
  width?: number | undefined;
  /** Which column to colour, and with what colour for a cell's text. */
  colour?: { column: number; paint: Paint; colourOf: (cell: string) => "green" | "red" | "yellow" | "dim" | "bold" | undefined };
}

export function formatTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>, options: TableOptions = {}): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
  const { width, colour } = options;
  const cut = (line: string) => (width !== undefined && line.length > width - 1 ? `${line.slice(0, Math.max(0, width - 2))}…` : line);
  const format = (cells: readonly string[], colorize: boolean) => {
    const line = cut(
      cells
        .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] as number)))
        .join("  ")
        .trimEnd(),
    );
    if (!colorize || !colour) return line;
    const at = widths.slice(0, colour.column).reduce((sum, w) => sum + w + 2, 0);
    const cell = cells[colour.column] ?? "";
    const color = colour.colourOf(cell);
    if (color === undefined || cell.length === 0 || line.length < at + cell.length) return line;
    return `${line.slice(0, at)}${colour.paint(color, cell)}${line.slice(at + cell.length)}`;
  };
  return [format(header, false), ...rows.map((row) => format(row, true))];
}
