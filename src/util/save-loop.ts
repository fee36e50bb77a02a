/**
 * Saves after every change, one write at a time: changes that arrive while
 * a write runs are folded into a single next write, so a burst of changes
 * never queues up a burst of writes, and the last change is always saved.
 * `save` reports its own failures (they are the caller's to log): it must
 * not throw.
 */
export class SaveLoop {
  private writing: Promise<void> | undefined;
  private dirty = false;

  constructor(private readonly save: () => Promise<void>) {}

  /** Something worth keeping changed; save it soon. */
  request(): void {
    this.dirty = true;
    this.writing ??= this.drain();
  }

  /** Resolves once every requested change is written (or its write failed). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private async drain(): Promise<void> {
    try {
      while (this.dirty) {
        this.dirty = false;
        await this.save();
      }
    } finally {
      this.writing = undefined;
    }
  }
}
