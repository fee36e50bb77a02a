/**
 * The status page's data and HTML from a real BuildHistory: stale and
 * never-built hosts, hosts no longer listed, secrets in URLs redacted,
 * every value escaped, and the size of a 100-host page.
 */
import { describe, expect, it } from "vitest";
import { BuildHistory } from "../../../src/builder/keep/history.js";
import { PageStatusSchema, pageStatus, type StatusSource } from "../../../src/observability/status-page/model.js";
import { renderPage } from "../../../src/observability/status-page/render.js";
import { escapeHtml, html } from "../../../src/observability/status-page/html.js";
import type { HistoryEntry, RepoInfo, StatusResponse } from "../../../src/protocol.js";
import { memoryLogger } from "../../support/logger.js";

const NOW = Date.parse("2026-12-03T12:00:00Z");
const HOUR = 3_600_000;
const IDLE: StatusResponse = { type: "status", version: "1.2.3", builder: "builder-a", running: null, queued: [] };

function entry(host: string, hoursAgo: number, fields: Partial<HistoryEntry> = {}): HistoryEntry {
  return {
    host,
    jobId: "j0000000001",
    revision: "a".repeat(40),
    ref: null,
    status: "success",
    durationMs: 12_000,
    storePath: `/nix/store/${"x".repeat(32)}-nixos-system-${host}`,
    finishedAt: new Date(NOW - hoursAgo * HOUR).toISOString(),
    ...fields,
  };
}

function source(history: BuildHistory, repos: RepoInfo[], status = IDLE, rooted = () => true): StatusSource {
  return {
    status: () => status,
    repos: () => repos,
    historyHosts: (repo) => history.hosts(repo),
    history: (repo, host) => history.entries(repo, host),
    expectedMs: (repo, host) => history.expectedMs(repo, host),
    rooted,
  };
}

const repo = (hosts: string[], fields: Partial<RepoInfo> = {}): RepoInfo => ({
  name: "servers",
  url: "git+https://deploy:s3cret-token@git.example.org/servers.git",
  hosts,
  revision: "b".repeat(40),
  fetchedAt: new Date(NOW - HOUR).toISOString(),
  ...fields,
});

