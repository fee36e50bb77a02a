/**
 * The status page's HTML, rendered on the server from the page model: a
 * complete page without JavaScript. Every value goes through `html`, which
 * escapes it; the sections carry ids so that live updates (live.ts) can
 * replace one section at a time with the same rendering.
 */
import { changesCell, changesText, evaluationText, firstLine, packageText, plural, progressText, shortRev, timeLeftText } from "../../describe.js";
import type { HistoryEntry, HostStatus, RunningJob, StatusResponse } from "../../protocol.js";
import { formatDuration } from "../../util/duration.js";
import { Html, html } from "./html.js";
import type { HostRow, PageStatus, RepoStatus } from "./model.js";

/** Log lines a failed host shows on the overview (its own page shows the whole tail): 100 failing hosts stay light. */
export const OVERVIEW_LOG_LINES = 25;

const STATUS_WORDS: Record<HostStatus, string> = {
  success: "built",
  failure: "failed",
  timeout: "timed out",
  cancelled: "cancelled",
  eval_error: "evaluation error",
};

export const sectionIds = {
  running: "running",
  repo: (repo: string) => `repo/${repo}`,
  host: (repo: string, host: string) => `host/${repo}/${host}`,
};

function ago(iso: string, now: number): Html {
  return html`<time datetime="${iso}" title="${iso}">${formatDuration(Math.max(0, now - Date.parse(iso)))} ago</time>`;
}

function pageDocument(title: string, builder: string, version: string, now: number, body: Html): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${title}</title>
<link rel="stylesheet" href="/status.css">
<script src="/status.js" defer></script>
</head>
<body>
<header>
<h1>${title}</h1>
<p class="meta">builder <strong id="builder">${builder}</strong> · homelab-deploy ${version} · rendered ${ago(new Date(now).toISOString(), now)} · <span id="live" data-state="static">not live (reload for news)</span></p>
</header>
<main>
${body}
</main>
</body>
</html>
`;
}

export function renderPage(page: PageStatus, now: number): string {
  const body = html`${renderRunning(page.status, now)}
${page.repos.map((repo) => html`${renderRepo(repo, now)}\n`)}`;
  return pageDocument(`${page.builder}: builds`, page.builder, page.version, now, body).text;
}

function runningJob(job: RunningJob, now: number): Html {
  const ref = job.ref ? html` at ref <code>${job.ref}</code>` : "";
  const lines: Html[] = [
    html`<p><strong>Building ${job.repo} ${job.target}</strong>${ref} · job <code>${job.jobId}</code> · started ${ago(job.startedAt, now)}</p>`,
  ];
  const facts: Html[] = [];
  if (job.evaluation) facts.push(html`<dt>Evaluation</dt><dd class="evaluation">${evaluationText(job.evaluation)}</dd>`);
  if (job.currentHost) {
    facts.push(html`<dt>Host</dt><dd class="host-index">host ${job.hostIndex} of ${job.totalHosts}: <a href="/host/${job.repo}/${job.currentHost}">${job.currentHost}</a></dd>`);
    const elapsed = job.hostStartedAt ? Math.max(0, now - Date.parse(job.hostStartedAt)) : undefined;
    if (job.progress) {
      const d = job.progress.derivations;
      facts.push(html`<dt>Derivations</dt><dd class="derivations">${d.done} of ${d.expected} built${d.failed > 0 ? `, ${d.failed} failed` : ""}</dd>`);
      const building = job.progress.building;
      facts.push(html`<dt>Phase</dt><dd class="phase">${building ? `${building.drv}${building.phase ? ` (${building.phase})` : ""}` : "waiting for nix"}</dd>`);
      facts.push(html`<dt>Nix</dt><dd class="progress">${progressText(job.progress)}</dd>`);
    } else facts.push(html`<dt>Phase</dt><dd class="phase">starting nix</dd>`);
    if (elapsed !== undefined) {
      const left = timeLeftText(job.expectedMs, elapsed);
      facts.push(html`<dt>Elapsed</dt><dd class="elapsed">${formatDuration(elapsed)}${left ? ` (${left})` : " (no earlier build to go by)"}</dd>`);
    }
  } else if (!job.evaluation) facts.push(html`<dt>Phase</dt><dd class="phase">fetching the flake and listing its hosts</dd>`);
  return html`${lines}<dl>${facts}</dl>`;
}

export function renderRunning(status: StatusResponse, now: number): Html {
  const running = status.running ? runningJob(status.running, now) : html`<p>Idle: nothing is being built.</p>`;
  const queue =
    status.queued.length === 0
      ? html`<p class="queue">Queue: empty.</p>`
      : html`<p class="queue">Queue: ${plural(status.queued.length, "job")}</p><ol class="queue">${status.queued.map(
          (job) =>
            html`<li>${job.repo} ${job.target}${job.ref ? html` at <code>${job.ref}</code>` : ""} · job <code>${job.jobId}</code> · waiting ${ago(job.enqueuedAt, now)}</li>`,
        )}</ol>`;
  return html`<section id="${sectionIds.running}" class="running" data-state="${status.running ? "building" : "idle"}" aria-live="polite">
