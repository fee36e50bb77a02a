/**
 * Rate-limits progress messages: nix can report thousands of changes a
 * second, requesters need a few. The latest snapshot always wins, and the
 * last one is flushed when the host finishes, so the final counts arrive.
 */
import type { BuildProgress } from "../protocol.js";
import type { NixProgress } from "./log.js";

export function snapshot(progress: NixProgress): BuildProgress {
  return {
    derivations: { ...progress.derivations },
    substitutions: { ...progress.substitutions },
    downloadedBytes: progress.downloadedBytes,
    expectedDownloadBytes: progress.expectedDownloadBytes,
    building: progress.building ? { ...progress.building } : null,
  };
}

export class ProgressThrottle {
  /** nix's live counters (updated in place); copied only when a message goes out. */
  private latest: NixProgress | undefined;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly minIntervalMs: number,
    private readonly publish: (progress: BuildProgress) => void,
  ) {}

  update(progress: NixProgress): void {
    this.latest = progress;
    const wait = this.lastSentAt + this.minIntervalMs - Date.now();
    if (wait <= 0) {
      this.send();
      return;
    }
    this.timer ??= setTimeout(() => this.send(), wait);
  }

  /** Sends what is pending now and stops the timer. */
  flush(): void {
    if (this.latest) this.send();
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private send(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const progress = this.latest;
    if (!progress) return;
    this.latest = undefined;
    this.lastSentAt = Date.now();
    this.publish(snapshot(progress));
  }
}
