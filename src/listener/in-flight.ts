/**
 * The deploy in flight, in <stateDir>/deploy.json: saved before `accepted`
 * and before every step that changes the host, removed after the final answer. A listener that was
 * killed during a deploy (its own switch restarted it, a crash, SIGKILL)
 * finds it at the next start and answers the requester: the file says how
 * far the deploy got, which system it meant to activate and what to roll
 * back to.
 */
import { unlink } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { DeployActionSchema, DeployPhaseSchema } from "../deploy-protocol.js";
import { LISTENER_STATE_FILES } from "../state-files.js";
import { StateFile } from "../util/state-file.js";

export const InFlightSchema = z.object({
  version: z.literal(1),
  deployId: z.string().regex(/^d[0-9a-f]{10}$/),
  action: DeployActionSchema,
  ref: z.string().nullable(),
  /** The toplevel the request named (prebuilt), or null: evaluated on the host. */
  requested: z.string().nullable(),
  requesters: z.array(z.string()),
  /** The last message number used. */
  seq: z.number().int().nonnegative(),
  startedAt: z.number(),
  /** Where it got to (src/deploy-protocol.ts's DeployPhaseSchema): a restart resumes from there. */
  phase: DeployPhaseSchema,
  /** The system being activated (known once fetched or built). */
  toplevel: z.string().nullable(),
  previous: z.string().nullable(),
  previousGeneration: z.number().int().nullable(),
  generation: z.number().int().nullable(),
  /** How often a restart has taken this deploy up again. */
  restarts: z.number().int().nonnegative(),
});
export type InFlight = z.infer<typeof InFlightSchema>;

export type InFlightRead = { status: "none" } | { status: "found"; deploy: InFlight } | { status: "unusable"; why: string };

export class InFlightStore {
  readonly file: string;
  private current: InFlight | null = null;
  /** Names the requesters, hence 0o600. */
  private readonly state: StateFile<InFlight | null>;

  constructor(stateDir: string) {
    this.file = join(stateDir, LISTENER_STATE_FILES.inFlight);
    this.state = new StateFile({ file: this.file, schema: InFlightSchema.nullable(), snapshot: () => this.current, mode: 0o600 });
  }

  async load(): Promise<InFlightRead> {
    const read = await this.state.read();
    switch (read.status) {
      case "missing":
        return { status: "none" };
      case "loaded":
        return read.value === null ? { status: "none" } : { status: "found", deploy: read.value };
      case "corrupt":
        return { status: "unusable", why: `${this.file} is not a saved deploy (${read.problem})` };
      case "unreadable":
        return { status: "unusable", why: `cannot read ${this.file}: ${String(read.error)}` };
    }
  }

  /** Throws when it cannot be written: a deploy that cannot be saved is not started. */
  async save(deploy: InFlight): Promise<void> {
    this.current = deploy;
    await this.state.save();
  }

  async clear(): Promise<void> {
    this.current = null;
    // A save still being written must not bring the file back after the unlink.
    await this.state.flush();
    await unlink(this.file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
  }
}
