/**
 * The daemons' state files under `stateDir`, by name, in one place: their
 * owners write them, and the daemon's start-up check, the state-health
 * metrics and /readyz go through this list, so a new file cannot be
 * missed there. What each holds, and what deleting it loses, is in
 * docs/deployment.md.
 */
export const STATE_FILES = {
  /** The durable job queue (src/builder/job-store.ts). */
  jobs: "jobs.json",
  /** Per-host build results (src/builder/keep/history.ts). */
  history: "history.json",
  /** The GC roots the builder registered (src/builder/keep/gc-roots.ts). */
  gcRoots: "gcroots.json",
  /** Toplevel .drv paths per locked revision (src/nix/toplevel-cache.ts). */
  toplevels: "toplevels.json",
  /** The nix process groups running now, to reap after a crash (src/nix/process-ledger.ts). */
  nixProcesses: "nix-processes.json",
  /** The Prometheus counters across restarts (src/observability/state.ts). */
  metrics: "metrics.json",
} as const;

/** The deploy listener's state files under its own `stateDir` (src/listener/). */
export const LISTENER_STATE_FILES = {
  /** The deploy in flight, answered after a restart (src/listener/in-flight.ts). */
  inFlight: "deploy.json",
  /** The last deploy, last success and pending-reboot timestamps (src/listener/metrics.ts). */
  metrics: "listener-metrics.json",
} as const;

/** Not a state file: the listener's GC root for the system of its last deploy (src/listener/activation.ts). */
export const LISTENER_SYSTEM_ROOT = "last-deployed-system";

export type StateFileName = (typeof STATE_FILES)[keyof typeof STATE_FILES];

export const STATE_FILE_NAMES: readonly StateFileName[] = Object.values(STATE_FILES);
