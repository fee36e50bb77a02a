/**
 * The NATS connection: NKey authentication, waiting for the server at
 * start-up, reconnecting forever with capped exponential backoff, logging
 * every state change, and JSON publish/subscribe for the rest of the code.
 *
 * nats.js's own `waitOnFirstConnect` retries even when the server refuses
 * the key, silently and forever; so the first connection is retried here,
 * where an authorization failure can be told apart from an absent server.
 */
import {
  connect,
  nkeyAuthenticator,
  NatsError,
  type Msg,
  type NatsConnection,
  type Subscription,
} from "nats";
import type { Logger } from "../logger.js";
import { ConnectionError, errorMessage } from "../errors.js";
import { publicKeyOf, type SeedSource } from "./credentials.js";
import { Backoff, delay } from "../util/backoff.js";

export interface TransportOptions {
  servers: string[];
  name: string;
  seed: SeedSource;
  logger: Logger;
  /** Daemon: wait for the server to appear. Client: fail at once. */
  waitForServer: boolean;
  /** Backoff bounds for start-up waits and reconnects. */
  backoff?: { initialMs: number; maxMs: number };
  /**
   * The server does not deliver this connection's own messages back to it.
   * A daemon subscribed to a wildcard that covers where it publishes (the
   * builder: `build.>`, its answers under `build.responses.>`) would
   * otherwise receive every message it sends.
   */
  noEcho?: boolean;
}

export type MessageHandler = (msg: Msg) => void;

interface Registration {
  subject: string;
  queue: string | undefined;
  handler: MessageHandler;
  subscription?: Subscription;
}

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

const DEFAULT_BACKOFF = { initialMs: 250, maxMs: 5_000 };

export function isAuthError(err: unknown): boolean {
  return err instanceof NatsError && (err.isAuthError() || err.code === "AUTHORIZATION_VIOLATION");
}

const encoder = new TextEncoder();

export class NatsTransport {
  private nc: NatsConnection | undefined;
  private seed: Uint8Array | undefined;
  private readonly registrations: Registration[] = [];
  private stopping = false;
  private readonly backoff: Backoff;
  private readonly reconnectBackoff: Backoff;
  private reconnectDelayMs: number;
  private stateListeners: Array<(state: ConnectionState) => void> = [];
  private fatalListeners: Array<(err: Error) => void> = [];
  private currentState: ConnectionState = "connecting";

