/**
 * The listeners' alert rules (monitoring/prometheus/deploy-alerts.yaml):
 * `promtool check rules`, their unit tests (`promtool test rules`), every
 * alert has a test in which it fires, and they ask only for metrics the
 * listener exports.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import { ListenerMetrics } from "../../src/listener/metrics.js";
import { ROOT } from "../support/cli.js";
import { alertRules, alertsFiredInTests, promtool } from "../support/rules.js";
import { metricNamesIn } from "../support/dashboard.js";

const RULES = join(ROOT, "monitoring", "prometheus", "deploy-alerts.yaml");
const RULE_TESTS = join(ROOT, "monitoring", "prometheus", "deploy-alerts.test.yaml");


/** The names every metric family of the listener's registry exposes samples under. */
async function listenerMetricNames(): Promise<Set<string>> {
  const stateDir = await mkdtemp(join(tmpdir(), "hd-listener-metrics-"));
  const metrics = new ListenerMetrics({ tier: "test", host: "h", version: "0", stateDir, logger: createLogger({ level: "silent" }) });
  const names = new Set(["up"]);
  for (const family of await metrics.registry.getMetricsAsJSON()) names.add(family.name);
  return names;
}

describe("the listeners' alert rules", () => {
  it("pass promtool check rules and their promtool unit tests", async () => {
    const checked = await promtool("check", "rules", RULES);
    expect(checked.output).toContain("SUCCESS: 2 rules found");
    expect(checked.code).toBe(0);
    const tested = await promtool("test", "rules", RULE_TESTS);
    expect(tested.output).toContain("SUCCESS");
    expect(tested.code).toBe(0);
  });

  it("each fire in a unit test, and are the issue's two", async () => {
    const rules = await alertRules(RULES);
    expect(rules.map((r) => r.alert)).toEqual(["HomelabDeployRolledBack", "HomelabDeployRebootPending"]);
    const fired = await alertsFiredInTests(RULE_TESTS);
    for (const rule of rules) expect(fired, `no test makes ${rule.alert} fire`).toContain(rule.alert);
    expect(rules[1]?.expr).toContain("> 7 * 86400");
  });

  it("use only metrics the listener exports", async () => {
    const exported = await listenerMetricNames();
    const rules = await alertRules(RULES);
    for (const rule of rules) {
      for (const name of metricNamesIn(rule.expr)) expect(exported, `${rule.alert} uses ${name}`).toContain(name);
    }
  });
});
