/**
 * A real Prometheus scrapes the real builder (job homelab-deploy-builder,
 * 1 s scrape interval) with the shipped alert rules loaded: the builds
 * counter comes back through Prometheus's query API, a failed build fires
 * the alert, and every dashboard query runs.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { dashboardQueries, expandGrafanaVariables, loadDashboard, variableSelector } from "../support/dashboard.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { eventually, metricsBaseUrl } from "../support/metrics.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { startPrometheus, type PrometheusServer, type VectorSample } from "../support/prometheus.js";

let nats: NatsServer;
let flake: FixtureFlake;
let builder: BuilderProcess;
let prometheus: PrometheusServer;
let target: string;

async function build(repoTarget: string): Promise<number> {
  const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile };
  return (await runCli(["build", "fixture", repoTarget], env)).exitCode;
}

function query(expr: string): Promise<{ resultType: string; result: VectorSample[] }> {
  return prometheus.api("query", { query: expr });
}

/** Polls the query until `accept` likes its result. */
function queryUntil(expr: string, accept: (result: VectorSample[]) => boolean): Promise<VectorSample[]> {
  return eventually(async () => {
    const { result } = await query(expr);
    return accept(result) ? result : undefined;
  }, `Prometheus to answer ${expr} as expected`, 60_000, 500);
}

beforeAll(async () => {
  nats = await startNatsServer();
  flake = await createFixtureFlake();
  builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flake.url },
  });
  target = new URL(await metricsBaseUrl(builder)).host;
  // Built before Prometheus starts: its first scrape already sees broken's
  // failure counter at 1, the case the alert rule's second half is for.
  expect(await build("alpha")).toBe(0);
  expect(await build("broken")).toBe(1);
  prometheus = await startPrometheus({ targets: [target], ruleFiles: [join(ROOT, "monitoring", "prometheus", "alerts.yaml")] });
});

afterAll(async () => {
  await prometheus?.stop();
  await builder?.stop();
  await nats?.stop();
});

describe("Prometheus scraping the builder", () => {
  it("returns homelab_deploy_builds_total with the job's labels and the builder's counts", async () => {
    const result = await queryUntil('homelab_deploy_builds_total{repo="fixture"}', (r) => r.length === 3);
    const byStatus = Object.fromEntries(result.map((s) => [s.metric.status, s]));
    for (const sample of result) {
      expect(sample.metric).toMatchObject({ __name__: "homelab_deploy_builds_total", job: "homelab-deploy-builder", instance: target, repo: "fixture" });
    }
    expect(byStatus["success"]?.value[1]).toBe("1");
    expect(byStatus["failure"]?.value[1]).toBe("1");
    expect(byStatus["cancelled"]?.value[1]).toBe("0");
    const up = await query('up{job="homelab-deploy-builder"}');
    expect(up.result).toEqual([expect.objectContaining({ metric: expect.objectContaining({ instance: target }), value: [expect.any(Number), "1"] })]);
  });

  it("sees the next build within a few scrapes", async () => {
    await flake.bump();
    expect(await build("beta")).toBe(0);
    const [sample] = await queryUntil('homelab_deploy_builds_total{repo="fixture", status="success"}', (r) => r[0]?.value[1] === "2");
    expect(sample?.metric.instance).toBe(target);
    const hosts = await query('homelab_deploy_build_host_total{status="success"} > 0');
    expect(hosts.result.map((s) => s.metric.host).sort()).toEqual(["alpha", "beta"]);
  });

  it("loads the shipped rules, all healthy, and fires the failed-build alert for the broken host", async () => {
    const alerts = await eventually(async () => {
      const data = await prometheus.api<{ alerts: Array<{ labels: Record<string, string>; state: string }> }>("alerts");
      const failed = data.alerts.filter((a) => a.labels.alertname === "HomelabDeployBuildFailed" && a.state === "firing");
      return failed.length > 0 ? data.alerts : undefined;
    }, "HomelabDeployBuildFailed to fire", 60_000, 500);
    expect(alerts.filter((a) => a.labels.alertname === "HomelabDeployBuildFailed")).toEqual([
      expect.objectContaining({ labels: expect.objectContaining({ repo: "fixture", host: "broken", status: "failure", instance: target }) }),
    ]);
    // Nothing else is wrong with this builder.
    expect(alerts.map((a) => a.labels.alertname)).toEqual(["HomelabDeployBuildFailed"]);
    const rules = await prometheus.api<{ groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> }>("rules");
    const all = rules.groups.flatMap((g) => g.rules);
    expect(all.length).toBeGreaterThanOrEqual(8);
    for (const rule of all) expect({ rule: rule.name, health: rule.health, error: rule.lastError ?? "" }).toEqual({ rule: rule.name, health: "ok", error: "" });
  });

  it("runs every dashboard query without error, and the build panels have data", async () => {
    const dashboard = await loadDashboard();
    const empty: string[] = [];
    for (const { panel, expr } of dashboardQueries(dashboard)) {
      const { result } = await query(variableSelector(expandGrafanaVariables(expr)));
      if (result.length === 0) empty.push(panel);
    }
    // Idle builder, no rejections yet, and only single hosts built (no
    // evaluation pool ran): these may be empty; the rest must show something.
    expect(empty.sort()).toEqual(["Evaluation workers (per 2 h)", "Peak evaluation worker RSS (last evaluation)", "Rejected requests (per hour)", "Running for"]);
  });
});
