/**
 * Sends protocol messages to requesters and reports each on the event bus,
 * so that everything a requester is told is also what observers (metrics,
 * logs) see. Publishing never blocks: nats.js buffers, and while
 * disconnected it keeps what it could not send for the reconnect.
 *
 * What nats.js flushes right after a reconnect can still miss a requester
 * whose own connection comes back a moment later (after a NATS restart both
 * reconnect on their own schedules), so final messages sent around a
 * disconnect are sent again a few times after the reconnect. A requester
 * stops listening at its first final message, so repeats go nowhere.
 */
import type { EventBus } from "./events.js";
import type { Logger } from "./logger.js";
import type { BuildResponse, ControlResponse, FinalResponse, Rejected } from "./protocol.js";
import { isFinal } from "./protocol.js";
import type { Job } from "./queue.js";
import type { ConnectionState, NatsTransport } from "./transport.js";

/** After a reconnect, finals are sent again this long later (requesters back off up to 5 s). */
const RESEND_AFTER_MS = [2_000, 6_000, 12_000];
/** Finals sent this long before the disconnect was noticed may have been lost too. */
const LOST_BEFORE_DISCONNECT_MS = 10_000;
const MAX_RECENT = 256;

interface SentFinal {
  at: number;
  requesters: string[];
  message: FinalResponse;
}

export class Responder {
  private readonly recentFinals: SentFinal[] = [];
  private disconnectedAt: number | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly transport: NatsTransport,
    private readonly events: EventBus,
    private readonly logger: Logger,
  ) {
    transport.onStateChange((state) => this.onStateChange(state));
  }

  /** To every requester of the job. */
  toJob(job: Job, message: BuildResponse): void {
    for (const reply of job.requesters) this.transport.publish(reply, message);
    if (isFinal(message)) this.remember([...job.requesters], message);
    this.events.emit({ type: "response", job, message });
  }

  /** To one requester of the job (its `accepted`). */
  toRequester(reply: string, job: Job, message: BuildResponse): void {
    this.transport.publish(reply, message);
    this.events.emit({ type: "response", job, message });
  }

  /** A discover/status/cancel answer: not about a job's build. */
  control(reply: string, message: ControlResponse): void {
    this.transport.publish(reply, message);
  }

  reject(subject: string, reply: string, message: Rejected): void {
    this.transport.publish(reply, message);
    this.remember([reply], message);
    this.events.emit({ type: "rejected", subject, message });
    this.logger.info({ subject, code: message.code, error: message.error }, "request rejected");
  }

  stop(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private remember(requesters: string[], message: FinalResponse): void {
    this.recentFinals.push({ at: Date.now(), requesters, message });
    if (this.recentFinals.length > MAX_RECENT) this.recentFinals.shift();
  }

  private onStateChange(state: ConnectionState): void {
    if (state === "disconnected") {
      this.disconnectedAt ??= Date.now();
      return;
    }
    if (state !== "connected" || this.disconnectedAt === undefined) return;
    const since = this.disconnectedAt - LOST_BEFORE_DISCONNECT_MS;
    this.disconnectedAt = undefined;
    const finals = this.recentFinals.filter((sent) => sent.at >= since);
    if (finals.length === 0) return;
    this.logger.info({ finals: finals.length }, "reconnected: sending recent final messages again");
    for (const delay of RESEND_AFTER_MS) {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        for (const sent of finals) for (const reply of sent.requesters) this.transport.publish(reply, sent.message);
      }, delay);
      timer.unref();
      this.timers.add(timer);
    }
  }
}
