/**
 * examples/flake-update-safe.yaml, run for real: its steps' scripts under
 * bash as a runner runs them (test/support/workflow-runner.ts), against a
 * real nats-server and builder, on a flake repo whose input update either
 * keeps every host building or breaks one. Only the checkout (an action) is
 * done by the test, as actions/checkout would: a clone of the "forge's"
 * bare repo on the base branch.
 */
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { CLI, ROOT, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { nixSystem } from "../support/flake.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { runJob, type JobRun, type Workflow } from "../support/workflow-runner.js";

const run = promisify(execFile);
const WORKFLOW_FILE = join(ROOT, "examples", "flake-update-safe.yaml");
const JOB = "flake-update";
const BASE = "master";
const UPDATE = "flake-update";

async function git(dir: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("git", ["-C", dir, "-c", "user.name=test", "-c", "user.email=test@example.org", ...args]);
  return stdout.trim();
}

interface Forge {
  /** The bare repo the workflow pushes to and the builder fetches from. */
  origin: string;
  dep: string;
  setDep(mode: string): Promise<void>;
  head(branch: string): Promise<string | null>;
}

/** A flake repo with a locked local input, published as a bare repo (the forge). */
async function createForge(): Promise<Forge> {
  const dir = await mkdtemp(join(tmpdir(), "hd-forge-"));
  await chmod(dir, 0o755);
  const dep = join(dir, "dep");
  const work = join(dir, "work");
  const origin = join(dir, "origin.git");
  await mkdir(dep);
  await run("git", ["init", "-q", "-b", "main", dep]);
  let toolVersion = 0;
  const setDep = async (mode: string) => {
    // A nonce, so every mode really builds instead of coming from the store.
    await writeFile(join(dep, "mode"), `${mode} ${randomBytes(6).toString("hex")}\n`);
    // And a new version of the package every host depends on: tool-1.0, tool-1.1, …
    await writeFile(join(dep, "tool-version"), `1.${toolVersion++}\n`);
    await git(dep, "add", "-A");
    await git(dep, "commit", "-q", "-m", mode);
  };
  await setDep("good");
  await mkdir(work);
  const template = await readFile(join(ROOT, "test", "fixtures", "update-flake", "flake.nix"), "utf8");
  await writeFile(join(work, "flake.nix"), template.replaceAll("@SYSTEM@", nixSystem).replaceAll("@DEP@", dep));
  await run("git", ["init", "-q", "-b", BASE, work]);
  await git(work, "add", "-A");
  await git(work, "commit", "-q", "-m", "flake");
  await run("nix", ["flake", "lock"], { cwd: work });
  await git(work, "add", "flake.lock");
  await git(work, "commit", "-q", "-m", "flake.lock");
  await run("git", ["clone", "-q", "--bare", work, origin]);
  return {
    origin,
    dep,
    setDep,
    async head(branch) {
      try {
        return await git(origin, "rev-parse", "--verify", "-q", `refs/heads/${branch}`);
      } catch {
        return null;
      }
    },
  };
}

describe("examples/flake-update-safe.yaml", () => {
  let nats: NatsServer;
  let builder: BuilderProcess;
  let forge: Forge;
  let workflow: Workflow;
  let toolsDir: string;

  beforeAll(async () => {
    workflow = parseYaml(await readFile(WORKFLOW_FILE, "utf8")) as Workflow;
    [nats, forge] = await Promise.all([startNatsServer(), createForge()]);
    builder = await startBuilder({
      natsUrl: nats.url,
      seedFile: nats.identities.builder.seedFile,
      repos: { "nixos-servers": `git+file://${forge.origin}` },
    });
    // The runner's homelab-deploy: this checkout's CLI.
    toolsDir = await mkdtemp(join(tmpdir(), "hd-tools-"));
    await writeFile(join(toolsDir, "homelab-deploy"), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} "$@"\n`, { mode: 0o755 });
  });

  afterAll(async () => {
    await builder?.stop();
    await nats?.stop();
  });

  async function runWorkflow(): Promise<JobRun> {
    const workspace = await mkdtemp(join(tmpdir(), "hd-workspace-"));
    return runJob(workflow, JOB, {
      workspace,
      env: { HOMELAB_DEPLOY_NATS_URL: nats.url },
      // The scheduler's permissions are what the docs give the CI user.
      secrets: { HOMELAB_DEPLOY_NKEY_SEED: nats.identities.scheduler.seed },
      path: [toolsDir],
      async uses(step, env) {
        expect(step.uses).toMatch(/^actions\/checkout@/);
        expect(step.with?.["ref"]).toBe("${{ env.BASE_BRANCH }}");
        await run("git", ["clone", "-q", "--branch", env["BASE_BRANCH"] as string, forge.origin, workspace]);
      },
    });
  }

  const outcomes = (job: JobRun) => Object.fromEntries(job.steps.map((step) => [step.name, step.outcome]));
  const explain = (job: JobRun) => job.steps.map((s) => `${s.name}: ${s.outcome}\n${s.stdout}\n${s.stderr}`).join("\n---\n");

  it("builds every host from the update branch, then fast-forwards master to exactly that commit", async () => {
    const before = await forge.head(BASE);
    // The scheduled build of master, which the update's changes are compared with.
    const master = await runCli(["build", "nixos-servers", "all"], {
      HOMELAB_DEPLOY_NATS_URL: nats.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile,
    });
    expect(master.exitCode, master.stdout + master.stderr).toBe(0);
    await forge.setDep("good");
    const job = await runWorkflow();
    expect(job.status, explain(job)).toBe("success");
    const sha = job.outputs["update"]?.["sha"];
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    expect(await forge.head(UPDATE)).toBe(sha);
    expect(await forge.head(BASE)).toBe(sha);
    expect(await git(forge.origin, "rev-parse", `${sha}^`)).toBe(before);
    expect(await git(forge.origin, "diff", "--name-only", before as string, sha as string)).toBe("flake.lock");
    expect(job.summary).toContain(`### flake.lock update: success, revision \`${sha}\``);
    expect(job.summary).toMatch(/^\| alpha \| success \| \d+s \| \/nix\/store\/[a-z0-9]{32}-alpha \|$/m);
    expect(job.summary).toMatch(/^\| beta \| success \| \d+s \| \/nix\/store\/[a-z0-9]{32}-beta \|$/m);
    expect(job.summary).toContain(`Every host built; master is now at \`${sha}\`.`);
    for (const host of ["alpha", "beta"]) {
      expect(job.summary).toContain(`<details><summary>${host}: 1 package changed since \`${before}\`</summary>\n\n- tool: 1.0 → 1.1\n</details>`);
    }
  });

  it("does nothing when flake.lock is already up to date", async () => {
    const before = await forge.head(BASE);
    const job = await runWorkflow();
    expect(job.status, explain(job)).toBe("success");
    expect(job.outputs["update"]?.["changed"]).toBe("false");
    expect(outcomes(job)).toMatchObject({
      "Build every host from the update branch": "skipped",
      "Fast-forward the base branch": "skipped",
    });
    expect(await forge.head(BASE)).toBe(before);
    expect(job.summary).toContain("flake.lock is up to date: nothing to build");
  });

  it("leaves master alone, keeps the branch and fails with every host's result when a host does not build", async () => {
    const before = await forge.head(BASE);
    await forge.setDep("broken");
    const job = await runWorkflow();
    expect(job.status).toBe("failure");
    expect(outcomes(job)).toMatchObject({
      "Update flake.lock on the update branch": "success",
      "Build every host from the update branch": "failure",
      "Fast-forward the base branch": "skipped",
    });
    const build = job.steps.find((s) => s.name === "Build every host from the update branch");
    expect(build?.exitCode).toBe(1);
    expect(build?.stdout).toContain("::error::not every host built (homelab-deploy exit code 1); master stays, flake-update is left for a look");
    const sha = job.outputs["update"]?.["sha"];
    expect(await forge.head(BASE)).toBe(before);
    expect(await forge.head(UPDATE)).toBe(sha);
    expect(job.summary).toContain(`### flake.lock update: failure, revision \`${sha}\``);
    expect(job.summary).toMatch(/^\| alpha \| success \| \d+s \| \/nix\/store\/[a-z0-9]{32}-alpha \|$/m);
    expect(job.summary).toMatch(/^\| beta \| failure \| \d+s \| .*beta.* \|$/m);
    expect(job.summary).toContain("<details><summary>beta: end of the nix log</summary>");
    expect(job.summary).toContain("beta: the update broke me");
    expect(job.summary).not.toContain("Every host built");
  });

  it("summarises a rejected request (the builder's real answer) with the builder's reason", async () => {
    const rejected = await runCli(["build", "no-such-repo", "all", "--json"], {
      HOMELAB_DEPLOY_NATS_URL: nats.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile,
    });
    expect(rejected.exitCode).toBe(2);
    const step = workflow.jobs[JOB]?.steps.find((s) => s.name === "Build every host from the update branch");
    const filter = step?.env?.["SUMMARY_JQ"] as string;
    const input = join(await mkdtemp(join(tmpdir(), "hd-jq-")), "build.jsonl");
    await writeFile(input, rejected.stdout);
    const { stdout } = await run("jq", ["-rs", filter, input]);
    expect(stdout).toContain("### flake.lock update: rejected by the builder");
    expect(stdout).toContain("unknown repo no-such-repo");
    expect(stdout).toContain("nixos-servers");
    // No answer at all (no builder): an empty file.
    await writeFile(input, "");
    expect((await run("jq", ["-rs", filter, input])).stdout).toContain("no answer from the builder");
  });
});
