/**
 * Durations as operators write them in config and flags: "90s", "10m",
 * "1h30m", "2d", "500ms". A bare number means seconds. Written by hand
 * because the common `ms` package accepts only one unit ("1h30m" is NaN).
 */

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  sec: 1000,
  m: 60_000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const PART = /(\d+(?:\.\d+)?)(ms|sec|min|s|m|h|d)/y;

/** Milliseconds, or undefined when the text is not a duration. */
export function parseDuration(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? Math.round(text * 1000) : undefined;
  const input = text.trim().replace(/\s+/g, "");
  if (/^\d+(\.\d+)?$/.test(input)) return Math.round(Number(input) * 1000);
  if (input.length === 0) return undefined;
  let total = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < input.length) {
    const start = PART.lastIndex;
    const match = PART.exec(input);
    if (!match || match.index !== start) return undefined;
    total += Number(match[1]) * (UNIT_MS[match[2] as string] as number);
  }
  return Math.round(total);
}

/** "1.2s", "3m05s", "1h02m" — short and stable for log lines and tables. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const totalSeconds = ms / 1000;
  if (totalSeconds < 60) return `${totalSeconds.toFixed(1)}s`;
  const seconds = Math.floor(totalSeconds % 60);
  const minutes = Math.floor(totalSeconds / 60) % 60;
  const hours = Math.floor(totalSeconds / 3600);
  const pad = (n: number) => String(n).padStart(2, "0");
  if (hours === 0) return `${minutes}m${pad(seconds)}s`;
  return `${hours}h${pad(minutes)}m`;
}

/** A configured duration as it was most likely written: "2s", "10m", "1h", else formatDuration. */
export function formatSetting(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return formatDuration(ms);
}
