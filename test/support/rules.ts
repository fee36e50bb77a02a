/**
 * Prometheus alert rule files under monitoring/prometheus, as the tests read
 * them: promtool (`check rules`, `test rules`) and the parts of a rule file
 * and its unit-test file the tests look at.
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

const run = promisify(execFile);

export async function promtool(...args: string[]): Promise<{ code: number; output: string }> {
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
  tests: z.array(
    z.object({
      alert_rule_test: z.array(z.object({ alertname: z.string(), exp_alerts: z.array(z.unknown()).optional() })),
    }),
  ),
});

/** Every alert rule of a rule file, in order. */
export async function alertRules(file: string): Promise<Array<{ alert: string; expr: string }>> {
  return RulesSchema.parse(parseYaml(await readFile(file, "utf8"))).groups.flatMap((g) => g.rules);
}

/** The alerts some unit test of `file` expects to fire. */
export async function alertsFiredInTests(file: string): Promise<Set<string>> {
  const tests = RuleTestsSchema.parse(parseYaml(await readFile(file, "utf8"))).tests.flatMap((t) => t.alert_rule_test);
  return new Set(tests.filter((t) => (t.exp_alerts?.length ?? 0) > 0).map((t) => t.alertname));
}
