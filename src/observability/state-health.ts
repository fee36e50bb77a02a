/**
 * Whether the builder's state files can be written. A failed write does not
 * stop builds (the files are memory across restarts, not the work), so it
 * is not a readiness failure; but an operator must see it before the next
 * restart loses what the file should have kept: /readyz says "degraded"
 * with the reason, and a metric counts the failures.
 */
export interface StateProblem {
  file: string;
  error: string;
}

export class StateHealth {
  private readonly failing = new Map<string, string>();
  private readonly listeners: Array<(file: string, error: string | undefined) => void> = [];

  /** The outcome of one write (or of the check at start-up) of `file`: undefined when it worked. */
  record(file: string, error: string | undefined): void {
    if (error === undefined) this.failing.delete(file);
    else this.failing.set(file, error);
    for (const listener of this.listeners) listener(file, error);
  }

  onRecord(listener: (file: string, error: string | undefined) => void): void {
    this.listeners.push(listener);
  }

  problems(): StateProblem[] {
    return [...this.failing].map(([file, error]) => ({ file, error }));
  }
}
