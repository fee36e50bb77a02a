/**
 * The status page's routes on the real HTTP server: headers, 404s for
 * names that are not names, the event stream's first sections and live
 * updates from the event bus, and the cap on open streams.
 */
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { BuildHistory } from "../../../src/builder/keep/history.js";
import { EventBus } from "../../../src/events.js";
import { Job } from "../../../src/job.js";
import { HttpServer } from "../../../src/observability/http-server.js";
import type { StatusSource } from "../../../src/observability/status-page/model.js";
import { CONTENT_SECURITY_POLICY, StatusPage } from "../../../src/observability/status-page/status-page.js";
import type { StatusResponse } from "../../../src/protocol.js";
import { memoryLogger } from "../../support/logger.js";

const OK = { ok: true, detail: "ok" };
const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const stop of stops.splice(0)) await stop();
});

async function serve(maxStreams = 32) {
  const events = new EventBus();
  const history = new BuildHistory({ size: 10, logger: memoryLogger().logger });
  let status: StatusResponse = { type: "status", version: "9.9.9", builder: "b1", running: null, queued: [] };
  const source: StatusSource = {
    status: () => status,
    repos: () => [{ name: "servers", url: "git+file:///srv/servers", hosts: ["ns1"], revision: null, fetchedAt: null }],
    historyHosts: (repo) => history.hosts(repo),
    history: (repo, host) => history.entries(repo, host),
    expectedMs: () => null,
    rooted: () => false,
  };
  const page = new StatusPage({ source, events, maxStreams, coalesceMs: 10 });
  const server = new HttpServer({
    listen: { host: "127.0.0.1", port: 0 },
    registry: new Registry(),
    readiness: async () => ({ ready: true, degraded: false, checks: { nats: OK, nix: OK, builder: OK, state: OK } }),
    logger: memoryLogger().logger,
    page,
  });
  const address = await server.start();
  stops.push(() => server.stop());
  return { base: `http://127.0.0.1:${address.port}`, events, setStatus: (s: StatusResponse) => (status = s) };
}

/** An event stream's text so far; `until` reads on until it matches. */
function streamOf(response: Response) {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  return {
    async until(done: (text: string) => boolean): Promise<string> {
      while (!done(text)) {
        const chunk = await reader.read();
        if (chunk.done) break;
        text += decoder.decode(chunk.value, { stream: true });
      }
      return text;
    },
    close: () => reader.cancel(),
  };
}

const sections = (text: string) =>
  [...text.matchAll(/^event: section\ndata: (.*)$/gm)].map((m) => JSON.parse(m[1] as string) as { id: string; html: string });

describe("the status page's routes", () => {
  it("serves the page, its script and stylesheet with the CSP, and 404s names that are not names", async () => {
    const { base } = await serve();
    for (const path of ["/", "/status.js", "/status.css", "/host/servers/ns1", "/api/status"]) {
      const response = await fetch(`${base}${path}`);
      expect(response.status, path).toBe(200);
      expect(response.headers.get("content-security-policy"), path).toBe(CONTENT_SECURITY_POLICY);
      expect(response.headers.get("x-content-type-options"), path).toBe("nosniff");
    }
    expect((await fetch(`${base}/status.js`)).headers.get("content-type")).toMatch(/^text\/javascript/);
    for (const path of ["/host/servers/nope", "/host/other/ns1", "/host/servers/..%2Fx", "/host/servers/ns1/extra"]) {
      expect((await fetch(`${base}${path}`)).status, path).toBe(404);
    }
    expect(await (await fetch(`${base}/`)).text()).not.toContain("/srv/servers");
  });

  it("sends the current sections when a stream opens, then the sections an event changes", async () => {
    const { base, events, setStatus } = await serve();
    const response = await fetch(`${base}/events`);
    expect(response.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const job = new Job({ repo: "servers", target: "ns1", ref: null });
    const stream = streamOf(response);
    await stream.until((text) => sections(text).length === 2);
    // Then the builder starts a job.
    setStatus({
      type: "status",
      version: "9.9.9",
      builder: "b1",
      running: { jobId: job.id, repo: "servers", target: "ns1", ref: null, startedAt: new Date().toISOString(), requesters: 1, currentHost: null, hostIndex: 0, totalHosts: 0, hostStartedAt: null, progress: null, expectedMs: null },
      queued: [],
    });
    events.emit({ type: "queue", depth: 0, running: job });
    const got = sections(await stream.until((text) => sections(text).length === 3));
    await stream.close();
    expect(got.map((s) => s.id)).toEqual(["running", "repo/servers", "running"]);
    expect(got[0]?.html).toContain('data-state="idle"');
    expect(got[2]?.html).toContain("fetching the flake and listing its hosts");
  });

  it("refuses event streams beyond its cap with 503, and takes one again when one closes", async () => {
    const { base } = await serve(1);
    const first = await fetch(`${base}/events`);
    expect(first.status).toBe(200);
    const second = await fetch(`${base}/events`);
    expect(second.status).toBe(503);
    expect(second.headers.get("retry-after")).toBe("30");
    const stream = streamOf(first);
    await stream.until((text) => text.includes("repo/servers"));
    await stream.close();
    let third = await fetch(`${base}/events`);
    // The server learns of the closed stream when its socket closes.
    while (third.status === 503) {
      await third.arrayBuffer();
      await new Promise((resolve) => setTimeout(resolve, 20));
      third = await fetch(`${base}/events`);
    }
    expect(third.status).toBe(200);
    await third.body?.cancel();
  });
});
