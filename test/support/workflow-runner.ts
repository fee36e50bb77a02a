/**
 * Runs a GitHub/Gitea Actions job on this machine, the way a runner does it
 * for the parts examples/flake-update-safe.yaml uses: the workflow's, job's
 * and step's `env` with `${{ … }}` expressions, `if:` conditions,
 * `run:` scripts under `bash --noprofile --norc -eo pipefail` (what
 * `shell: bash` means), the GITHUB_OUTPUT / GITHUB_ENV / GITHUB_PATH /
 * GITHUB_STEP_SUMMARY files, and a job that fails at its first failing step
 * while later steps are skipped unless their condition says otherwise.
 * `uses:` steps are handed to the caller (the test performs the checkout).
 * An expression this runner does not know fails the test instead of being
 * guessed at.
 */
import { execa } from "execa";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

export interface WorkflowStep {
  name?: string;
  id?: string;
  if?: string;
  uses?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
  run?: string;
  shell?: string;
}

export interface Workflow {
  env?: Record<string, string>;
  defaults?: { run?: { shell?: string } };
  jobs: Record<string, { env?: Record<string, string>; steps: WorkflowStep[] }>;
}

export interface StepResult {
  name: string;
  outcome: "success" | "failure" | "skipped";
  exitCode?: number;
  stdout: string;
  stderr: string;
}

export interface JobRun {
  status: "success" | "failure";
  steps: StepResult[];
  summary: string;
  outputs: Record<string, Record<string, string>>;
}

export interface RunOptions {
  workspace: string;
  /** Replaces workflow-level `env` values (e.g. the NATS URL of the test server). */
  env?: Record<string, string>;
  secrets?: Record<string, string>;
  /** Directories put in front of PATH, as a runner image's tools are. */
  path?: string[];
  uses: (step: WorkflowStep, env: Record<string, string>) => Promise<void>;
}

interface Context {
  env: Record<string, string>;
  secrets: Record<string, string>;
  steps: Record<string, { outputs: Record<string, string> }>;
  status: "success" | "failure";
}

// --- expressions: literals, context lookups, ==, !=, &&, ||, !, status functions ---

type Token = { kind: "str" | "ident" | "op"; text: string };

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  const re = /\s*(?:'((?:[^']|'')*)'|([A-Za-z_][A-Za-z0-9_.-]*(?:\(\))?)|(==|!=|&&|\|\||!|\(|\)))/y;
  let at = 0;
  while (at < source.length) {
    if (/^\s*$/.test(source.slice(at))) break;
    re.lastIndex = at;
    const m = re.exec(source);
    if (!m) throw new Error(`workflow runner: cannot read expression ${JSON.stringify(source)} at ${at}`);
    if (m[1] !== undefined) tokens.push({ kind: "str", text: m[1].replaceAll("''", "'") });
    else if (m[2] !== undefined) tokens.push({ kind: "ident", text: m[2] });
    else tokens.push({ kind: "op", text: m[3] as string });
    at = re.lastIndex;
  }
  return tokens;
}

function lookup(path: string, ctx: Context): string | boolean {
  switch (path) {
    case "success()":
      return ctx.status === "success";
    case "failure()":
      return ctx.status === "failure";
    case "always()":
      return true;
    case "cancelled()":
      return false;
    case "true":
      return true;
    case "false":
      return false;
  }
  const [root, ...rest] = path.split(".");
  if (root === "env" && rest.length === 1) return ctx.env[rest[0] as string] ?? "";
  if (root === "secrets" && rest.length === 1) return ctx.secrets[rest[0] as string] ?? "";
  if (root === "steps" && rest.length === 3 && rest[1] === "outputs") return ctx.steps[rest[0] as string]?.outputs[rest[2] as string] ?? "";
  throw new Error(`workflow runner: unknown expression ${path}`);
}

export function evaluate(source: string, ctx: Context): string | boolean {
  const tokens = tokenize(source);
  let i = 0;
  const peek = () => tokens[i];
  const primary = (): string | boolean => {
    const token = tokens[i++];
    if (!token) throw new Error(`workflow runner: unexpected end of ${JSON.stringify(source)}`);
    if (token.kind === "str") return token.text;
    if (token.kind === "ident") return lookup(token.text, ctx);
    if (token.text === "!") return !truthy(primary());
    if (token.text === "(") {
      const value = or();
      if (tokens[i++]?.text !== ")") throw new Error(`workflow runner: missing ) in ${JSON.stringify(source)}`);
      return value;
    }
    throw new Error(`workflow runner: unexpected ${token.text} in ${JSON.stringify(source)}`);
  };
  const comparison = (): string | boolean => {
    const left = primary();
    const op = peek();
    if (op?.text === "==" || op?.text === "!=") {
      i++;
      const right = primary();
      return op.text === "==" ? String(left) === String(right) : String(left) !== String(right);
    }
    return left;
  };
  // Left to right; like JavaScript, && and || give one of their operands.
  type Value = string | boolean;
  const binary =
    (op: "&&" | "||", next: () => Value, pick: (left: Value, right: Value) => Value) =>
    (): Value => {
      let value = next();
      while (peek()?.text === op) {
        i++;
        value = pick(value, next());
      }
      return value;
    };
  const and = binary("&&", comparison, (left, right) => (truthy(left) ? right : left));
  const or = binary("||", and, (left, right) => (truthy(left) ? left : right));
  const value = or();
  if (i !== tokens.length) throw new Error(`workflow runner: trailing input in ${JSON.stringify(source)}`);
  return value;
}

