/**
 * Server-sent events for the status page, fed from the builder's event
 * bus: when a job moves or a host finishes, the affected sections are
 * rendered once (changes that come close together are coalesced) and
 * written to every open stream. A stream that cannot keep up is closed
 * (its browser reconnects and gets the current sections), so a slow reader
 * never makes the builder hold memory for it.
 */
import type { ServerResponse } from "node:http";
import type { BuilderEvent, EventBus } from "../../events.js";
import { sectionIds } from "./render.js";

/** Streams beyond this are refused (503): /metrics scrapes must always get a connection. */
export const MAX_STREAMS = 32;
/** Bytes a stream may have unsent before it is closed. */
const MAX_BACKLOG = 1024 * 1024;

export interface LiveOptions {
  events: EventBus;
  /** The section with this id, rendered now; undefined when there is none. */
  render: (id: string) => string | undefined;
  /** Ids of the sections the overview shows (sent to a stream when it opens). */
  overview: () => string[];
  maxStreams?: number;
  /** How long changes are gathered before the sections are rendered and sent. */
  coalesceMs?: number;
  /** A comment line this often keeps proxies from closing an idle stream. */
  pingMs?: number;
}

export class LiveUpdates {
  /** Each stream and the host section it follows (undefined: the overview's repo sections). */
  private readonly streams = new Map<ServerResponse, string | undefined>();
  private readonly dirty = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly ping: NodeJS.Timeout;
  private readonly unsubscribe: () => void;

  constructor(private readonly options: LiveOptions) {
    this.unsubscribe = options.events.on((event) => this.onEvent(event));
    this.ping = setInterval(() => this.broadcast(": ping\n\n"), options.pingMs ?? 25_000);
    this.ping.unref();
  }

  get size(): number {
    return this.streams.size;
  }

  /**
   * Takes the response over as an event stream; false when too many are
   * open. `hostSection`: the stream of a host's page, which follows that
   * section instead of the repos.
   */
  open(res: ServerResponse, headers: Record<string, string>, hostSection: string | undefined): boolean {
    if (this.streams.size >= (this.options.maxStreams ?? MAX_STREAMS)) return false;
    res.writeHead(200, { ...headers, "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", "x-accel-buffering": "no" });
    // A page rendered before the stream opened may have missed changes: send what is current.
    res.write("retry: 2000\n\n");
    for (const id of [sectionIds.running, ...(hostSection ? [hostSection] : this.options.overview())]) {
      const text = this.options.render(id);
      if (text !== undefined) res.write(frame(id, text));
    }
    this.streams.set(res, hostSection);
    res.on("close", () => this.streams.delete(res));
    return true;
  }

  stop(): void {
    this.unsubscribe();
    clearInterval(this.ping);
    clearTimeout(this.timer);
    for (const res of this.streams.keys()) res.end();
    this.streams.clear();
  }

  private onEvent(event: BuilderEvent): void {
    if (this.streams.size === 0) return;
    if (event.type === "queue") this.mark(sectionIds.running);
    else if (event.type === "response") {
      this.mark(sectionIds.running);
      const message = event.message;
      if (message.type === "host_finished") {
        this.mark(sectionIds.repo(event.job.spec.repo));
        this.mark(sectionIds.host(event.job.spec.repo, message.host));
      }
    }
  }

  private mark(id: string): void {
    this.dirty.add(id);
    this.timer ??= setTimeout(() => this.flush(), this.options.coalesceMs ?? 100);
  }

  private flush(): void {
    this.timer = undefined;
    const ids = [...this.dirty];
    this.dirty.clear();
    for (const id of ids) {
      const wants = (follows: string | undefined) => id === sectionIds.running || (id.startsWith("host/") ? follows === id : follows === undefined);
      if (![...this.streams.values()].some(wants)) continue;
      const text = this.options.render(id);
      if (text !== undefined) this.broadcast(frame(id, text), wants);
    }
  }

  private broadcast(data: string, wants: (follows: string | undefined) => boolean = () => true): void {
    for (const [res, follows] of this.streams) {
      if (!wants(follows)) continue;
      if (res.writableLength > MAX_BACKLOG) {
        res.destroy();
        this.streams.delete(res);
      } else res.write(data);
    }
  }
}

/** One SSE event; JSON keeps the HTML's newlines out of the framing. */
function frame(id: string, html: string): string {
  return `event: section\ndata: ${JSON.stringify({ id, html })}\n\n`;
}
