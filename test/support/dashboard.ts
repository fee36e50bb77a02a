/** The Grafana dashboard under monitoring/grafana, parsed, and the PromQL in it. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { ROOT } from "./cli.js";

export const DASHBOARD_FILE = join(ROOT, "monitoring", "grafana", "homelab-deploy.json");

const TargetSchema = z.object({
  expr: z.string().min(1),
  refId: z.string(),
  datasource: z.object({ type: z.literal("prometheus"), uid: z.string() }),
});

const PanelSchema = z.object({
  id: z.number().int(),
  type: z.string(),
  title: z.string().min(1),
  gridPos: z.object({ x: z.number().int().min(0), y: z.number().int().min(0), w: z.number().int().min(1), h: z.number().int().min(1) }),
  targets: z.array(TargetSchema).default([]),
});
export type Panel = z.infer<typeof PanelSchema>;

const DashboardSchema = z.object({
  uid: z.string(),
  title: z.string(),
  schemaVersion: z.number().int(),
  panels: z.array(PanelSchema).min(1),
  templating: z.object({
    list: z.array(z.object({ name: z.string(), type: z.string(), query: z.unknown().optional(), definition: z.string().optional() })),
  }),
});
export type Dashboard = z.infer<typeof DashboardSchema>;

export async function loadDashboard(): Promise<Dashboard> {
  return DashboardSchema.parse(JSON.parse(await readFile(DASHBOARD_FILE, "utf8")));
}

/** Every PromQL expression of the dashboard: panel targets and template variable queries. */
export function dashboardQueries(dashboard: Dashboard): Array<{ panel: string; expr: string }> {
  const fromPanels = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr })));
  const fromVariables = dashboard.templating.list
    .filter((v) => v.definition !== undefined)
    .map((v) => ({ panel: `$${v.name}`, expr: v.definition as string }));
  return [...fromPanels, ...fromVariables];
}

/**
 * Metric names in a PromQL expression: every selector written with braces,
 * and every bare name of the builder's own families. Function names and
 * label names never stand before "{".
 */
export function metricNamesIn(expr: string): string[] {
  const names = new Set<string>();
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  for (const [, name] of withoutStrings.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{/g)) names.add(name as string);
  for (const [name] of withoutStrings.matchAll(/\b(?:homelab_deploy|process|nodejs)_[a-zA-Z0-9_]+/g)) names.add(name);
  return [...names];
}

/** A dashboard expression with Grafana's variables replaced, so Prometheus itself can run it. */
export function expandGrafanaVariables(expr: string): string {
  return expr
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__interval", "1m")
    .replaceAll("$__range", "1h")
    .replace(/\$(instance|repo|builder)\b/g, ".*");
}

/** Turns `label_values(selector, label)` (Grafana's variable query) into the selector it reads. */
export function variableSelector(expr: string): string {
  const match = /^label_values\((.*),\s*\w+\)$/.exec(expr);
  return match ? (match[1] as string) : expr;
}
