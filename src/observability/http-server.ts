/**
 * The builder's HTTP endpoint for Prometheus and probes: `GET /metrics`,
 * `GET /healthz` (the process answers) and `GET /readyz` (it can build now),
 * and the status page's paths when it is given one (status-page/). Only GET
 * and HEAD; no request body is read, and sockets are bounded by timeouts
 * and a connection cap so a slow or hostile client cannot pile up.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import type { ListenAddress } from "../config.js";
import { HomelabDeployError, errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { ReadinessReport } from "./readiness.js";
import type { StatusPage } from "./status-page/status-page.js";

/** The metrics port could not be opened (in use, no permission, bad address). */
export class HttpServerError extends HomelabDeployError {}

export interface HttpServerOptions {
  listen: ListenAddress;
  registry: Registry;
  readiness: () => Promise<ReadinessReport>;
  logger: Logger;
  /** The status page and its JSON and event stream; without it only the three paths above answer. */
  page?: StatusPage;
  /** How long stop() waits for responses in flight before cutting sockets. */
  closeTimeoutMs?: number;
}

const MAX_CONNECTIONS = 64;

export class HttpServer {
  private server: Server | undefined;

  constructor(private readonly options: HttpServerOptions) {}

  /** Listens; resolves with the address actually bound (port 0 picks one). */
  async start(): Promise<ListenAddress> {
    const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 }, (req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        this.options.logger.error({ err: errorMessage(err) }, "metrics HTTP request failed");
        res.destroy();
      });
    });
    server.maxConnections = MAX_CONNECTIONS;
    const { host, port } = this.options.listen;
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err) => reject(new HttpServerError(`cannot listen on ${formatHost(host)}:${port}: ${errorMessage(err)}`, { cause: err })));
      server.listen({ host, port }, resolve);
    });
    server.on("error", (err) => this.options.logger.error({ err: errorMessage(err) }, "metrics HTTP server error"));
    this.server = server;
    const bound = server.address() as AddressInfo;
    const address = { host: bound.address, port: bound.port };
    this.options.logger.info(
      {
        host: address.host,
        port: address.port,
        url: `http://${formatHost(address.host)}:${address.port}/metrics`,
        ...(this.options.page ? { statusPage: `http://${formatHost(address.host)}:${address.port}/` } : {}),
      },
      "metrics server listening",
    );
    return address;
  }

  /** Stops listening; idle keep-alive sockets (Prometheus keeps one) are closed at once. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    // Event streams never end by themselves: end them, or close() would wait for the timeout.
    this.options.page?.stop();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const timer = setTimeout(() => server.closeAllConnections(), this.options.closeTimeoutMs ?? 2_000);
    await closed;
    clearTimeout(timer);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.resume();
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(res, 405, "text/plain; charset=utf-8", "method not allowed\n", { allow: "GET, HEAD" });
      return;
    }
    // Only the path matters; split rather than new URL(), which throws on a
    // malformed request line (and an exception here must never reach Node).
    const [path = "/", query = ""] = (req.url ?? "/").split("?", 2);
    try {
      switch (path) {
        case "/metrics":
          send(res, 200, this.options.registry.contentType, await this.options.registry.metrics());
          return;
        case "/healthz":
          send(res, 200, "text/plain; charset=utf-8", "ok\n");
          return;
        case "/readyz": {
          const report = await this.options.readiness();
          send(res, report.ready ? 200 : 503, "application/json", `${JSON.stringify(report)}\n`);
          return;
        }
        default:
          if (this.options.page?.handle(req, res, path, new URLSearchParams(query))) return;
          send(res, 404, "text/plain; charset=utf-8", `not found: try ${this.options.page ? "/, " : ""}/metrics, /healthz or /readyz\n`);
      }
    } catch (err) {
      this.options.logger.error({ err: errorMessage(err), path }, "metrics HTTP request failed");
      send(res, 500, "text/plain; charset=utf-8", "internal error; see the builder's log\n");
    }
  }
}

export function send(res: ServerResponse, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  res.writeHead(status, { "content-type": contentType, "cache-control": "no-store", ...headers });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

function formatHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
