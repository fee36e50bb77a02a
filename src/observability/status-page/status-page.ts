/**
 * The builder's status page on its HTTP server (beside /metrics): `/`, a
 * host's history at `/host/<repo>/<host>`, the same data as JSON at
 * `/api/status` and `/api/history?repo=&host=`, live updates at `/events`
 * and the page's stylesheet and script. Read-only: nothing here changes the
 * builder, starts a fetch or sends to NATS.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { EventBus } from "../../events.js";
import { isValidHostName, isValidRepoName, type HistoryResponse, type Rejected } from "../../protocol.js";
import { send } from "../http-server.js";
import { STATUS_CSS, STATUS_JS } from "./assets.js";
import { LiveUpdates } from "./live.js";
import { hostRow, pageStatus, redactEntry, repoStatus, type StatusSource } from "./model.js";
import { renderHostPage, renderHostSection, renderNotFound, renderPage, renderRepo, renderRunning, sectionIds } from "./render.js";

/**
 * Scripts and styles only from this server's files: no inline script or
 * style, no eval, nothing from another origin, no forms, no framing.
 */
export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

const HTML = "text/html; charset=utf-8";
const JSON_TYPE = "application/json";
const HOST_PATH = /^\/host\/([^/]+)\/([^/]+)$/;

export interface StatusPageOptions {
  source: StatusSource;
  events: EventBus;
  /** See LiveUpdates. */
  coalesceMs?: number;
  maxStreams?: number;
}

export class StatusPage {
  private readonly live: LiveUpdates;

  constructor(private readonly options: StatusPageOptions) {
    this.live = new LiveUpdates({
      events: options.events,
      render: (id) => this.section(id),
      overview: () => options.source.repos().map((repo) => sectionIds.repo(repo.name)),
      coalesceMs: options.coalesceMs,
      maxStreams: options.maxStreams,
    });
  }

  /** Open event streams. */
  get streams(): number {
    return this.live.size;
  }

  stop(): void {
    this.live.stop();
  }

  /** Answers the page's paths; false for a path that is not the page's. */
  handle(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): boolean {
    const { source } = this.options;
    const now = Date.now();
    switch (path) {
      case "/":
        send(res, 200, HTML, renderPage(pageStatus(source, now), now), PAGE_HEADERS);
        return true;
      case "/status.css":
        send(res, 200, "text/css; charset=utf-8", STATUS_CSS, PAGE_HEADERS);
        return true;
      case "/status.js":
        send(res, 200, "text/javascript; charset=utf-8", STATUS_JS, PAGE_HEADERS);
        return true;
      case "/favicon.ico":
        send(res, 204, "image/x-icon", "", PAGE_HEADERS);
        return true;
      case "/api/status":
        sendJson(res, 200, pageStatus(source, now));
        return true;
      case "/api/history":
        this.history(res, query);
        return true;
      case "/events":
        this.events(req, res, query);
        return true;
    }
    const host = HOST_PATH.exec(path);
    if (!host) return false;
    const [, repo = "", name = ""] = host;
    const section = this.hostSection(repo, name, now);
    const status = source.status();
    if (section === undefined) {
      send(res, 404, HTML, renderNotFound(status.builder, status.version, `This builder builds no host ${name} in ${repo}.`, now), PAGE_HEADERS);
    } else send(res, 200, HTML, renderHostPage(status.builder, status.version, repo, name, section, now), PAGE_HEADERS);
    return true;
  }

  private history(res: ServerResponse, query: URLSearchParams): void {
    const repo = query.get("repo") ?? "";
    const host = query.get("host") ?? undefined;
    const reject = (status: number, answer: Rejected) => sendJson(res, status, answer);
    if (!isValidRepoName(repo) || (host !== undefined && !isValidHostName(host))) {
      reject(400, { type: "rejected", code: "invalid_name", error: "expected ?repo=<repo> and optionally &host=<host> (letters, digits, - and _)" });
      return;
    }
    const known = this.options.source.repos().map((r) => r.name);
    if (!known.includes(repo)) {
      reject(404, { type: "rejected", code: "unknown_repo", error: `unknown repo ${repo}; this builder builds ${known.join(", ")}`, known });
      return;
    }
    const { source } = this.options;
    const entries = source.history(repo, host).map(redactEntry);
    const answer: HistoryResponse = { type: "history", repo, host: host ?? null, entries };
    sendJson(res, 200, answer);
  }

  private events(req: IncomingMessage, res: ServerResponse, query: URLSearchParams): void {
    const wanted = query.get("section") ?? undefined;
    const parts = wanted?.split("/");
    const hostSection =
      parts && parts.length === 3 && parts[0] === "host" && this.hostSection(parts[1] as string, parts[2] as string, Date.now()) !== undefined ? wanted : undefined;
    if (req.method === "HEAD") {
      send(res, 200, "text/event-stream; charset=utf-8", "", PAGE_HEADERS);
      return;
    }
    if (!this.live.open(res, PAGE_HEADERS, hostSection)) {
      send(res, 503, "text/plain; charset=utf-8", "too many open event streams; reload later\n", { ...PAGE_HEADERS, "retry-after": "30" });
    }
  }

  private section(id: string): string | undefined {
    const { source } = this.options;
    const now = Date.now();
    if (id === sectionIds.running) return renderRunning(source.status(), now).text;
    const [kind, repo, host] = id.split("/") as [string, string, string | undefined];
    if (kind === "repo") {
      const info = source.repos().find((r) => r.name === repo);
      return info ? renderRepo(repoStatus(source, info, now), now).text : undefined;
    }
    if (kind === "host" && host !== undefined) return this.hostSection(repo, host, now)?.text;
    return undefined;
  }

  /** Undefined when the repo is not configured or neither its host list nor its history knows the host. */
  private hostSection(repo: string, host: string, now: number) {
    const { source } = this.options;
    if (!isValidRepoName(repo) || !isValidHostName(host)) return undefined;
    const info = source.repos().find((r) => r.name === repo);
    if (!info) return undefined;
    const listed = info.hosts.includes(host);
    if (!listed && !source.historyHosts(repo).includes(host)) return undefined;
    const entries = source.history(repo, host).map(redactEntry);
    return renderHostSection(repo, host, entries, hostRow(source, repo, host, listed, now), now);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  send(res, status, JSON_TYPE, `${JSON.stringify(body)}\n`, PAGE_HEADERS);
}