  constructor(private readonly options: TransportOptions) {
    this.backoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF);
    this.reconnectBackoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF);
    this.reconnectDelayMs = this.reconnectBackoff.next();
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  get connection(): NatsConnection {
    if (!this.nc) throw new ConnectionError("not connected to NATS", "closed");
    return this.nc;
  }

  /** Returns the way to stop listening. */
  onStateChange(listener: (state: ConnectionState) => void): () => void {
    this.stateListeners.push(listener);
    return () => {
      this.stateListeners = this.stateListeners.filter((l) => l !== listener);
    };
  }

  /** Called when the connection is lost for good (e.g. the server keeps refusing our key). */
  onFatal(listener: (err: Error) => void): void {
    this.fatalListeners.push(listener);
  }

  async start(): Promise<void> {
    this.seed = await this.options.seed.load();
    this.nc = await this.connectWithRetry();
    this.watch(this.nc);
  }

  subscribe(subject: string, handler: MessageHandler, queue?: string): void {
    const registration: Registration = { subject, queue, handler };
    this.registrations.push(registration);
    if (this.nc) this.attach(this.nc, registration);
  }

  /** Publishes a JSON message. While disconnected nats.js buffers it and sends it on reconnect. */
  publish(subject: string, message: unknown): boolean {
    if (!this.nc || this.nc.isClosed()) {
      this.options.logger.warn({ subject }, "cannot publish: NATS connection is closed");
      return false;
    }
    try {
      this.nc.publish(subject, encoder.encode(JSON.stringify(message)));
      return true;
    } catch (err) {
      this.options.logger.warn({ subject, err: errorMessage(err) }, "publish failed");
      return false;
    }
  }

  /** The connected server's max_payload (bytes), undefined while not connected. */
  maxPayload(): number | undefined {
    const info = this.nc && !this.nc.isClosed() ? this.nc.info : undefined;
    return info?.max_payload;
  }

  async flush(): Promise<void> {
    if (this.nc && !this.nc.isClosed()) await this.nc.flush();
  }

  /**
   * A flush that only counts over a live connection (a closed one "flushes"
   * at once): while (re)connecting it waits for the connection to be back,
   * told by the state change rather than found by polling. Rejects when the
   * transport gives up or stops.
   */
  async flushConnected(): Promise<void> {
    if (this.currentState !== "connected") await this.connected();
    await this.flush();
  }

  private connected(): Promise<void> {
    if (this.currentState === "closed") return Promise.reject(new ConnectionError("the NATS connection is closed", "closed"));
    return new Promise((resolve, reject) => {
      const off = this.onStateChange((state) => {
        if (state === "connected") resolve();
        else if (state === "closed") reject(new ConnectionError("the NATS connection is closed", "closed"));
        else return;
        off();
      });
    });
  }

  /** Stops new deliveries, sends what is buffered, closes. Bounded by `timeoutMs`. */
  async stop(timeoutMs = 3_000): Promise<void> {
    this.stopping = true;
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    const drained = nc.drain().catch((err: unknown) => {
      this.options.logger.warn({ err: errorMessage(err) }, "NATS drain failed");
    });
    const timer = delay(timeoutMs).then(() => "timeout" as const);
    if ((await Promise.race([drained, timer])) === "timeout") {
      this.options.logger.warn({ timeoutMs }, "NATS drain timed out; closing");
      await nc.close().catch(() => undefined);
    }
    this.setState("closed");
  }

  private setState(state: ConnectionState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    for (const listener of this.stateListeners) listener(state);
  }

  private attach(nc: NatsConnection, registration: Registration): void {
    const subscription = nc.subscribe(registration.subject, {
      queue: registration.queue,
      callback: (err, msg) => {
        if (err) {
          this.options.logger.error({ subject: registration.subject, err: errorMessage(err) }, "subscription error");
          return;
        }
        registration.handler(msg);
      },
    });
    registration.subscription = subscription;
  }

  private connectOptions() {
    const { servers, name } = this.options;
    return {
      servers,
      name,
      authenticator: nkeyAuthenticator(() => {
        if (!this.seed) throw new ConnectionError("no NKey seed loaded", "refused");
        return this.seed;
      }),
      noEcho: this.options.noEcho ?? false,
      reconnect: true,
      maxReconnectAttempts: -1,
      // nats.js asks for the delay on every turn of its reconnect loop, also
      // while it only sleeps; growing it there would stretch the first retry
      // to seconds. It grows per dial attempt instead (see logStatus).
      reconnectDelayHandler: () => this.reconnectDelayMs,
      pingInterval: 20_000,
      maxPingOut: 3,
      timeout: 10_000,
    };
  }

  /**
   * A refused key is reloaded once (it may have been rotated) unless the
   * caller has just reloaded it: one fresh look at the source, then give up.
   */
  private async connectWithRetry(mayReload = true): Promise<NatsConnection> {
    const { logger, servers, waitForServer } = this.options;
    let reloadLeft = mayReload;
    for (;;) {
      this.setState("connecting");
      try {
        const nc = await connect(this.connectOptions());
        if (this.stopping) {
          // stop() ran while this connection was being made: it must not live on.
          await nc.close().catch(() => undefined);
          throw new ConnectionError("the NATS connection is being stopped", "closed");
        }
        this.backoff.reset();
        logger.info({ server: nc.getServer(), user: publicKeyOf(this.requireSeed()) }, "connected to NATS");
        this.setState("connected");
        return nc;
      } catch (err) {
        if (isAuthError(err)) {
          if (reloadLeft) {
            reloadLeft = false;
            if (await this.reloadSeed()) continue;
          }
          throw new ConnectionError(
            `NATS at ${servers.join(", ")} refused NKey user ${publicKeyOf(this.requireSeed())} (${errorMessage(err)}): check that the server config lists this public key with the right permissions`,
            "refused",
            { cause: err },
          );
        }
        if (!waitForServer || this.stopping) {
          throw new ConnectionError(`cannot reach NATS at ${servers.join(", ")}: ${errorMessage(err)}`, "unreachable", {
            cause: err,
          });
        }
        const wait = this.backoff.next();
        logger.warn({ servers, err: errorMessage(err), retryInMs: wait }, "NATS not reachable yet; waiting for it");
        await delay(wait);
      }
    }
  }

  /** Asks the seed source again (a rotated key); true if it gave a different seed. */
  private async reloadSeed(): Promise<boolean> {
    const before = this.seed;
    try {
      this.seed = await this.options.seed.load();
    } catch (err) {
      this.options.logger.error({ err: errorMessage(err) }, "reloading the NKey seed failed");
      return false;
    }
    const changed = !before || !sameBytes(before, this.seed);
    const { logger, seed } = this.options;
    if (changed) logger.warn({ source: seed.description, user: publicKeyOf(this.seed) }, "NATS refused the key; retrying with a reloaded seed");
    else logger.warn({ source: seed.description }, "NATS refused the key and its source still has the same one");
    return changed;
  }

  private requireSeed(): Uint8Array {
    if (!this.seed) throw new ConnectionError("no NKey seed loaded", "refused");
    return this.seed;
  }

  private watch(nc: NatsConnection): void {
    for (const registration of this.registrations) this.attach(nc, registration);
    void this.logStatus(nc);
    void nc.closed().then((err) => this.onClosed(nc, err));
  }

  private async logStatus(nc: NatsConnection): Promise<void> {
    const { logger } = this.options;
    for await (const status of nc.status()) {
      switch (status.type) {
        case "disconnect":
          logger.warn({ server: status.data }, "disconnected from NATS");
          this.setState("disconnected");
          break;
        case "reconnect":
          this.reconnectBackoff.reset();
          this.reconnectDelayMs = this.reconnectBackoff.next();
          logger.info({ server: status.data }, "reconnected to NATS");
          this.setState("connected");
          break;
        case "reconnecting":
          this.reconnectDelayMs = this.reconnectBackoff.next();
          logger.debug({ server: status.data, nextWaitMs: this.reconnectDelayMs }, "reconnecting to NATS");
          break;
        case "error":
          logger.warn({ err: errorMessage(status.data) }, "NATS reported an error");
          break;
        case "ldm":
          logger.warn({ server: status.data }, "NATS server entering lame duck mode");
          break;
        case "staleConnection":
          logger.warn("NATS connection is stale");
          break;
        default:
          logger.debug({ type: status.type, data: status.data }, "NATS status");
      }
    }
  }

  private async onClosed(nc: NatsConnection, err: void | Error): Promise<void> {
    if (this.stopping || nc !== this.nc) return;
    this.setState("disconnected");
    this.options.logger.error({ err: err ? errorMessage(err) : undefined }, "NATS connection closed; starting over");
    try {
      const refused = err !== undefined && isAuthError(err);
      if (refused) await this.reloadSeed();
      this.nc = await this.connectWithRetry(!refused);
      this.watch(this.nc);
    } catch (fatal) {
      this.setState("closed");
      if (this.stopping) return;
      const error = fatal instanceof Error ? fatal : new Error(String(fatal));
      for (const listener of this.fatalListeners) listener(error);
    }
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}
