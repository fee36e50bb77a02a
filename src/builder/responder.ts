/**
 * Sends protocol messages to requesters and reports each on the event bus,
 * so that everything a requester is told is also what observers (metrics,
 * logs) see. Publishing never blocks: nats.js buffers, and while
 * disconnected it keeps what it could not send for the reconnect.
 *
 * What nats.js flushes right after a reconnect can still miss a requester
 * whose own connection comes back later (after a NATS restart both
 * reconnect on their own schedules), so final messages sent around a
 * disconnect — shortly before it, during it, or in the first half minute
 * after the reconnect — are sent again a few times over the next half
 * minute. A requester stops listening at its first final message, so
 * repeats go nowhere.
 */
import type { EventBus } from "../events.js";
import type { Logger } from "../logger.js";
import type { BuildResponse, ControlResponse, FinalResponse, Rejected } from "../protocol.js";
import { isFinal } from "../protocol.js";
import type { Job } from "./queue.js";
import { LogThrottle } from "../util/log-throttle.js";
import { fitPayload, payloadBytes } from "./fit-payload.js";
import type { ConnectionState, NatsTransport } from "../nats/transport.js";

/** Finals are sent again this long later (requesters back off up to 5 s, longer under load). */
const RESEND_AFTER_MS = [2_000, 5_000, 10_000, 20_000, 30_000];
/** Finals sent this long before the disconnect was noticed may have been lost too. */
const LOST_BEFORE_DISCONNECT_MS = 10_000;
/** Finals sent this long after a reconnect may reach requesters not back yet. */
const UNSETTLED_AFTER_RECONNECT_MS = 30_000;
const MAX_RECENT = 256;

interface SentFinal {
  at: number;
  requesters: string[];
  message: FinalResponse;
}

export class Responder {
  private readonly recentFinals: SentFinal[] = [];
  private disconnectedAt: number | undefined;
  private unsettledUntil = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Hostile or broken requesters can send rejects by the thousand: at most 10 lines a minute per code. */
  private readonly rejectLog: LogThrottle;

  constructor(
    private readonly transport: NatsTransport,
    private readonly events: EventBus,
    private readonly logger: Logger,
  ) {
    this.rejectLog = new LogThrottle(logger, 60_000, 10);
    transport.onStateChange((state) => this.onStateChange(state));
  }

  /** To every requester of the job. */
  toJob(job: Job, message: BuildResponse): void {
    const sent = this.fit(message);
    for (const reply of job.requesters) this.transport.publish(reply, sent);
    if (isFinal(sent)) this.remember([...job.requesters], sent);
    this.events.emit({ type: "response", job, message });
  }

  /** To one requester of the job (its `accepted`). */
  toRequester(reply: string, job: Job, message: BuildResponse): void {
    this.transport.publish(reply, this.fit(message));
    this.events.emit({ type: "response", job, message });
  }

  /** A discover/status/cancel answer: not about a job's build. */
  control(reply: string, message: ControlResponse): void {
    this.transport.publish(reply, this.fit(message));
  }

  reject(subject: string, reply: string, message: Rejected): void {
    this.transport.publish(reply, this.fit(message));
    this.remember([reply], message);
    this.events.emit({ type: "rejected", subject, message });
    this.rejectLog.info(`rejected:${message.code}`, { subject, code: message.code, error: message.error }, "request rejected");
  }

  /** The message cut to the connected server's max_payload (events keep the full one). */
  private fit<M extends BuildResponse | ControlResponse>(message: M): M {
    const max = this.transport.maxPayload();
    const fitted = fitPayload(message, max);
    if (fitted !== message) {
      this.logger.info({ type: message.type, bytes: payloadBytes(message), maxPayload: max }, "message cut to fit the NATS server's max_payload");
    }
    return fitted;
  }

  stop(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private remember(requesters: string[], message: FinalResponse): void {
    const sent = { at: Date.now(), requesters, message };
    this.recentFinals.push(sent);
    if (this.recentFinals.length > MAX_RECENT) this.recentFinals.shift();
    if (this.disconnectedAt === undefined && sent.at < this.unsettledUntil) this.resendLater(sent);
  }

  private resendLater(sent: SentFinal): void {
    for (const delay of RESEND_AFTER_MS) {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        for (const reply of sent.requesters) this.transport.publish(reply, sent.message);
      }, delay);
      timer.unref();
      this.timers.add(timer);
    }
  }

  private onStateChange(state: ConnectionState): void {
    if (state === "disconnected") {
      this.disconnectedAt ??= Date.now();
      return;
    }
    if (state !== "connected" || this.disconnectedAt === undefined) return;
    const since = this.disconnectedAt - LOST_BEFORE_DISCONNECT_MS;
    this.disconnectedAt = undefined;
    this.unsettledUntil = Date.now() + UNSETTLED_AFTER_RECONNECT_MS;
    const finals = this.recentFinals.filter((sent) => sent.at >= since);
    if (finals.length > 0) this.logger.info({ finals: finals.length }, "reconnected: sending recent final messages again");
    for (const sent of finals) this.resendLater(sent);
  }
}
