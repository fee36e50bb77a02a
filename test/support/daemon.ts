/**
 * The builder daemon as a child process (`node dist/cli.js builder`), with
 * its JSON log lines collected so a test can wait for what it reports.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI } from "./cli.js";

export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export interface BuilderProcess {
  child: ChildProcess;
  configFile: string;
  logs: LogLine[];
  /** Raw stdout+stderr, for assertions that nothing secret was printed. */
  output(): string;
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends `signal` and resolves with the exit code (and how long the exit took). */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; ms: number }>;
  exited: Promise<number | null>;
}

export interface BuilderSetup {
  natsUrl: string;
  seedFile?: string;
  repos: Record<string, string>;
  build?: Record<string, unknown>;
  extra?: Record<string, unknown>;
  env?: Record<string, string>;
}

/**
 * `dir` holds the builder's state unless `extra` says otherwise; the
 * metrics server takes a free loopback port (logged as "metrics server
 * listening"), so builders of parallel test files never collide on 9973.
 */
export function builderConfig(setup: BuilderSetup, dir: string): Record<string, unknown> {
  return {
    nats: { url: setup.natsUrl, ...(setup.seedFile ? { nkeySeedFile: setup.seedFile } : {}) },
    repos: Object.fromEntries(Object.entries(setup.repos).map(([name, url]) => [name, { url }])),
    build: { timeout: "1m", killGrace: "1s", ...setup.build },
    log: { level: "debug" },
    metrics: { listen: "127.0.0.1:0" },
    stateDir: join(dir, "state"),
    ...setup.extra,
  };
}

/** `cli`: another build's dist/cli.js (a benchmark comparing with older code). */
export async function startBuilder(setup: BuilderSetup, options: { waitReady?: boolean; cli?: string } = {}): Promise<BuilderProcess> {
  const dir = await mkdtemp(join(tmpdir(), "hd-builder-"));
  const configFile = join(dir, "config.json");
  await writeFile(configFile, JSON.stringify(builderConfig(setup, dir), null, 2));
  const { cli, ...rest } = options;
  return spawnBuilder(configFile, setup.env, { ...rest, ...(cli ? { command: [process.execPath, cli, "builder", "--config", configFile] } : {}) });
}

/** `command`: the argv to run instead of `node dist/cli.js builder --config FILE` (a unit's ExecStart, say). */
export async function spawnBuilder(
  configFile: string,
  env: Record<string, string> = {},
  options: { waitReady?: boolean; command?: string[]; readyMessage?: string } = {},
): Promise<BuilderProcess> {
  const [bin, ...args] = options.command ?? [process.execPath, CLI, "builder", "--config", configFile];
  const child = spawn(bin as string, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  let raw = "";
  const waiters: Array<{ predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
  let pending = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (chunk: string) => {
    raw += chunk;
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop() ?? "";
    for (const text of lines) {
      if (!text.trim()) continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: text };
      }
      logs.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.predicate(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => (raw += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const builder: BuilderProcess = {
    child,
    configFile,
    logs,
    output: () => raw,
    waitForLog(predicate, timeoutMs = 30_000) {
      const seen = logs.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`timed out waiting for a builder log line; got:\n${raw.slice(-4000)}`));
        }, timeoutMs);
        const waiter = {
          predicate,
          resolve: (line: LogLine) => {
            clearTimeout(timer);
            resolve(line);
          },
        };
        waiters.push(waiter);
        void exited.then(() => {
          if (!waiters.includes(waiter)) return;
          clearTimeout(timer);
          reject(new Error(`builder exited while a test waited for a log line; output:\n${raw.slice(-4000)}`));
        });
      });
    },
    async stop(signal = "SIGTERM") {
      const started = Date.now();
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const code = await exited;
      return { code, ms: Date.now() - started };
    },
    exited,
  };
  if (options.waitReady !== false) {
    try {
      const ready = options.readyMessage ?? "builder ready: listening on build.>";
      await builder.waitForLog((l) => l.msg === ready);
    } catch (err) {
      // Nobody else holds a handle on this process yet: don't leave it behind.
      await builder.stop("SIGKILL");
      throw err;
    }
  }
  return builder;
}
