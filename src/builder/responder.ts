/**
 * The builder's side of src/nats/responder.ts (which numbers, resends and
 * fits messages to max_payload for any daemon): build jobs are its
 * conversations, BUILD_NUMBERING its numbering, and everything a requester
 * is told is also reported on the event bus, so that observers (metrics,
 * logs) see the same.
 *
 * A job the builder stopped for a restart (`job.interrupted`) is told
 * nothing more than `interrupted`: what its cancelled nix run would say is
 * not what happened to the job.
 */
import type { EventBus } from "../events.js";
import type { Job } from "../job.js";
import type { Logger } from "../logger.js";
import { BUILD_NUMBERING, type BuildResponse, type ControlResponse, type Rejected } from "../protocol.js";
import { LogThrottle } from "../util/log-throttle.js";
import { Responder } from "../nats/responder.js";
import type { NatsTransport } from "../nats/transport.js";
import { buildCutSteps } from "./fit-payload.js";

export class BuildResponder {
  private readonly responder: Responder<BuildResponse, Job>;
  /** Hostile or broken requesters can send rejects by the thousand: at most 10 lines a minute per code. */
  private readonly rejectLog: LogThrottle;

  constructor(
    transport: NatsTransport,
    private readonly events: EventBus,
    logger: Logger,
  ) {
    this.rejectLog = new LogThrottle(logger, 60_000, 10);
    this.responder = new Responder<BuildResponse, Job>({
      transport,
      logger,
      numbering: BUILD_NUMBERING,
      cutSteps: buildCutSteps,
      onSent: (job, message) => this.events.emit({ type: "response", job, message }),
    });
  }

  /** To every requester of the job. */
  toJob(job: Job, message: BuildResponse): void {
    if (job.interrupted && message.type !== "interrupted") return;
    this.responder.send(job, message);
  }

  /**
   * To one requester of the job (its `accepted`). A joiner's `accepted`
   * repeats the job's last number instead of taking the next: the others
   * never get it and must not see a gap where it was.
   */
  toRequester(reply: string, job: Job, message: BuildResponse): void {
    this.responder.sendTo(reply, job, message, { repeatLast: message.type === "accepted" && message.joined });
  }

  /** A discover/status/cancel/history answer: not about a job's build. */
  control(reply: string, message: ControlResponse): void {
    this.responder.answer(reply, message);
  }

  reject(subject: string, reply: string, message: Rejected): void {
    this.responder.answer(reply, message, { resend: true });
    this.events.emit({ type: "rejected", subject, message });
    this.rejectLog.info(`rejected:${message.code}`, { subject, code: message.code, error: message.error }, "request rejected");
  }

  /** `beat` every `intervalMs` (src/nats/responder.ts's timer), until stopHeartbeats() or stop(). */
  startHeartbeats(intervalMs: number, beat: () => void): void {
    this.responder.startHeartbeats(intervalMs, beat);
  }

  stopHeartbeats(): void {
    this.responder.stopHeartbeats();
  }

  stop(): void {
    this.responder.stop();
  }
}
