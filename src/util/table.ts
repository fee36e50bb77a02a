/**
 * Plain-text tables for a terminal or a log: columns two spaces apart,
 * each as wide as its widest cell, the last one not padded (no trailing
 * blanks), no borders.
 *
 * By hand rather than cli-table3: that library draws borders unless every
 * border character is blanked, pads the last column too, and cuts cells to
 * fixed column widths — not lines to the terminal's width, which is what a
 * summary under a live build needs. What is left is a few lines.
 */

export interface TableOptions {
  /** Cut each line to this many characters ("…" at the end) instead of wrapping: the terminal's width. */
  width?: number;
  /**
   * A cell of a body row as shown (colour): applied after cutting, so the
   * cut counts visible characters only; a cell the cut reached is left plain.
   */
  paint?: (column: number, cell: string) => string;
}

export function textTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>, options: TableOptions = {}): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
  const starts = widths.map((_, i) => widths.slice(0, i).reduce((sum, w) => sum + w + 2, 0));
  const { width, paint } = options;
  const cut = (line: string) => (width !== undefined && line.length > width - 1 ? `${line.slice(0, Math.max(0, width - 2))}…` : line);
  const format = (cells: readonly string[], body: boolean) => {
    let line = cut(
      cells
        .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] as number)))
        .join("  ")
        .trimEnd(),
    );
    if (!body || !paint) return line;
    // Right to left, so the positions of the cells still to paint stay put.
    for (let i = cells.length - 1; i >= 0; i--) {
      const cell = cells[i] as string;
      const at = starts[i] as number;
      if (cell.length === 0 || line.length < at + cell.length || (line.endsWith("…") && line.length <= at + cell.length)) continue;
      line = `${line.slice(0, at)}${paint(i, cell)}${line.slice(at + cell.length)}`;
    }
    return line;
  };
  return [format(header, false), ...rows.map((row) => format(row, true))];
}
