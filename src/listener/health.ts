/**
 * The health check after a switch or test: the configured commands (argv
 * lists, no shell), one after another, all within `timeoutMs` from the
 * start; and, beside them, NATS reached again (a flush) within
 * `confirmTimeoutMs`, because a host that cannot reach NATS after its
 * switch can no longer be deployed (deploy-rs's "magic rollback" idea).
 */
import { commandFailure, type Activation } from "./activation.js";
import type { HealthCheckResult } from "../deploy-protocol.js";
import { withinMs } from "../util/within.js";

export interface HealthOptions {
  /** Runs the commands through the daemon's process supervisor (timeout, whole process tree ended). */
  activation: Activation;
  commands: string[][];
  timeoutMs: number;
  confirmTimeoutMs: number;
  /** Resolves once NATS has answered a flush; may reject or never settle. */
  confirmNats: () => Promise<void>;
}

export interface HealthReport {
  ok: boolean;
  checks: HealthCheckResult[];
  natsConfirmed: boolean;
}

/**
 * After a flush that failed although connected (a connection lost under it):
 * the next attempt then waits for the reconnect itself (confirmNats), this
 * only keeps a failing flush from spinning.
 */
const CONFIRM_RETRY_MS = 500;

export async function checkHealth(options: HealthOptions): Promise<HealthReport> {
  const nats = confirmWithin(options.confirmNats, options.confirmTimeoutMs);
  const checks = await runChecks(options);
  const natsConfirmed = await nats;
  return { ok: natsConfirmed && checks.every((c) => c.ok), checks, natsConfirmed };
}

async function runChecks(options: HealthOptions): Promise<HealthCheckResult[]> {
  const deadline = Date.now() + options.timeoutMs;
  const results: HealthCheckResult[] = [];
  for (const argv of options.commands) {
    const [bin, ...args] = argv as [string, ...string[]];
    const left = deadline - Date.now();
    if (left <= 0) {
      results.push({ argv, ok: false, exitCode: null, durationMs: 0, error: "not run: the health timeout had passed" });
      continue;
    }
    const run = await options.activation.runCommand(bin, args, left);
    const ok = run.result.outcome === "exited" && run.result.exitCode === 0;
    const tail = run.tail.slice(-5).join("\n");
    const error = ok ? undefined : [commandFailure(run, bin), tail].filter(Boolean).join("\n");
    results.push({ argv, ok, exitCode: run.result.exitCode ?? null, durationMs: run.result.durationMs, ...(error ? { error } : {}) });
  }
  return results;
}

/** True once `confirm` resolves, retrying a failed one, within `timeoutMs`; a hanging attempt counts until the deadline. */
async function confirmWithin(confirm: () => Promise<void>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    const attempt = await withinMs(
      confirm().then(
        () => "ok" as const,
        () => "failed" as const,
      ),
      left,
    );
    if (attempt === "ok") return true;
    if (attempt === undefined) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(CONFIRM_RETRY_MS, Math.max(0, deadline - Date.now()))));
  }
}
