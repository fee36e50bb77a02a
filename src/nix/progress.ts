/**
 * Rate-limits progress messages: nix can report thousands of changes a
 * second, requesters need a few. The latest snapshot always wins, and the
 * last one is flushed when the host finishes, so the final counts arrive.
 *
 * One clock reading per message: the time the throttle spaces sends by is
 * the time handed to `publish` (which stamps the message with it). Reading
 * the clock again inside `publish` let a requester see two messages closer
 * than the interval whenever the process was descheduled between the two
 * readings, which a loaded 2-core machine does.
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
    /** `sentAt`: the Date.now() the interval is counted from; stamp the message with it. */
    private readonly publish: (progress: BuildProgress, sentAt: number) => void,
  ) {}

  update(progress: NixProgress): void {
    this.latest = progress;
    const now = Date.now();
    const wait = this.lastSentAt + this.minIntervalMs - now;
    if (wait <= 0) {
      this.send(now);
      return;
    }
    this.timer ??= setTimeout(() => this.sendDue(), wait);
  }

  /** Sends what is pending now and stops the timer. */
  flush(): void {
    if (this.latest) this.send();
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * Timers count on libuv's monotonic clock, the interval on Date.now(): their
   * millisecond roundings differ, so a timer may fire a millisecond early by
   * Date.now(). Wait out the rest then instead of sending early.
   */
  private sendDue(): void {
    this.timer = undefined;
    const wait = this.lastSentAt + this.minIntervalMs - Date.now();
    if (wait > 0) this.timer = setTimeout(() => this.sendDue(), wait);
    else this.send();
  }

  private send(now = Date.now()): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const progress = this.latest;
    if (!progress) return;
    this.latest = undefined;
    this.lastSentAt = now;
    this.publish(snapshot(progress), now);
  }
}
