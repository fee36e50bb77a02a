/**
 * build.copyTo with a real local binary cache (a file:// store): after a
 * host builds, its whole closure is in the cache, and another store
 * substitutes it from there. A copy that fails is a warning on a built
 * host, not a failed build.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jsonLines, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { metricsBaseUrl, scrape, valueOf } from "../support/metrics.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const run = promisify(execFile);

let nats: NatsServer;
let flake: FixtureFlake;
const started: BuilderProcess[] = [];

function clientEnv(): Record<string, string> {
  return { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
}

async function builderCopyingTo(copyTo: string): Promise<BuilderProcess> {
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { cache: flake.url },
    build: { copyTo, copyTimeout: "2m" },
  });
  started.push(builder);
  return builder;
}

/** The store path and every path it references, as nix sees it. */
async function closureOf(storePath: string): Promise<string[]> {
  const { stdout } = await run("nix-store", ["--query", "--requisites", storePath]);
  return stdout.split("\n").filter(Boolean);
}

beforeAll(async () => {
  [nats, flake] = await Promise.all([startNatsServer(), createFixtureFlake("cache-flake")]);
}, 60_000);

afterAll(async () => {
  for (const builder of started) await builder.stop();
  await nats?.stop();
});

describe("build.copyTo", () => {
  it("puts every built host's closure into a file:// binary cache that another store substitutes from", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-cache-"));
    const cache = join(dir, "cache");
    const builder = await builderCopyingTo(`file://${cache}`);
    await flake.bump();
    const result = await runCli(["build", "cache", "web", "--json"], clientEnv());
    expect(result.exitCode).toBe(0);
    const finished = jsonLines(result.stdout).find((m) => m.type === "host_finished") as Record<string, unknown>;
    expect(finished).toMatchObject({ host: "web", status: "success", copy: { ok: true } });
    const storePath = finished.storePath as string;

    const closure = await closureOf(storePath);
    expect(closure.length).toBe(3); // the toplevel, its package and its etc tree
    for (const path of closure) {
      const hash = basename(path).slice(0, 32);
      const narinfo = await readFile(join(cache, `${hash}.narinfo`), "utf8");
      expect(narinfo).toContain(`StorePath: ${path}`);
    }

    // A store with nothing in it (a chroot store under a temp dir, same
    // logical /nix/store) substitutes the toplevel and its closure from the cache.
    const root = join(dir, "other-store");
    await run("nix-store", [
      "--store", `local?root=${root}`,
      "--realise", storePath,
      "--option", "substituters", `file://${cache}`,
      "--option", "require-sigs", "false",
    ]);
    for (const path of closure) expect(existsSync(join(root, path)), `${path} substituted`).toBe(true);
    expect(await readFile(join(root, storePath, "sw"), "utf8")).toBe(await readFile(join(storePath, "sw"), "utf8"));

    const metrics = await scrape(await metricsBaseUrl(builder));
    expect(valueOf(metrics, "homelab_deploy_copy_total", { repo: "cache", result: "success" })).toBe(1);
    expect(valueOf(metrics, "homelab_deploy_copy_total", { repo: "cache", result: "failure" })).toBe(0);
    await builder.stop();
  }, 180_000);

  it("reports a copy that fails as a warning on a built host: exit 0, the store path, nix's reason", async () => {
    // Nothing can be created under /dev/null: nix copy fails at once.
    const builder = await builderCopyingTo("file:///dev/null/cache");
    await flake.bump();
    const json = await runCli(["build", "cache", "web", "--json"], clientEnv());
    expect(json.exitCode).toBe(0);
    const completed = jsonLines(json.stdout).find((m) => m.type === "completed") as Record<string, unknown>;
    expect(completed).toMatchObject({ status: "success" });
    const [host] = completed.results as Array<Record<string, unknown>>;
    expect(host).toMatchObject({ host: "web", status: "success", copy: { ok: false } });
    expect(host?.storePath).toMatch(/-nixos-system-web$/);
    expect((host?.copy as { error: string }).error).toMatch(/^copying to file:\/\/\/dev\/null\/cache: .*\/dev\/null.* not a directory/);

    await flake.bump();
    const plain = await runCli(["build", "cache", "web"], clientEnv());
    expect(plain.exitCode).toBe(0);
    expect(plain.stdout).toMatch(/^\[1\/1\] web: success in .* → \/nix\/store\/.*-nixos-system-web\n {4}warning: not in the shared cache: copying to file:\/\/\/dev\/null\/cache: /m);

    const metrics = await scrape(await metricsBaseUrl(builder));
    expect(valueOf(metrics, "homelab_deploy_copy_total", { repo: "cache", result: "failure" })).toBe(2);
    expect(valueOf(metrics, "homelab_deploy_build_host_total", { repo: "cache", host: "web", status: "success" })).toBe(2);
    // The journal's warning names the job, repo, host and store path, and nix's reason.
    expect(builder.logs).toContainEqual(
      expect.objectContaining({ level: 40, repo: "cache", host: "web", jobId: expect.any(String), storePath: expect.stringMatching(/-nixos-system-web$/), err: expect.any(String) }),
    );
  }, 180_000);
});
