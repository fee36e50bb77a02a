/**
 * The listener's Prometheus metrics, a registry of its own (served by the
 * observability HTTP server on metrics.listen). Names and labels are a
 * contract with monitoring/ (HomelabDeployRolledBack,
 * HomelabDeployRebootPending) and docs/observability.md.
 *
 * Counters start at 0 for every action and status, so `increase()` sees
 * the first deploy. The timestamps (last deploy, last success, when the
 * pending reboot was first seen) are kept in <stateDir>/listener-metrics.json:
 * a restart must not make a reboot pending for a month look new.
 */
import { join } from "node:path";
import { Counter, Gauge, Registry } from "prom-client";
import { z } from "zod";
import { DeployActionSchema, DeployStatusSchema, type DeployAction, type DeployStatus } from "../deploy-protocol.js";
import type { Logger } from "../logger.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { readStateFile } from "../util/regular-file.js";
import { SaveLoop } from "../util/save-loop.js";

export const LISTENER_METRICS_FILE = "listener-metrics.json";

const SavedSchema = z.object({
  lastDeploy: z.number().nullable(),
  lastSuccess: z.number().nullable(),
  rebootRequiredSince: z.number().nullable(),
});
type Saved = z.infer<typeof SavedSchema>;

export interface ListenerMetricsOptions {
  tier: string;
  host: string;
  version: string;
  stateDir: string;
  logger: Logger;
  now?: () => number;
}

export class ListenerMetrics {
  readonly registry = new Registry();
  private readonly labels: { tier: string; host: string };
  private readonly deploys: Counter<"tier" | "host" | "action" | "status">;
  private readonly lastDeploy: Gauge<"tier" | "host">;
  private readonly lastSuccess: Gauge<"tier" | "host">;
  private readonly rebootRequired: Gauge<"tier" | "host">;
  private readonly rebootSince: Gauge<"tier" | "host">;
  private readonly ignored: Counter;
  private saved: Saved = { lastDeploy: null, lastSuccess: null, rebootRequiredSince: null };
  private readonly file: string;
  private readonly now: () => number;
  private readonly saves = new SaveLoop(() => this.save());

  constructor(private readonly options: ListenerMetricsOptions) {
    this.labels = { tier: options.tier, host: options.host };
    this.file = join(options.stateDir, LISTENER_METRICS_FILE);
    this.now = options.now ?? Date.now;
    const registers = [this.registry];
    this.deploys = new Counter({
      name: "homelab_deploy_deploys_total",
      help: "Deploys this listener finished, by action and status (success, failure, rolled_back).",
      labelNames: ["tier", "host", "action", "status"],
      registers,
    });
    this.lastDeploy = new Gauge({ name: "homelab_deploy_deploy_last_timestamp", help: "When the last deploy finished (Unix seconds; 0: none yet).", labelNames: ["tier", "host"], registers });
    this.lastSuccess = new Gauge({
      name: "homelab_deploy_deploy_last_success_timestamp",
      help: "When the last successful deploy finished (Unix seconds; 0: none yet).",
      labelNames: ["tier", "host"],
      registers,
    });
    this.rebootRequired = new Gauge({
      name: "homelab_deploy_reboot_required",
      help: "1 when the running system's kernel, initrd or kernel modules differ from the booted system's.",
      labelNames: ["tier", "host"],
      registers,
    });
    this.rebootSince = new Gauge({
      name: "homelab_deploy_reboot_required_since_timestamp",
      help: "When the pending reboot was first seen (Unix seconds; 0: none pending).",
      labelNames: ["tier", "host"],
      registers,
    });
    this.ignored = new Counter({
      name: "homelab_deploy_listener_requests_ignored_total",
      help: "Requests ignored because their reply subject is not under deploy.responses. (the listener may not answer there).",
      registers,
    });
    new Gauge({ name: "homelab_deploy_info", help: "The listener's version.", labelNames: ["version"], registers }).set({ version: options.version }, 1);
    for (const action of DeployActionSchema.options) {
      for (const status of DeployStatusSchema.options) this.deploys.inc({ ...this.labels, action, status }, 0);
    }
    this.publish();
  }

  async load(): Promise<void> {
    const read = await readStateFile(this.file, SavedSchema);
    if (read.status === "loaded") this.saved = read.value;
    else if (read.status !== "missing") this.options.logger.warn({ file: this.file, status: read.status }, "cannot read the saved deploy timestamps; starting from none");
    this.publish();
  }

  ignoredRequest(): void {
    this.ignored.inc();
  }

  deployFinished(action: DeployAction, status: DeployStatus): void {
    const now = this.now();
    this.deploys.inc({ ...this.labels, action, status });
    this.saved.lastDeploy = now;
    if (status === "success") this.saved.lastSuccess = now;
    this.publish();
    this.saves.request();
  }

  /** Whether a reboot is pending now (at start and after every deploy). */
  setRebootRequired(required: boolean): void {
    const since = required ? (this.saved.rebootRequiredSince ?? this.now()) : null;
    const changed = since !== this.saved.rebootRequiredSince;
    this.saved.rebootRequiredSince = since;
    this.publish();
    if (changed) this.saves.request();
  }

  private publish(): void {
    const seconds = (ms: number | null) => (ms === null ? 0 : Math.floor(ms / 1000));
    this.lastDeploy.set(this.labels, seconds(this.saved.lastDeploy));
    this.lastSuccess.set(this.labels, seconds(this.saved.lastSuccess));
    this.rebootRequired.set(this.labels, this.saved.rebootRequiredSince === null ? 0 : 1);
    this.rebootSince.set(this.labels, seconds(this.saved.rebootRequiredSince));
  }

  /** Resolves once every change is written. */
  flush(): Promise<void> {
    return this.saves.flush();
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(this.saved)}\n`).catch((err: unknown) =>
      this.options.logger.warn({ file: this.file, err: String(err) }, "cannot save the deploy timestamps"),
    );
  }
}
