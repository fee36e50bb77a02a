/**
 * What ships under monitoring/: the alert rules pass `promtool check rules`
 * and their unit tests (`promtool test rules`), every alert has a test that
 * makes it fire, and the Grafana dashboard is well formed and asks only for
 * metrics the builder exports. (test/e2e/prometheus.test.ts runs every
 * dashboard query against a real Prometheus.)
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BuildMetrics } from "../../src/observability/metrics.js";
import { ROOT } from "../support/cli.js";
import { alertRules, alertsFiredInTests, promtool } from "../support/rules.js";
import { dashboardQueries, loadDashboard, metricNamesIn, type Panel } from "../support/dashboard.js";

const RULES = join(ROOT, "monitoring", "prometheus", "alerts.yaml");
const RULE_TESTS = join(ROOT, "monitoring", "prometheus", "alerts.test.yaml");


/** The names every metric family of the builder's registry exposes samples under. */
async function exportedNames(): Promise<Set<string>> {
  const families = await new BuildMetrics({ repos: ["r"], version: "0" }).registry.getMetricsAsJSON();
  const names = new Set(["up"]);
  for (const family of families) {
    names.add(family.name);
    if (String(family.type) === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(family.name + suffix);
  }
  return names;
}

describe("alert rules", () => {
  it("pass promtool check rules", async () => {
    const { code, output } = await promtool("check", "rules", RULES);
    expect(output).toMatch(/SUCCESS: \d+ rules found/);
    expect(code).toBe(0);
  });

  it("pass their promtool unit tests", async () => {
    const { code, output } = await promtool("test", "rules", RULE_TESTS);
    expect(output).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  it("each have a unit test in which they fire, and include the plan's two", async () => {
    const rules = await alertRules(RULES);
    const fired = await alertsFiredInTests(RULE_TESTS);
    for (const rule of rules) expect(fired, `no test makes ${rule.alert} fire`).toContain(rule.alert);
    const expr = (name: string) => rules.find((r) => r.alert === name)?.expr ?? "";
    expect(expr("HomelabDeployBuildFailed")).toContain("increase(homelab_deploy_build_host_total{");
    expect(expr("HomelabDeployBuildFailed")).toContain("[1h]) > 0");
    // The plan's rule, per repo across every builder of a queue group.
    expect(expr("HomelabDeployNoSuccessfulBuild")).toBe("time() - max by (job, repo) (homelab_deploy_build_last_success_timestamp) > 86400");
    expect(expr("HomelabDeployBuilderDown")).toBe('up{job="homelab-deploy-builder"} == 0');
    expect(expr("HomelabDeployBuilderAbsent")).toBe('absent(up{job="homelab-deploy-builder"})');
  });

  it("use only metrics the builder exports", async () => {
    const exported = await exportedNames();
    const rules = await alertRules(RULES);
    for (const rule of rules) {
      for (const name of metricNamesIn(rule.expr)) expect(exported, `${rule.alert} uses ${name}`).toContain(name);
    }
  });
});

describe("the Grafana dashboard", () => {
  it("is a dashboard with unique panel ids, laid out on the 24-column grid without overlaps", async () => {
    const dashboard = await loadDashboard();
    expect(dashboard.uid).toBe("homelab-deploy-builder");
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const overlaps = (a: Panel, b: Panel) =>
      a.gridPos.x < b.gridPos.x + b.gridPos.w &&
      b.gridPos.x < a.gridPos.x + a.gridPos.w &&
      a.gridPos.y < b.gridPos.y + b.gridPos.h &&
      b.gridPos.y < a.gridPos.y + a.gridPos.h;
    dashboard.panels.forEach((panel, i) => {
      expect(panel.gridPos.x + panel.gridPos.w, panel.title).toBeLessThanOrEqual(24);
      for (const other of dashboard.panels.slice(i + 1)) expect(overlaps(panel, other), `${panel.title} / ${other.title}`).toBe(false);
    });
    // Every query goes to the data source the importer picks.
    expect(dashboard.templating.list.find((v) => v.name === "datasource")).toMatchObject({ type: "datasource", query: "prometheus" });
    for (const panel of dashboard.panels.filter((p) => p.type !== "row")) {
      expect(panel.targets.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets) expect(target.datasource.uid, panel.title).toBe("${datasource}");
    }
  });

  it("queries only metrics the builder exports, and covers the plan's panels, the queue and health", async () => {
    const exported = await exportedNames();
    const used = new Set<string>();
    for (const { panel, expr } of dashboardQueries(await loadDashboard())) {
      for (const name of metricNamesIn(expr)) {
        expect(exported, `panel "${panel}" queries ${name}`).toContain(name);
        used.add(name);
      }
    }
    for (const name of [
      "homelab_deploy_builds_total",
      "homelab_deploy_build_host_total",
      "homelab_deploy_build_duration_seconds_bucket",
      "homelab_deploy_build_duration_seconds_sum",
      "homelab_deploy_build_last_success_timestamp",
      "homelab_deploy_build_host_last_success_timestamp",
      "homelab_deploy_queue_depth",
      "homelab_deploy_build_running_since_timestamp",
      "homelab_deploy_queue_wait_seconds_bucket",
      "homelab_deploy_nats_connection_state",
      "up",
    ]) {
      expect(used, `no panel shows ${name}`).toContain(name);
    }
  });
});
