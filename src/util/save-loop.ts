/**
 * Saves after every change, one write at a time: changes that arrive while
 * a write runs are folded into a single next write (a group commit), so a
 * burst of changes never queues up a burst of writes, and the last change
 * is always saved. `save` takes its snapshot when it starts.
 */
export class SaveLoop {
  private writing: Promise<void> | undefined;
  /** Settles with the write that starts next: every request made since the last one started waits for it. */
  private next: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } | undefined;

  constructor(private readonly save: () => Promise<void>) {}

  /**
   * Something worth keeping changed; save it soon. Resolves once a write
   * that started after this call is done, rejects if that write failed.
   * Callers that only want it saved "soon" may ignore the promise: its
   * failure is the save function's to report, and is never unhandled.
   */
  request(): Promise<void> {
    if (!this.next) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      promise.catch(() => undefined);
      this.next = { promise, resolve, reject };
    }
    const { promise } = this.next;
    this.writing ??= this.drain();
    return promise;
  }

  /** Resolves once every requested change is written (or its write failed). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private async drain(): Promise<void> {
    try {
      for (let batch = this.next; batch; batch = this.next) {
        this.next = undefined;
        try {
          await this.save();
          batch.resolve();
        } catch (err) {
          batch.reject(err);
        }
      }
    } finally {
      this.writing = undefined;
    }
  }
}
