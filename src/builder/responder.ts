/**
 * Sends protocol messages to requesters and reports each on the event bus,
 * so that everything a requester is told is also what observers (metrics,
 * logs) see. Publishing never blocks: nats.js buffers, and while
 * disconnected it keeps what it could not send for the reconnect.
 *
 * Every message of a job carries the job's `seq`: messages that matter for
 * its outcome (all but progress and heartbeat, which are snapshots and
 * repeat the last number) each take the next one.
 *
 * What nats.js flushes right after a reconnect can still miss a requester
 * whose own connection comes back later (after a NATS restart both
 * reconnect on their own schedules), so the numbered messages sent around a
 * disconnect — shortly before it, during it, or in the first half minute
 * after the reconnect — are sent again a few times over the next half
 * minute. Requesters drop the repeats by `seq`; a requester that stopped
 * listening at its final message gets them nowhere.
 *
 * A job the builder stopped for a restart (`job.interrupted`) is told
 * nothing more than `interrupted`: what its cancelled nix run would say is
 * not what happened to the job.
 */
import type { EventBus } from "../events.js";
import type { Logger } from "../logger.js";
import type { BuildResponse, ControlResponse, Rejected } from "../protocol.js";
import type { Job } from "./queue.js";
import { LogThrottle } from "../util/log-throttle.js";
import { RingBuffer } from "../util/ring-buffer.js";
import { fitPayload, payloadBytes } from "./fit-payload.js";
import type { ConnectionState, NatsTransport } from "../nats/transport.js";

/** Numbered messages are sent again this long later (requesters back off up to 5 s, longer under load). */
const RESEND_AFTER_MS = [2_000, 5_000, 10_000, 20_000, 30_000];
/** Messages sent this long before the disconnect was noticed may have been lost too. */
const LOST_BEFORE_DISCONNECT_MS = 10_000;
/** Messages sent this long after a reconnect may reach requesters not back yet. */
const UNSETTLED_AFTER_RECONNECT_MS = 30_000;
/** The numbered messages kept for resending, over all jobs (a 100-host job sends about 300). */
const MAX_RECENT = 2_048;

/** Snapshots: they repeat the job's last seq, and a newer one replaces a lost one. */
const UNNUMBERED: ReadonlySet<BuildResponse["type"]> = new Set(["progress", "heartbeat", "evaluating"]);

interface Sent {
  at: number;
  requesters: string[];
  message: BuildResponse;
}

export class Responder {
  private readonly recent = new RingBuffer<Sent>(MAX_RECENT);
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
    if (job.interrupted && message.type !== "interrupted") return;
    const numbered = this.number(job, message);
    const sent = this.fit(numbered);
    for (const reply of job.requesters) this.transport.publish(reply, sent);
    if (!UNNUMBERED.has(message.type)) this.remember([...job.requesters], sent);
    this.events.emit({ type: "response", job, message: numbered });
  }

  /**
   * To one requester of the job (its `accepted`). A joiner's `accepted`
   * repeats the job's last number instead of taking the next: the others
   * never get it and must not see a gap where it was.
   */
  toRequester(reply: string, job: Job, message: BuildResponse): void {
    const joined = message.type === "accepted" && message.joined && job.seq > 0;
    const numbered = joined ? { ...message, seq: job.seq } : this.number(job, message);
    const sent = this.fit(numbered);
    this.transport.publish(reply, sent);
    this.remember([reply], sent);
    this.events.emit({ type: "response", job, message: numbered });
  }

  private number(job: Job, message: BuildResponse): BuildResponse {
    if (message.type === "rejected") return message;
    if (!UNNUMBERED.has(message.type)) job.seq++;
    return job.seq > 0 ? { ...message, seq: job.seq } : message;
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

  private remember(requesters: string[], message: BuildResponse): void {
    const sent = { at: Date.now(), requesters, message };
    this.recent.push(sent);
    if (this.disconnectedAt === undefined && sent.at < this.unsettledUntil) this.resendLater(sent);
  }

  private resendLater(sent: Sent): void {
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
    const lost = this.recent.toArray().filter((sent) => sent.at >= since);
    if (lost.length > 0) this.logger.info({ messages: lost.length }, "reconnected: sending recent messages again");
    for (const sent of lost) this.resendLater(sent);
  }
}