const truthy = (value: string | boolean) => value !== false && value !== "";

/** `${{ … }}` inside a string, as in `env:` values and `with:` inputs. */
export function substitute(text: string, ctx: Context): string {
  return text.replace(/\$\{\{(.*?)\}\}/g, (_, expr: string) => String(evaluate(expr, ctx)));
}

/** A step's `if:` (with or without `${{ }}`); no condition means `success()`. A status function anywhere replaces the implied success(). */
function shouldRun(step: WorkflowStep, ctx: Context): boolean {
  const raw = step.if?.trim().replace(/^\$\{\{(.*)\}\}$/s, "$1") ?? "success()";
  const value = truthy(evaluate(raw, ctx));
  const hasStatusCheck = /\b(success|failure|always|cancelled)\(\)/.test(raw);
  return hasStatusCheck ? value : value && ctx.status === "success";
}

function parseKeyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    if (line.includes("<<")) throw new Error(`workflow runner: multi-line GITHUB_* values are not supported: ${line}`);
    const eq = line.indexOf("=");
    if (eq < 1) throw new Error(`workflow runner: malformed line ${JSON.stringify(line)}`);
    out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

export async function runJob(workflow: Workflow, jobName: string, options: RunOptions): Promise<JobRun> {
  const job = workflow.jobs[jobName];
  if (!job) throw new Error(`workflow runner: no job ${jobName}`);
  const files = await mkdtemp(join(tmpdir(), "hd-runner-"));
  const runnerTemp = join(files, "tmp");
  await execa("mkdir", ["-p", runnerTemp]);
  const ctx: Context = { env: {}, secrets: options.secrets ?? {}, steps: {}, status: "success" };
  const exported: Record<string, string> = {};
  let extraPath = [...(options.path ?? [])];
  const results: StepResult[] = [];
  let summary = "";
  const workflowEnv = { ...workflow.env, ...options.env };
  const defaultShell = workflow.defaults?.run?.shell;

  for (const [index, step] of job.steps.entries()) {
    const name = step.name ?? step.uses ?? `step ${index + 1}`;
    // env visible to expressions: workflow, job, then values exported by earlier steps.
    ctx.env = { ...workflowEnv, ...job.env, ...exported };
    if (!shouldRun(step, ctx)) {
      results.push({ name, outcome: "skipped", stdout: "", stderr: "" });
      continue;
    }
    const stepEnv: Record<string, string> = { ...ctx.env };
    for (const [key, value] of Object.entries(step.env ?? {})) stepEnv[key] = substitute(String(value), ctx);
    if (step.uses) {
      await options.uses(step, stepEnv);
      results.push({ name, outcome: "success", stdout: "", stderr: "" });
      continue;
    }
    if (step.run === undefined) throw new Error(`workflow runner: step ${name} has neither run nor uses`);
    const shell = step.shell ?? defaultShell;
    if (shell !== "bash") throw new Error(`workflow runner: only shell: bash is supported (step ${name})`);
    const output = join(files, `output-${index}`);
    const envFile = join(files, `env-${index}`);
    const pathFile = join(files, `path-${index}`);
    const summaryFile = join(files, `summary-${index}`);
    const script = join(files, `step-${index}.sh`);
    await Promise.all([output, envFile, pathFile, summaryFile].map((file) => writeFile(file, "")));
    await writeFile(script, step.run);
    const result = await execa("bash", ["--noprofile", "--norc", "-eo", "pipefail", script], {
      cwd: options.workspace,
      env: {
        ...stepEnv,
        PATH: [...extraPath, process.env["PATH"] ?? ""].join(delimiter),
        HOME: process.env["HOME"] ?? files,
        CI: "true",
        GITHUB_ACTIONS: "true",
        GITHUB_WORKSPACE: options.workspace,
        GITHUB_OUTPUT: output,
        GITHUB_ENV: envFile,
        GITHUB_PATH: pathFile,
        GITHUB_STEP_SUMMARY: summaryFile,
        RUNNER_TEMP: runnerTemp,
      },
      // The runner's own environment (NIX_CONFIG of the test setup among it), then the job's.
      extendEnv: true,
      reject: false,
      stdin: "ignore",
    });
    summary += await readFile(summaryFile, "utf8");
    Object.assign(exported, parseKeyValues(await readFile(envFile, "utf8")));
    const added = (await readFile(pathFile, "utf8")).split("\n").filter(Boolean);
    extraPath = [...added.reverse(), ...extraPath];
    if (step.id) ctx.steps[step.id] = { outputs: parseKeyValues(await readFile(output, "utf8")) };
    const ok = result.exitCode === 0;
    results.push({ name, outcome: ok ? "success" : "failure", exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) });
    if (!ok) ctx.status = "failure";
  }
  const outputs = Object.fromEntries(Object.entries(ctx.steps).map(([id, step]) => [id, step.outputs]));
  return { status: ctx.status, steps: results, summary, outputs };
}
