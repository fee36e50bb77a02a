/**
 * Sizes as operators write them in config: "2GiB", "512MiB", "1.5G", or a
 * bare number of bytes. K/M/G/T and KiB/MiB/GiB/TiB are both powers of
 * 1024, as systemd's MemoryMax= reads them, so one value means the same in
 * the builder's config and in its unit.
 */

const UNIT_BYTES: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/** Bytes, or undefined when the text is not a size. */
export function parseSize(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? Math.round(text) : undefined;
  const match = /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(text.trim());
  if (!match) return undefined;
  const unit = UNIT_BYTES[(match[2] as string).toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(match[1]) * unit);
}

const UNITS = [
  ["GiB", 1024 ** 3, 2],
  ["MiB", 1024 ** 2, 1],
  ["KiB", 1024, 0],
] as const;

/**
 * "2GiB", "276.4MiB", "512KiB", "100B": compact, for log lines and config
 * (parseSize reads it back). `"display"` is for people reading output:
 * "1.2 MiB", "59 KiB", "1.50 GiB" — a space before the unit and fixed
 * decimals per unit (GiB 2, MiB 1, KiB 0; nothing below KiB), so sizes in
 * a column or a line read alike.
 */
export function formatSize(bytes: number, style: "compact" | "display" = "compact"): string {
  if (style === "display") {
    const [unit, size, decimals] = UNITS.find(([, size]) => bytes >= size) ?? UNITS[2];
    return `${(bytes / size).toFixed(decimals)} ${unit}`;
  }
  for (const [unit, size] of UNITS) {
    if (bytes >= size) {
      const value = bytes / size;
      return `${Number.isInteger(value) ? value : value.toFixed(1)}${unit}`;
    }
  }
  return `${bytes}B`;
}
