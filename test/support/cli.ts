/** Runs the real CLI (dist/cli.js, built by `npm test`'s pretest) as a user would. */
import { execa, type ResultPromise } from "execa";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(ROOT, "dist", "cli.js");

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export function spawnCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): ResultPromise<{ reject: false }> {
  return execa(process.execPath, [CLI, ...args], {
    env: { ...env },
    extendEnv: true,
    reject: false,
    timeout: timeoutMs,
    stdin: "ignore",
  }) as unknown as ResultPromise<{ reject: false }>;
}

export async function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  const result = await spawnCli(args, env, timeoutMs);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Every stdout line of a `--json` run, parsed. */
export function jsonLines(stdout: string): Array<Record<string, unknown> & { type: string }> {
  return stdout
    .split("\n")
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as Record<string, unknown> & { type: string });
}
