/**
 * The listeners' alert rules (monitoring/prometheus/deploy-alerts.yaml):
 * `promtool check rules`, their unit tests (`promtool test rules`), every
 * alert has a test in which it fires, and they ask only for metrics the
 * listener exports.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { createLogger } from "../../src/logger.js";
import { ListenerMetrics } from "../../src/listener/metrics.js";
import { ROOT } from "../support/cli.js";
import { metricNamesIn } from "../support/dashboard.js";

const run = promisify(execFile);
const RULES = join(ROOT, "monitoring", "prometheus", "deploy-alerts.yaml");
const RULE_TESTS = join(ROOT, "monitoring", "prometheus", "deploy-alerts.test.yaml");

async function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run("promtool", args, { timeout: 60_000 });
    return { code: 0, output: stdout + stderr };
  } catch (err) {
    const failed = err as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, output: `${failed.stdout ?? ""}${failed.stderr ?? ""}` };
  }
}

const RulesSchema = z.object({
  groups: z.array(z.object({ name: z.string(), rules: z.array(z.object({ alert: z.string(), expr: z.string() })) })),
});
const RuleTestsSchema = z.object({
  tests: z.array(z.object({ alert_rule_test: z.array(z.object({ alertname: z.string(), exp_alerts: z.array(z.unknown()).optional() })) })),
});

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
    const rules = RulesSchema.parse(parseYaml(await readFile(RULES, "utf8"))).groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.alert)).toEqual(["HomelabDeployRolledBack", "HomelabDeployRebootPending"]);
    const tests = RuleTestsSchema.parse(parseYaml(await readFile(RULE_TESTS, "utf8"))).tests.flatMap((t) => t.alert_rule_test);
    const fired = new Set(tests.filter((t) => (t.exp_alerts?.length ?? 0) > 0).map((t) => t.alertname));
    for (const rule of rules) expect(fired, `no test makes ${rule.alert} fire`).toContain(rule.alert);
    expect(rules[1]?.expr).toContain("> 7 * 86400");
  });

  it("use only metrics the listener exports", async () => {
    const exported = await listenerMetricNames();
    const rules = RulesSchema.parse(parseYaml(await readFile(RULES, "utf8"))).groups.flatMap((g) => g.rules);
    for (const rule of rules) {
      for (const name of metricNamesIn(rule.expr)) expect(exported, `${rule.alert} uses ${name}`).toContain(name);
    }
  });
});
