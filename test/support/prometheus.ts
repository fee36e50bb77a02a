/**
 * A real Prometheus server (Debian package `prometheus`) on a free loopback
 * port with a throw-away TSDB, scraping given targets every second as job
 * homelab-deploy-builder, optionally with rule files, and its HTTP API.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface PrometheusServer {
  url: string;
  /** GET /api/v1/<path>; throws unless Prometheus answers status "success". */
  api<T = unknown>(path: string, params?: Record<string, string>): Promise<T>;
  stop(): Promise<void>;
}

export interface VectorSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface PrometheusSetup {
  /** host:port of each builder to scrape. */
  targets: string[];
  ruleFiles?: string[];
}

function prometheusConfig(setup: PrometheusSetup): string {
  return JSON.stringify({
    global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
    rule_files: setup.ruleFiles ?? [],
    scrape_configs: [{ job_name: "homelab-deploy-builder", static_configs: [{ targets: setup.targets }] }],
  });
}

function waitForListening(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`prometheus did not start within 30 s:\n${output}`)), 30_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /msg="Listening on" address=(127\.0\.0\.1:\d+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stderr?.off("data", onData);
        child.stderr?.resume();
        resolve(match[1] as string);
      }
    };
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`prometheus exited with ${code}:\n${output}`));
    });
  });
}

async function waitUntilReady(url: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ready) return;
    if (Date.now() > deadline) throw new Error("prometheus did not become ready within 30 s");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export async function startPrometheus(setup: PrometheusSetup): Promise<PrometheusServer> {
  const dir = await mkdtemp(join(tmpdir(), "hd-prometheus-"));
  const configFile = join(dir, "prometheus.yml");
  await writeFile(configFile, prometheusConfig(setup));
  const child = spawn(
    "prometheus",
    [`--config.file=${configFile}`, `--storage.tsdb.path=${join(dir, "data")}`, "--web.listen-address=127.0.0.1:0", "--log.level=info"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const url = `http://${await waitForListening(child)}`;
    await waitUntilReady(url);
    return {
      url,
      async api<T>(path: string, params: Record<string, string> = {}) {
        const response = await fetch(`${url}/api/v1/${path}?${new URLSearchParams(params).toString()}`);
        const body = (await response.json()) as { status: string; data?: T; error?: string };
        if (body.status !== "success") throw new Error(`prometheus /api/v1/${path} ${JSON.stringify(params)}: ${body.error ?? response.status}`);
        return body.data as T;
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
