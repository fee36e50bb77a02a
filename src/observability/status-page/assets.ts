/**
 * The status page's stylesheet and script, served as files from the same
 * server (`/status.css`, `/status.js`) so the Content-Security-Policy can
 * forbid inline scripts and styles. Kept as strings here so `tsc` ships
 * them in dist/ without a copy step.
 */

export const STATUS_CSS = `:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #57606a; --line: #d0d7de; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --code: #f6f8fa; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #8d96a0; --line: #30363d; --ok: #3fb950; --bad: #f85149; --warn: #d29922; --code: #161b22; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 80rem; padding: 0.75rem; font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 1.3rem; margin: 0.2rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 1.2rem 0 0.3rem; overflow-wrap: anywhere; }
p, dl, ol, ul { margin: 0.3rem 0; }
a { color: inherit; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.9em; }
code { overflow-wrap: anywhere; }
.meta { color: var(--muted); overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0.1rem 0.8rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th[scope=col] { color: var(--muted); font-weight: 600; }
td.detail, tr.cause-row td { white-space: normal; min-width: 16rem; }
tr.cause-row td { padding-top: 0; }
/* A cause stays as wide as the screen while its row scrolls with the table. */
tr.cause-row details { position: sticky; left: 0.5rem; max-width: calc(100vw - 3rem); }
.status { font-weight: 600; }
.s-success { color: var(--ok); }
.s-failure, .s-eval_error { color: var(--bad); }
.s-timeout, .s-cancelled { color: var(--warn); }
.s-never { color: var(--muted); }
.badge { display: inline-block; padding: 0 0.35rem; border: 1px solid currentColor; border-radius: 0.6rem; font-size: 0.8em; color: var(--muted); }
.badge.stale { color: var(--warn); }
.ref { color: var(--muted); }
details.cause summary { cursor: pointer; overflow-wrap: anywhere; white-space: normal; }
pre { background: var(--code); padding: 0.4rem; margin: 0.3rem 0; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 24rem; overflow-y: auto; }
ul.packages { padding-left: 1.2rem; }
#live[data-state=open] { color: var(--ok); }
#live[data-state=reconnecting] { color: var(--warn); }
`;

/**
 * Keeps the page live: the server sends whole sections, rendered and
 * escaped exactly as the page was, over server-sent events; this replaces
 * the section with the same id and keeps the <details> the reader opened.
 * No polling: EventSource reconnects by itself, and the server sends the
 * current sections on every (re)connect.
 */
export const STATUS_JS = `"use strict";
(function () {
  var live = document.getElementById("live");
  function state(name, text) {
    if (!live) return;
    live.setAttribute("data-state", name);
    live.textContent = text;
  }
  if (typeof EventSource !== "function") return;
  var host = document.querySelector("section.history");
  var source = new EventSource("/events" + (host ? "?section=" + encodeURIComponent(host.id) : ""));
  source.addEventListener("open", function () { state("open", "live"); });
  source.addEventListener("error", function () { state("reconnecting", "reconnecting…"); });
  source.addEventListener("section", function (event) {
    var update = JSON.parse(event.data);
    var old = document.getElementById(update.id);
    if (!old) return;
    var open = [];
    old.querySelectorAll("details[open]").forEach(function (d) { open.push(d.id); });
    var template = document.createElement("template");
    template.innerHTML = update.html;
    var fresh = template.content.firstElementChild;
    if (!fresh || fresh.id !== update.id) return;
    open.forEach(function (id) {
      var d = fresh.querySelector("details[id='" + CSS.escape(id) + "']");
      if (d) d.open = true;
    });
    old.replaceWith(fresh);
    document.documentElement.setAttribute("data-updates", String(Number(document.documentElement.getAttribute("data-updates") || "0") + 1));
  });
})();
`;
