/**
 * The cost of saving jobs.json before `accepted`, by itself, on an event
 * loop kept busy the way a build's log flood keeps the daemon's busy:
 * 64 KiB chunks of nix's internal-json lines parsed back to back. Three ways
 * to write the same body durably, interleaved request by request so they
 * share the machine's state:
 * - sync: writeFileAtomicSync on the event loop (temp file, fsync, rename,
 *   fsync of the directory, blocking);
 * - async: writeFileAtomic, the same in a dozen steps through libuv's pool;
 * - in-place: SlotFile, what jobs.json uses: overwrite the older of two
 *   slots, fdatasync in libuv's pool.
 * Reported: request → saved (what `accepted` waits for), and how long the
 * event loop was held by the save (what every other request waits for).
 *   npx tsx bench/jobs-save.ts [samples per way] [body KiB]
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFileAtomic, writeFileAtomicSync } from "../src/util/atomic-file.js";
import { SlotFile } from "../src/util/slot-file.js";
import { machine, percentile, round } from "./support.js";

const samples = Number(process.argv[2] ?? 300);
const bodyKiB = Number(process.argv[3] ?? 8);
const dir = await mkdtemp(join(tmpdir(), "hd-jobs-save-"));
const body = `${JSON.stringify({ version: 1, jobs: [{ requesters: Array.from({ length: Math.ceil((bodyKiB * 1024) / 40) }, (_, i) => `build.responses.${String(i).padStart(22, "0")}`) }] })}\n`;

// The flood: parse a 64 KiB chunk of internal-json lines, yield, again.
const line = `@nix ${JSON.stringify({ action: "result", id: 123456, type: 101, fields: ["building '/nix/store/abc-flood.drv'... line of build output that is fairly long"] })}`;
const chunk = Array.from({ length: Math.floor(65_536 / (line.length + 1)) }, () => line).join("\n");
let flooding = true;
let parsed = 0;
function flood(): void {
  if (!flooding) return;
  for (const text of chunk.split("\n")) parsed += (JSON.parse(text.slice(5)) as { id: number }).id > 0 ? 1 : 0;
  setImmediate(flood);
}
flood();

type Way = "sync" | "async" | "in-place";
const slots = new SlotFile(join(dir, "jobs-in-place.json"));
const ways: Record<Way, (file: string) => Promise<void>> = {
  sync: async (file) => writeFileAtomicSync(file, body, 0o600),
  async: (file) => writeFileAtomic(file, body, 0o600),
  "in-place": () => slots.write(body),
};
const saved: Record<Way, number[]> = { sync: [], async: [], "in-place": [] };
const held: Record<Way, number[]> = { sync: [], async: [], "in-place": [] };

// The first write makes the file (the slow way, once).
await slots.write(body);
for (let i = 0; i < samples; i++) {
  const order: Way[] = (["sync", "async", "in-place"] as const).slice(i % 3).concat((["sync", "async", "in-place"] as const).slice(0, i % 3));
  for (const way of order) {
    // Each request arrives between two flood chunks, as a NATS message does.
    await new Promise((resolve) => setImmediate(resolve));
    const start = performance.now();
    const writing = ways[way](join(dir, `jobs-${way}.json`));
    held[way].push(performance.now() - start);
    await writing;
    saved[way].push(performance.now() - start);
  }
}
flooding = false;

const summary = (values: number[]) => ({ p50: round(percentile(values, 50), 2), p90: round(percentile(values, 90), 2), p99: round(percentile(values, 99), 2), max: round(Math.max(...values), 2) });
console.log(
  JSON.stringify(
    {
      samples,
      bodyBytes: body.length,
      requestToSavedMs: { sync: summary(saved.sync), async: summary(saved.async), "in-place": summary(saved["in-place"]) },
      eventLoopHeldBySaveMs: { sync: summary(held.sync), async: summary(held.async), "in-place": summary(held["in-place"]) },
      floodLinesParsed: parsed,
      machine: machine(),
    },
    null,
    2,
  ),
);
process.exit(0);
