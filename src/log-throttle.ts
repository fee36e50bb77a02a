import type { Logger } from "./logger.js";

/**
 * At most `limit` warnings per key and window: a flood of bad requests must
 * not turn into a flood of journal lines. What was held back is counted and
 * reported once the window is over.
 */
export class LogThrottle {
  private readonly windows = new Map<string, { startedAt: number; logged: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly windowMs: number,
    private readonly limit: number,
  ) {}

  warn(key: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    let window = this.windows.get(key);
    if (!window || now - window.startedAt >= this.windowMs) {
      if (window && window.suppressed > 0) {
        this.logger.warn({ suppressed: window.suppressed }, `${message} (and ${window.suppressed} more like it in the last ${Math.round(this.windowMs / 1000)}s)`);
      }
      window = { startedAt: now, logged: 0, suppressed: 0 };
      this.windows.set(key, window);
    }
    if (window.logged < this.limit) {
      window.logged++;
      this.logger.warn(fields, message);
    } else {
      window.suppressed++;
    }
  }
}
