/**
 * Answers requesters over NATS the way every daemon of this project does,
 * whatever its messages: a request starts a *conversation* (a build job, a
 * deploy) with one or more requesters, each waiting on its own reply
 * subject, and every message of a conversation carries its `seq`.
 *
 * - Numbering follows a protocol's `Numbering` (src/protocol.ts, shared
 *   with the requesters' src/client/sequence.ts): numbered messages take
 *   the next number, snapshots repeat the last one, unnumbered ones carry
 *   none.
 * - Publishing never blocks: nats.js buffers, and while disconnected it
 *   keeps what it could not send for the reconnect. But what it flushes
 *   right after a reconnect can still miss a requester whose own connection
 *   comes back later (after a NATS restart both reconnect on their own
 *   schedules), so the numbered messages sent around a disconnect — shortly
 *   before it, during it, or in the first half minute after the reconnect —
 *   are sent again a few times over the next half minute. Requesters drop
 *   the repeats by `seq`; a requester that stopped listening at its final
 *   message gets them nowhere. Snapshots are never resent: a newer one
 *   replaces a lost one.
 * - Every message is fitted to the connected server's max_payload with the
 *   protocol's `CutSteps` (src/nats/fit-payload.ts); observers (`onSent`)
 *   get the full message.
 * - Heartbeats: a daemon names what to send every interval
 *   (`startHeartbeats`), so a requester's idle timeout tells a silent daemon
 *   from a long quiet step (a big build, a slow switch). They are snapshots
 *   in every protocol, so the timer is all that is shared.
 */
import type { Logger } from "../logger.js";
import type { Numbering } from "../protocol.js";
import { RingBuffer } from "../util/ring-buffer.js";
import { fitPayload, payloadBytes, type CutSteps } from "./fit-payload.js";
import type { ConnectionState, NatsTransport } from "./transport.js";

/** Numbered messages are sent again this long later (requesters back off up to 5 s, longer under load). */
const RESEND_AFTER_MS = [2_000, 5_000, 10_000, 20_000, 30_000];
/** Messages sent this long before the disconnect was noticed may have been lost too. */
const LOST_BEFORE_DISCONNECT_MS = 10_000;
/** Messages sent this long after a reconnect may reach requesters not back yet. */
const UNSETTLED_AFTER_RECONNECT_MS = 30_000;
/** The numbered messages kept for resending, over all conversations (a 100-host build job sends about 300). */
const MAX_RECENT = 2_048;

/** What the responder needs of a message: its type, and room for its number. */
export interface ResponderMessage {
  type: string;
  seq?: number | undefined;
}

/**
 * A job, a deploy: whatever a request started. Its owner keeps it (and may
 * persist `seq`, so that a restarted daemon numbers on); the responder
 * advances `seq` and reads `requesters` at each send.
 */
export interface Conversation {
  /** The last number sent (0: none yet). */
  seq: number;
  /** The reply subjects of everyone waiting on it. */
  readonly requesters: Iterable<string>;
}

export interface ResponderOptions<M extends ResponderMessage, C extends Conversation> {
  transport: NatsTransport;
  logger: Logger;
  numbering: Numbering;
  /** How the protocol's messages are cut to fit max_payload; without it a message goes out as it is. */
  cutSteps?: CutSteps<M>;
  /** Every message sent to a conversation, numbered and uncut (for an event stream, metrics). */
  onSent?: (conversation: C, message: M) => void;
}

interface Sent {
  at: number;
  requesters: string[];
  message: unknown;
}

export class Responder<M extends ResponderMessage, C extends Conversation = Conversation> {
  private readonly recent = new RingBuffer<Sent>(MAX_RECENT);
  private disconnectedAt: number | undefined;
  private unsettledUntil = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  private heartbeat: NodeJS.Timeout | undefined;

  constructor(private readonly options: ResponderOptions<M, C>) {
    options.transport.onStateChange((state) => this.onStateChange(state));
  }

  /** To every requester of the conversation. Returns the message as numbered. */
  send(conversation: C, message: M): M {
    const numbered = this.number(conversation, message);
    const requesters = [...conversation.requesters];
    this.publish(requesters, numbered, !this.options.numbering.snapshots.has(message.type));
    this.options.onSent?.(conversation, numbered);
    return numbered;
  }

  /**
   * To one requester of the conversation (e.g. its acknowledgement).
   * `repeatLast`: the message repeats the conversation's last number instead
   * of taking the next, for one only this requester gets (a joiner's
   * `accepted`: the others must not see a gap where it was).
   */
  sendTo(reply: string, conversation: C, message: M, { repeatLast = false } = {}): M {
    const numbered = repeatLast && conversation.seq > 0 ? { ...message, seq: conversation.seq } : this.number(conversation, message);
    this.publish([reply], numbered, true);
    this.options.onSent?.(conversation, numbered);
    return numbered;
  }

  /**
   * An answer outside any conversation: no number. `resend`: it matters
   * like a numbered message (a `rejected` is a requester's final word) and is
   * resent around a disconnect; a control answer a requester can simply ask
   * again for is not.
   */
  answer<A extends ResponderMessage>(reply: string, message: A, { resend = false } = {}): void {
    this.publish([reply], message, resend);
  }

  /** Calls `beat` every `intervalMs` (it sends the conversations' heartbeats) until stopHeartbeats() or stop(). */
  startHeartbeats(intervalMs: number, beat: () => void): void {
    this.stopHeartbeats();
    this.heartbeat = setInterval(beat, intervalMs);
    // A heartbeat alone never keeps a stopping daemon alive.
    this.heartbeat.unref();
  }

  stopHeartbeats(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  stop(): void {
    this.stopHeartbeats();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private number(conversation: C, message: M): M {
    const { snapshots, unnumbered } = this.options.numbering;
    if (unnumbered.has(message.type)) return message;
    if (!snapshots.has(message.type)) conversation.seq++;
    return conversation.seq > 0 ? { ...message, seq: conversation.seq } : message;
  }

  private publish(requesters: string[], message: ResponderMessage, resend: boolean): void {
    const sent = this.fit(message);
    for (const reply of requesters) this.options.transport.publish(reply, sent);
    if (resend) this.remember(requesters, sent);
  }

  /** The message cut to the connected server's max_payload. */
  private fit<T extends ResponderMessage>(message: T): T {
    const { cutSteps, transport, logger } = this.options;
    if (!cutSteps) return message;
    const max = transport.maxPayload();
    const fitted = fitPayload(message, max, cutSteps as unknown as CutSteps<T>);
    if (fitted !== message) {
      logger.info({ type: message.type, bytes: payloadBytes(message), maxPayload: max }, "message cut to fit the NATS server's max_payload");
    }
    return fitted;
  }

  private remember(requesters: string[], message: unknown): void {
    const sent = { at: Date.now(), requesters, message };
    this.recent.push(sent);
    if (this.disconnectedAt === undefined && sent.at < this.unsettledUntil) this.resendLater(sent);
  }

  private resendLater(sent: Sent): void {
    for (const delay of RESEND_AFTER_MS) {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        for (const reply of sent.requesters) this.options.transport.publish(reply, sent.message);
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
    if (lost.length > 0) this.options.logger.info({ messages: lost.length }, "reconnected: sending recent messages again");
    for (const sent of lost) this.resendLater(sent);
  }
}
