/**
 * Sends protocol messages to requesters and reports each on the event bus,
 * so that everything a requester is told is also what observers (metrics,
 * logs) see. Publishing never blocks: nats.js buffers, and while
 * disconnected it keeps what it could not send for the reconnect.
 */
import type { EventBus } from "./events.js";
import type { Logger } from "./logger.js";
import type { BuildResponse, ControlResponse, Rejected } from "./protocol.js";
import type { Job } from "./queue.js";
import type { NatsTransport } from "./transport.js";

export class Responder {
  constructor(
    private readonly transport: NatsTransport,
    private readonly events: EventBus,
    private readonly logger: Logger,
  ) {}

  /** To every requester of the job. */
  toJob(job: Job, message: BuildResponse): void {
    for (const reply of job.requesters) this.transport.publish(reply, message);
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
    this.events.emit({ type: "rejected", subject, message });
    this.logger.info({ subject, code: message.code, error: message.error }, "request rejected");
  }
}
