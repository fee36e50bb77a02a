import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { SavedJob } from "../../src/builder/job-store.js";
import { decodeSlotFile } from "../../src/util/slot-file.js";

/** The job queue as saved in `<stateDir>/jobs.json` (its newest intact copy), read the way a restarted builder reads it. */
export function savedQueue(stateDir: string): { version: 1; jobs: SavedJob[] } {
  const decoded = decodeSlotFile(readFileSync(join(stateDir, "jobs.json")));
  if (decoded.status !== "loaded") throw new Error(`jobs.json: ${decoded.problem}`);
  return JSON.parse(decoded.text) as { version: 1; jobs: SavedJob[] };
}
