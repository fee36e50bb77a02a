/** Raw NATS access as one of the plan's identities, for protocol-level tests. */
import { connect, nkeyAuthenticator, nuid, type NatsConnection, type Subscription } from "nats";
import type { Identity } from "./nats-server.js";

export type Message = Record<string, unknown> & { type?: string };

export function connectAs(url: string, identity: Pick<Identity, "seed">): Promise<NatsConnection> {
  return connect({
    servers: url,
    authenticator: nkeyAuthenticator(new TextEncoder().encode(identity.seed)),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 200,
  });
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A reply subject under build.responses. (or `prefix`: deploy.responses.) and everything that arrives on it. */
export class Inbox {
  readonly subject: string;
  readonly messages: Message[] = [];
  private subscription: Subscription | undefined;
  private waiters: Array<{ predicate: (m: Message) => boolean; resolve: (m: Message) => void }> = [];

  private constructor(
    private readonly nc: NatsConnection,
    prefix: string,
  ) {
    this.subject = `${prefix}test-${nuid.next()}`;
  }

  static async open(nc: NatsConnection, prefix = "build.responses."): Promise<Inbox> {
    const inbox = new Inbox(nc, prefix);
    inbox.subscription = nc.subscribe(inbox.subject, {
      callback: (_err, msg) => {
        const text = decoder.decode(msg.data);
        const message: Message = text ? (JSON.parse(text) as Message) : { type: "(empty)", status: msg.headers?.code };
        inbox.messages.push(message);
        for (const waiter of [...inbox.waiters]) {
          if (waiter.predicate(message)) {
            inbox.waiters.splice(inbox.waiters.indexOf(waiter), 1);
            waiter.resolve(message);
          }
        }
      },
    });
    await nc.flush();
    return inbox;
  }

  /** Publishes a request whose answers come here. `body` undefined = empty payload. */
  send(subject: string, body?: string | object): void {
    const payload = body === undefined ? new Uint8Array() : encoder.encode(typeof body === "string" ? body : JSON.stringify(body));
    this.nc.publish(subject, payload, { reply: this.subject });
  }

  waitFor(predicate: (m: Message) => boolean, timeoutMs = 60_000): Promise<Message> {
    const seen = this.messages.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out on ${this.subject}; received ${JSON.stringify(this.messages)}`)),
        timeoutMs,
      );
      this.waiters.push({
        predicate,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  final(timeoutMs = 60_000): Promise<Message> {
    return this.waitFor((m) => m.type === "completed" || m.type === "rejected", timeoutMs);
  }

  close(): void {
    this.subscription?.unsubscribe();
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
