/**
 * Reading the builder's /metrics as Prometheus does: the text exposition
 * format parsed into samples, and the daemon's metrics address taken from
 * its own log line.
 */
import type { BuilderProcess } from "./daemon.js";

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** `# TYPE` of each metric family. */
  types: Record<string, string>;
}

const SAMPLE_RE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const LABEL_RE = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function unescape(value: string): string {
  return value.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
}

function parseValue(text: string): number {
  if (text === "+Inf") return Number.POSITIVE_INFINITY;
  if (text === "-Inf") return Number.NEGATIVE_INFINITY;
  return Number(text);
}

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      if (name && type) types[name] = type;
      continue;
    }
    if (!line.trim() || line.startsWith("#")) continue;
    const match = SAMPLE_RE.exec(line);
    if (!match) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? "").matchAll(LABEL_RE)) labels[key as string] = unescape(value as string);
    samples.push({ name: match[1] as string, labels, value: parseValue(match[3] as string) });
  }
  return { samples, types };
}

/** Samples of `name` whose labels include `labels`. */
export function samplesOf(exposition: Exposition, name: string, labels: Record<string, string> = {}): Sample[] {
  return exposition.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([key, value]) => s.labels[key] === value),
  );
}

/**
 * The one sample of `name` with exactly these labels (plus none else), or
 * undefined. The `builder` label every series of a daemon carries counts
 * only when asked for.
 */
export function valueOf(exposition: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const count = (s: Sample) => Object.keys(s.labels).filter((key) => key !== "builder" || "builder" in labels).length;
  const wanted = Object.keys(labels).length;
  return samplesOf(exposition, name, labels).find((s) => count(s) === wanted)?.value;
}

export function metricsBaseUrl(builder: BuilderProcess): Promise<string> {
  return builder.waitForLog((l) => l.msg === "metrics server listening").then((line) => `http://127.0.0.1:${String(line.port)}`);
}

export async function scrape(baseUrl: string): Promise<Exposition> {
  const response = await fetch(`${baseUrl}/metrics`);
  if (response.status !== 200) throw new Error(`GET /metrics answered ${response.status}`);
  expectPrometheusContentType(response.headers.get("content-type"));
  return parseExposition(await response.text());
}

function expectPrometheusContentType(contentType: string | null): void {
  if (!contentType?.startsWith("text/plain; version=0.0.4")) throw new Error(`unexpected content type ${contentType}`);
}

/** Polls `probe` until it returns something other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 30_000, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