<h2>Now</h2>
${running}
${queue}
</section>`;
}

function statusCell(row: HostRow): Html {
  const latest = row.latest;
  const word = latest ? STATUS_WORDS[latest.status] : "never built";
  const cls = latest ? latest.status : "never";
  const stale = row.stale ? html` <span class="badge stale" title="last success ${row.lastSuccessAt ?? ""}">stale</span>` : "";
  const unlisted = row.listed ? "" : html` <span class="badge">no longer listed</span>`;
  return html`<span class="status s-${cls}">${word}</span>${stale}${unlisted}`;
}

function revisionCell(entry: HistoryEntry): Html {
  const rev = entry.revision ? html`<code title="${entry.revision}">${shortRev(entry.revision)}</code>` : html`unknown`;
  return html`${rev}${entry.ref ? html` <span class="ref">${entry.ref}</span>` : ""}`;
}

/** The cause of a failed result: nix's message and file:line for an eval error, else the log tail. */
function cause(repo: string, entry: HistoryEntry, id: string, maxLines: number | undefined): Html {
  const where = entry.location
    ? html`<p class="location">at <code>${entry.location.file}${entry.location.line !== undefined ? `:${entry.location.line}` : ""}${entry.location.column !== undefined ? `:${entry.location.column}` : ""}</code></p>`
    : "";
  const tail = entry.logTail ?? [];
  const shown = maxLines !== undefined && tail.length > maxLines ? tail.slice(-maxLines) : tail;
  const cut = shown.length < tail.length ? html`<p>last ${shown.length} of ${tail.length} lines; <a href="/host/${repo}/${entry.host}">all of them</a></p>` : "";
  const log = shown.length > 0 ? html`${cut}<pre class="log">${shown.join("\n")}</pre>` : "";
  // A one-line message is the summary already.
  const error = entry.error?.includes("\n") ? html`<pre class="error">${entry.error}</pre>` : "";
  return html`<details id="${id}" class="cause"><summary>${STATUS_WORDS[entry.status]}: ${firstLine(entry.error ?? "no message")}</summary>${where}${error}${log}</details>`;
}

function hostRowHtml(repo: string, row: HostRow, now: number): Html {
  const e = row.latest;
  const link = html`<a href="/host/${repo}/${row.host}">${row.host}</a>`;
  if (!e) {
    return html`<tr data-host="${row.host}" data-status="never"><th scope="row">${link}</th><td>${statusCell(row)}</td><td>–</td><td>–</td><td>${row.expectedMs !== null ? formatDuration(row.expectedMs) : "–"}</td><td>–</td><td>–</td><td>–</td></tr>`;
  }
  const changes = e.status === "success" && e.changes ? html`<span title="${changesText(e.changes, 5) ?? ""}">${changesCell(e.changes)}</span>` : "–";
  const root = e.status === "success" ? (row.gcRoot ? "kept" : "not kept") : row.gcRoot ? "last success kept" : "–";
  const tr = html`<tr data-host="${row.host}" data-status="${e.status}"><th scope="row">${link}</th><td>${statusCell(row)}</td><td>${ago(e.finishedAt, now)}</td><td>${formatDuration(e.durationMs)}</td><td>${row.expectedMs !== null ? formatDuration(row.expectedMs) : "–"}</td><td>${revisionCell(e)}</td><td>${changes}</td><td>${root}</td></tr>`;
  if (e.status === "success") return tr;
  return html`${tr}<tr class="cause-row" data-host="${row.host}"><td colspan="8">${cause(repo, e, `cause/${repo}/${row.host}`, OVERVIEW_LOG_LINES)}</td></tr>`;
}

export function renderRepo(repo: RepoStatus, now: number): Html {
  const source = repo.loading
    ? html`reading its hosts`
    : repo.error !== undefined
      ? html`<span class="s-failure">cannot read its hosts: ${repo.error}</span>`
      : repo.revision
        ? html`hosts of <code>${shortRev(repo.revision)}</code>${repo.fetchedAt ? html`, read ${ago(repo.fetchedAt, now)}` : ""}`
        : html`hosts not read yet`;
  const counts = new Map<string, number>();
  for (const row of repo.hosts) {
    const word = row.latest ? STATUS_WORDS[row.latest.status] : "never built";
    counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  const summary = [...counts].map(([word, n]) => `${n} ${word}`).join(", ");
  return html`<section id="${sectionIds.repo(repo.name)}" class="repo">
