import type { Logger } from "../logger.js";

/**
 * At most `limit` warnings per key and window: a flood of bad requests must
 * not turn into a flood of journal lines. What was held back is counted and
 * reported when the window ends.
 */
export class LogThrottle {
  private readonly windows = new Map<string, { logged: number; suppressed: number; message: string; level: "info" | "warn" }>();

  constructor(
    private readonly logger: Logger,
    private readonly windowMs: number,
    private readonly limit: number,
  ) {}

  warn(key: string, fields: Record<string, unknown>, message: string): void {
    this.log("warn", key, fields, message);
  }

  info(key: string, fields: Record<string, unknown>, message: string): void {
    this.log("info", key, fields, message);
  }

  private log(level: "info" | "warn", key: string, fields: Record<string, unknown>, message: string): void {
    let window = this.windows.get(key);
    if (!window) {
      window = { logged: 0, suppressed: 0, message, level };
      this.windows.set(key, window);
      setTimeout(() => this.close(key), this.windowMs).unref();
    }
    if (window.logged < this.limit) {
      window.logged++;
      this.logger[level](fields, message);
    } else {
      window.suppressed++;
    }
  }

  private close(key: string): void {
    const window = this.windows.get(key);
    this.windows.delete(key);
    if (!window || window.suppressed === 0) return;
    const seconds = Math.round(this.windowMs / 1000);
    this.logger[window.level]({ suppressed: window.suppressed }, `${window.message} (and ${window.suppressed} more like it in the last ${seconds}s)`);
  }
}
