/**
 * The MCP server's NATS connection, made by the first tool call that needs
 * it rather than at start-up: an assistant starts its MCP servers with the
 * editor, and a NATS outage then must cost one tool call an error with a
 * plain explanation, not take every tool away for the session.
 *
 * Once connected, nats.js reconnects by itself (forever, with backoff); a
 * call made meanwhile is told so instead of waiting. A connection lost for
 * good is dropped, and the next call connects afresh.
 */
import type { NatsConnection } from "nats";
import { ConnectionError, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { NatsTransport } from "../nats/transport.js";
import type { ConnectOptions } from "../client/connection.js";

export type Connect = (options?: ConnectOptions) => Promise<NatsTransport>;

/** How long closing may take: the server exits right after. */
const CLOSE_TIMEOUT_MS = 2_000;

export class NatsLink {
  private transport: NatsTransport | undefined;
  private connecting: Promise<NatsTransport> | undefined;
  private closed = false;

  constructor(
    private readonly connect: Connect,
    /** The configured server URL(s), for error messages. */
    private readonly servers: string,
    private readonly logger: Logger,
  ) {}

  /**
   * A connected NatsConnection, or a ConnectionError/CredentialsError/UsageError
   * that says why not. `options` (a build waiting for a builder) let a
   * first connection be tried again within a window; calls made meanwhile
   * share that attempt.
   */
  async connection(options?: ConnectOptions): Promise<NatsConnection> {
    if (this.closed) throw new ConnectionError("the MCP server is shutting down", "closed");
    const transport = this.transport ?? (await this.connectOnce(options));
    if (transport.state === "connected") return transport.connection;
    throw new ConnectionError(
      `lost the connection to NATS at ${this.servers}; reconnecting in the background, try again in a moment`,
      "unreachable",
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    const transport = this.transport ?? (await this.connecting?.catch(() => undefined));
    this.transport = undefined;
    await transport?.stop(CLOSE_TIMEOUT_MS);
  }

  /** Concurrent calls share one attempt; a failed attempt is not cached. */
  private connectOnce(options?: ConnectOptions): Promise<NatsTransport> {
    this.connecting ??= this.open(options).finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(options?: ConnectOptions): Promise<NatsTransport> {
    const transport = await this.connect(options);
    if (this.closed) {
      await transport.stop(CLOSE_TIMEOUT_MS);
      throw new ConnectionError("the MCP server is shutting down", "closed");
    }
    transport.onFatal((err) => {
      this.logger.warn({ err: errorMessage(err) }, "NATS connection lost for good; the next tool call connects again");
      if (this.transport === transport) this.transport = undefined;
    });
    this.transport = transport;
    return transport;
  }
}