describe("the status page's model", () => {
  it("marks stale, never-built and no-longer-listed hosts, and keeps the failure's cause", () => {
    const history = new BuildHistory({ size: 10, logger: memoryLogger().logger });
    history.record("servers", entry("fresh", 1));
    history.record("servers", entry("old", 30));
    history.record("servers", entry("old", 2, { status: "failure", storePath: undefined, error: "boom", logTail: ["line 1", "line 2"] }));
    history.record("servers", entry("gone", 5));
    const page = PageStatusSchema.parse(pageStatus(source(history, [repo(["fresh", "old", "never"])]), NOW));
    const rows = Object.fromEntries(page.repos[0]!.hosts.map((h) => [h.host, h]));
    expect(page.repos[0]!.hosts.map((h) => h.host)).toEqual(["fresh", "old", "never", "gone"]);
    expect(rows["fresh"]).toMatchObject({ stale: false, listed: true, gcRoot: true, expectedMs: 12_000 });
    expect(rows["old"]).toMatchObject({ stale: true, latest: { status: "failure", logTail: ["line 1", "line 2"] } });
    expect(rows["never"]).toMatchObject({ latest: null, stale: false, gcRoot: false, expectedMs: null });
    expect(rows["gone"]?.listed).toBe(false);
    const text = renderPage(page, NOW);
    expect(text).toMatch(/<span class="status s-never">never built<\/span>/);
    expect(text).toMatch(/class="badge stale"/);
    expect(text).toContain("no longer listed");
  });

  it("shows no repo URL and redacts credentials in URLs inside errors and logs", () => {
    const history = new BuildHistory({ size: 10, logger: memoryLogger().logger });
    history.record("servers", entry("h1", 1, { status: "failure", storePath: undefined, error: "cannot fetch https://user:hunter2@git.example.org/x", logTail: ["fetching git+https://t0ken@git.example.org/y"] }));
    const page = pageStatus(source(history, [repo(["h1"], { error: "git fetch https://deploy:s3cret-token@git.example.org failed" })]), NOW);
    const both = JSON.stringify(page) + renderPage(page, NOW);
    for (const secret of ["s3cret-token", "hunter2", "t0ken"]) expect(both).not.toContain(secret);
    expect(both).toContain("https://…@git.example.org/x");
  });

  it("escapes every interpolated value, and only html`` makes markup", () => {
    expect(escapeHtml(`<a href="x" onclick='y'>&</a>`)).toBe("&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;");
    const hostile = `"><script>alert(1)</script>`;
    expect(html`<td title="${hostile}">${[hostile, html`<b>${hostile}</b>`]}</td>`.text).toBe(
      `<td title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;<b>&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</b></td>`,
    );
  });

  it("keeps a page of 100 hosts with their last results under 100 KB, a tenth of them failed with a long log", () => {
    const history = new BuildHistory({ size: 50, logger: memoryLogger().logger });
    const hosts = Array.from({ length: 100 }, (_, i) => `host${String(i).padStart(3, "0")}`);
    for (const [i, host] of hosts.entries()) {
      for (let n = 5; n > 0; n--) history.record("servers", entry(host, n + 1, { changes: { against: `/nix/store/${"y".repeat(32)}-old`, againstRevision: "c".repeat(40), packages: [{ name: "linux", before: ["6.6.1"], after: ["6.6.2"], sizeDeltaBytes: 61_000 }], sizeDeltaBytes: 1_200_000 } }));
      if (i % 10 === 0) history.record("servers", entry(host, 1, { status: "failure", storePath: undefined, error: `builder for '/nix/store/${"z".repeat(32)}-unit.drv' failed with exit code 1`, logTail: Array.from({ length: 200 }, (_, n) => `unit> a fairly long line of build output number ${n} that goes on`) }));
    }
    const text = renderPage(pageStatus(source(history, [repo(hosts)]), NOW), NOW);
    expect(text.match(/<tr data-host=/g)).toHaveLength(100);
    expect(Buffer.byteLength(text)).toBeLessThan(100 * 1024);
  });
});

describe("the running job on the page", () => {
  it("says which host of how many, derivations built of expected, the phase, elapsed and time left, the evaluation and the queue", () => {
    const started = new Date(NOW - 20_000).toISOString();
    const status: StatusResponse = {
      ...IDLE,
      running: {
        jobId: "j00000000aa",
        repo: "servers",
        target: "all",
        ref: "flake-update",
        startedAt: started,
        requesters: 1,
        currentHost: "ns2",
        hostIndex: 2,
        totalHosts: 5,
        hostStartedAt: new Date(NOW - 10_000).toISOString(),
        progress: {
          derivations: { done: 3, expected: 12, running: 1, failed: 0 },
          substitutions: { done: 0, expected: 0, running: 0, failed: 0 },
          downloadedBytes: 0,
          expectedDownloadBytes: 0,
          building: { drv: "unbound.conf", phase: "buildPhase" },
        },
        evaluation: { evaluated: 4, total: 5, failed: 1 },
        expectedMs: 30_000,
      },
      queued: [{ jobId: "j00000000bb", repo: "servers", target: "ns1", ref: null, position: 1, requesters: 2, enqueuedAt: started }],
    };
    const history = new BuildHistory({ size: 10, logger: memoryLogger().logger });
    const text = renderPage(pageStatus(source(history, [repo(["ns1"])], status), NOW), NOW)
      .replace(/<[^>]+>/g, " ")
      .replace(/\s+/g, " ");
    expect(text).toContain("Building servers all at ref flake-update");
    expect(text).toContain("host 2 of 5: ns2");
    expect(text).toContain("3 of 12 built");
    expect(text).toContain("unbound.conf (buildPhase)");
    expect(text).toContain("10.0s (~20.0s left)");
    expect(text).toContain("4/5 hosts evaluated, 1 failed");
    expect(text).toContain("Queue: 1 job");
    expect(text).toContain("servers ns1 · job j00000000bb");
  });
});