<h2>${repo.name}</h2>
<p class="meta">${plural(repo.hosts.length, "host")}${summary ? `: ${summary}` : ""} · ${source}</p>
<div class="scroll"><table>
<thead><tr><th scope="col">Host</th><th scope="col">Status</th><th scope="col">When</th><th scope="col">Took</th><th scope="col">Usually</th><th scope="col">Revision</th><th scope="col">Changes</th><th scope="col">GC root</th></tr></thead>
<tbody>${repo.hosts.map((row) => hostRowHtml(repo.name, row, now))}</tbody>
</table></div>
</section>`;
}

function historyRow(repo: string, e: HistoryEntry, index: number, now: number): Html {
  const detail =
    e.status === "success"
      ? e.changes
        ? html`${changesText(e.changes, 0)}${e.changes.packages.length > 0 ? html`<ul class="packages">${e.changes.packages.map((p) => html`<li>${packageText(p)}</li>`)}</ul>` : ""}`
        : html`nothing to compare with`
      : cause(repo, e, `entry/${repo}/${e.host}/${index}`, undefined);
  const root = e.gcRoot === undefined ? "–" : e.gcRoot ? "rooted" : "root failed";
  return html`<tr data-status="${e.status}"><td>${ago(e.finishedAt, now)}</td><td><span class="status s-${e.status}">${STATUS_WORDS[e.status]}</span></td><td>${formatDuration(e.durationMs)}</td><td>${revisionCell(e)}</td><td><code>${e.jobId}</code></td><td>${root}</td><td class="detail">${detail}</td></tr>`;
}

export function renderHostSection(repo: string, host: string, entries: HistoryEntry[], row: HostRow, now: number): Html {
  const table =
    entries.length === 0
      ? html`<p>Never built by this builder.</p>`
      : html`<div class="scroll"><table>
<thead><tr><th scope="col">When</th><th scope="col">Status</th><th scope="col">Took</th><th scope="col">Revision</th><th scope="col">Job</th><th scope="col">GC root</th><th scope="col">Changes or cause</th></tr></thead>
<tbody>${entries.map((e, i) => historyRow(repo, e, i, now))}</tbody>
</table></div>`;
  const usually = row.expectedMs !== null ? `usually ${formatDuration(row.expectedMs)}` : "no successful build to go by";
  const last = row.lastSuccessAt ? html`last success ${ago(row.lastSuccessAt, now)}${row.stale ? html` <span class="badge stale">stale</span>` : ""}` : html`no success yet`;
  return html`<section id="${sectionIds.host(repo, host)}" class="history">
<p class="meta">${statusCell(row)} · ${last} · ${usually} · ${row.gcRoot ? "newest success kept as a GC root" : "no GC root kept"}</p>
${table}
</section>`;
}

export function renderHostPage(builder: string, version: string, repo: string, host: string, section: Html, now: number): string {
  const body = html`<p><a href="/">← all hosts</a></p>
<h2>${repo} / ${host}</h2>
${section}`;
  return pageDocument(`${host} (${repo}) on ${builder}`, builder, version, now, body).text;
}

export function renderNotFound(builder: string, version: string, what: string, now: number): string {
  return pageDocument(`${builder}: not found`, builder, version, now, html`<p>${what}</p><p><a href="/">← all hosts</a></p>`).text;
}
