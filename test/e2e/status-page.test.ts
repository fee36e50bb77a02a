/**
 * The status page in a real Chromium, against a real builder building a
 * fixture flake with real nix over a real nats-server: what an operator
 * sees, that it stays live without a reload, that untrusted log text stays
 * text, and that it works without JavaScript and never leaves the origin.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { PageStatusSchema } from "../../src/observability/status-page/model.js";
import { HistoryResponseSchema, RejectedSchema } from "../../src/protocol.js";
import { launchChromium } from "../support/browser.js";
import { jsonLines, runCli, spawnCli } from "../support/cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { metricsBaseUrl } from "../support/metrics.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const BUILDER_NAME = "status-test-builder";

let nats: NatsServer;
let flake: FixtureFlake;
let builder: BuilderProcess;
let baseUrl: string;
let browser: Browser;

const clientEnv = () => ({ HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile });

async function build(target: string): Promise<string | undefined> {
  const result = await runCli(["build", "fleet", target, "--json"], clientEnv());
  return jsonLines(result.stdout).at(-1)?.["status"] as string | undefined;
}

/** A page that records every request it makes and every dialog or page error. */
async function openPage(options: { javaScriptEnabled?: boolean; width?: number } = {}) {
  const context = await browser.newContext({ javaScriptEnabled: options.javaScriptEnabled ?? true, viewport: { width: options.width ?? 1200, height: 900 } });
  const page = await context.newPage();
  const requests: string[] = [];
  const problems: string[] = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("dialog", (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    void dialog.dismiss();
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !/favicon/.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  return { page, requests, problems, close: () => context.close() };
}

const row = (page: Page, host: string) => page.locator(`section[id="repo/fleet"] tr[data-host="${host}"]:not(.cause-row)`);

beforeAll(async () => {
  nats = await startNatsServer();
  flake = await createFixtureFlake("status-flake");
  builder = await startBuilder({
    natsUrl: nats.url,
    repos: { fleet: flake.url },
    extra: { nats: { url: nats.url, nkeySeedFile: nats.identities.builder.seedFile, name: BUILDER_NAME } },
  });
  baseUrl = await metricsBaseUrl(builder);
  expect(await build("web01")).toBe("success");
  expect(await build("db01")).toBe("success");
  expect(await build("hostile")).toBe("failure");
  expect(await build("evalfail")).toBe("failure");
  browser = await launchChromium();
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await builder?.stop();
  await nats?.stop();
});

describe("the status page", () => {
  it("lists every host of the repo with its last result, and names the builder", async () => {
    const { page, problems, close } = await openPage();
    const response = await page.goto(baseUrl);
    expect(response?.status()).toBe(200);
    await expect.poll(() => page.locator("#builder").textContent()).toBe(BUILDER_NAME);
    expect(await page.locator("header").textContent()).toMatch(/homelab-deploy \d+\.\d+\.\d+/);
    expect(await row(page, "web01").getAttribute("data-status")).toBe("success");
    expect(await row(page, "web01").locator(".status").textContent()).toBe("built");
    expect(await row(page, "web01").textContent()).toMatch(/kept/);
    expect(await row(page, "hostile").locator(".status").textContent()).toBe("failed");
    expect(await row(page, "evalfail").locator(".status").textContent()).toBe("evaluation error");
    expect(await row(page, "spare01").locator(".status").textContent()).toBe("never built");
    expect(await row(page, "gated").locator(".status").textContent()).toBe("never built");
    // The eval error's cause names the file and line nix blamed.
    const evalCause = page.locator(`details[id="cause/fleet/evalfail"]`);
    await evalCause.locator("summary").click();
    expect(await evalCause.locator(".location").textContent()).toMatch(/flake\.nix:\d+/);
    expect(problems).toEqual([]);
    await close();
  });

  it("shows HTML and script from a build log as text, and runs none of it", async () => {
    const { page, problems, close } = await openPage();
    await page.goto(baseUrl);
    const cause = page.locator(`details[id="cause/fleet/hostile"]`);
    await cause.locator("summary").click();
    const log = await cause.locator("pre.log").textContent();
    expect(log).toContain("<img src=x onerror=window.__pwned=1>");
    expect(log).toContain("<script>window.__pwned=2</script> & \"quoted\" 'single'");
    expect(await cause.locator("img, script, b").count()).toBe(0);
    expect(await page.locator("img").count()).toBe(0);
    expect(await page.evaluate("window.__pwned")).toBeUndefined();
    // The host's own page shows the whole history with the same tail, as text.
    await page.goto(`${baseUrl}/host/fleet/hostile`);
    await page.locator("details.cause summary").first().click();
    expect(await page.locator("details.cause pre.log").first().textContent()).toContain("<script>window.__pwned=2</script>");
    expect(await page.locator("main img, main script").count()).toBe(0);
    expect(await page.evaluate("window.__pwned")).toBeUndefined();
    expect(problems).toEqual([]);
    await close();
  });

  it("sends a Content-Security-Policy without unsafe-inline or unsafe-eval, and requests nothing from another origin", async () => {
    const { page, requests, close } = await openPage();
    const response = await page.goto(baseUrl);
    const csp = response?.headers()["content-security-policy"] ?? "";
    expect(csp).toMatch(/script-src 'self'/);
    expect(csp).toMatch(/default-src 'none'/);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval/);
    await page.locator('#live[data-state="open"]').waitFor();
    await page.goto(`${baseUrl}/host/fleet/web01`);
    await page.locator('#live[data-state="open"]').waitFor();
    const origin = new URL(baseUrl).origin;
    expect(requests.length).toBeGreaterThan(0);
    expect(requests.filter((url) => new URL(url).origin !== origin)).toEqual([]);
    expect(requests).toContain(`${origin}/status.js`);
    expect(requests).toContain(`${origin}/status.css`);
    await close();
  });

  it("works with JavaScript disabled", async () => {
    const { page, requests, close } = await openPage({ javaScriptEnabled: false });
    await page.goto(baseUrl);
    expect(await row(page, "web01").locator(".status").textContent()).toBe("built");
    expect(await row(page, "hostile").locator(".status").textContent()).toBe("failed");
    expect(await page.locator("#live").getAttribute("data-state")).toBe("static");
    // <details> opens without script, and the host page is a plain link.
    const cause = page.locator(`details[id="cause/fleet/hostile"]`);
    await cause.locator("summary").click();
    expect(await cause.locator("pre.log").isVisible()).toBe(true);
    await row(page, "web01").locator("a").click();
    await page.waitForURL(`${baseUrl}/host/fleet/web01`);
    expect(await page.locator('section.history tr[data-status="success"]').count()).toBe(1);
    expect(requests.some((url) => url.endsWith("/events"))).toBe(false);
    await close();
  });

  it("fits a 375 px wide phone: only tables scroll, inside their own box", async () => {
    const { page, close } = await openPage({ width: 375 });
    await page.goto(baseUrl);
    await page.locator(`details[id="cause/fleet/hostile"] summary`).click();
    // Page script as a string: the tests compile without the DOM's types.
    const widths = (await page.evaluate(
      `({ page: document.documentElement.scrollWidth, tables: [...document.querySelectorAll(".scroll")].map((box) => box.getBoundingClientRect().right) })`,
    )) as { page: number; tables: number[] };
    expect(widths.page).toBeLessThanOrEqual(375);
    for (const right of widths.tables) expect(right).toBeLessThanOrEqual(375);
    if (process.env["HD_STATUS_SCREENSHOTS"]) {
      await page.screenshot({ path: join(process.env["HD_STATUS_SCREENSHOTS"], "status-page-phone.png"), fullPage: true });
    }
    await close();
  });

  it("shows a build started after the page loaded: its progress, then its result, without a reload", async () => {
    const { page, requests, close } = await openPage();
    await page.goto(baseUrl);
    await page.locator('#live[data-state="open"]').waitFor();
    await page.evaluate("window.__sameDocument = true");
    // A cause the reader opened stays open through the live updates.
    await page.locator(`details[id="cause/fleet/hostile"] summary`).click();
    const client = spawnCli(["build", "fleet", "gated", "--json"], clientEnv());
    // The build waits for the go file, so the page must show it running first.
    await page.locator('section#running[data-state="building"] .host-index').filter({ hasText: "host 1 of 1: gated" }).waitFor();
    await page.locator("section#running .derivations").filter({ hasText: /\d+ of \d+ built/ }).waitFor();
    await page.locator("section#running .phase").filter({ hasText: "gated-system" }).waitFor();
    expect(await page.locator("section#running .elapsed").textContent()).toMatch(/\d/);
    if (process.env["HD_STATUS_SCREENSHOTS"]) {
      await page.screenshot({ path: join(process.env["HD_STATUS_SCREENSHOTS"], "status-page.png"), fullPage: true });
    }
    await writeFile(join(flake.eventsDir, "go"), "");
    await page.locator(`section[id="repo/fleet"] tr[data-host="gated"][data-status="success"]`).waitFor();
    await page.locator('section#running[data-state="idle"]').waitFor();
    expect(Number(await page.locator("html").getAttribute("data-updates"))).toBeGreaterThan(0);
    expect(await page.locator(`details[id="cause/fleet/hostile"]`).getAttribute("open")).not.toBeNull();
    expect(await page.evaluate("window.__sameDocument")).toBe(true);
    expect(requests.filter((url) => new URL(url).pathname === "/")).toHaveLength(1);
    const result = await client;
    expect(jsonLines(result.stdout).at(-1)?.["status"]).toBe("success");
    await close();
  });
});

describe("the status page's JSON", () => {
  it("GET /api/status answers the page's data in the protocol's shapes", async () => {
    const response = await fetch(`${baseUrl}/api/status`);
    expect(response.headers.get("content-type")).toBe("application/json");
    const status = PageStatusSchema.parse(await response.json());
    expect(status.builder).toBe(BUILDER_NAME);
    expect(status.status.running).toBeNull();
    const fleet = status.repos.find((r) => r.name === "fleet");
    const hosts = Object.fromEntries((fleet?.hosts ?? []).map((h) => [h.host, h]));
    expect(hosts["web01"]?.latest?.status).toBe("success");
    expect(hosts["web01"]?.gcRoot).toBe(true);
    expect(hosts["spare01"]?.latest).toBeNull();
    expect(hosts["hostile"]?.latest?.logTail?.join("\n")).toContain("<img src=x onerror=window.__pwned=1>");
    expect(hosts["evalfail"]?.latest?.location?.file).toMatch(/flake\.nix$/);
    expect(JSON.stringify(status)).not.toContain(flake.dir);
  });

  it("GET /api/history answers what build.history answers, and rejects bad names", async () => {
    const history = HistoryResponseSchema.parse(await (await fetch(`${baseUrl}/api/history?repo=fleet&host=web01`)).json());
    expect(history.host).toBe("web01");
    expect(history.entries.map((e) => e.status)).toEqual(["success"]);
    const whole = HistoryResponseSchema.parse(await (await fetch(`${baseUrl}/api/history?repo=fleet`)).json());
    expect(new Set(whole.entries.map((e) => e.host))).toEqual(new Set(["web01", "db01", "hostile", "evalfail", "gated"].filter((h) => whole.entries.some((e) => e.host === h))));
    expect(whole.entries.map((e) => e.host)).toEqual(expect.arrayContaining(["web01", "db01", "hostile", "evalfail"]));
    const bad = await fetch(`${baseUrl}/api/history?repo=${encodeURIComponent("../x")}`);
    expect(bad.status).toBe(400);
    expect(RejectedSchema.parse(await bad.json()).code).toBe("invalid_name");
    const unknown = await fetch(`${baseUrl}/api/history?repo=other`);
    expect(unknown.status).toBe(404);
    expect(RejectedSchema.extend({ known: z.array(z.string()) }).parse(await unknown.json()).known).toEqual(["fleet"]);
  });

  it("answers only GET and HEAD", async () => {
    const post = await fetch(`${baseUrl}/`, { method: "POST", body: "x" });
    expect(post.status).toBe(405);
  });
});

describe("after a restart", () => {
  it("still shows each host's result and the failed host's log tail", async () => {
    const { code } = await builder.stop();
    expect(code).toBe(0);
    builder = await spawnBuilder(builder.configFile);
    baseUrl = await metricsBaseUrl(builder);
    const { page, close } = await openPage();
    await page.goto(baseUrl);
    expect(await row(page, "gated").locator(".status").textContent()).toBe("built");
    const cause = page.locator(`details[id="cause/fleet/hostile"]`);
    await cause.locator("summary").click();
    expect(await cause.locator("pre.log").textContent()).toContain("<img src=x onerror=window.__pwned=1>");
    await close();
  });
});
