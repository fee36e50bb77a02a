/** `homelab-deploy listener` as an operator meets it: help, config errors, start-up and SIGTERM. */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CLI, runCli } from "../support/cli.js";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { spawnBuilder } from "../support/daemon.js";
import { startNatsServer } from "../support/nats-server.js";

const cleanups = cleanupsAfterEach();

describe("homelab-deploy listener", () => {
  it("has --help and needs --config", async () => {
    const help = await runCli(["listener", "--help"]);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("--config <file>");
    expect(help.stdout).toContain("HOMELAB_DEPLOY_LISTENER_CONFIG");
    expect((await runCli(["listener"])).exitCode).toBe(2);
  });

  it("refuses a bad config with each key's path and exit code 2", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-listener-cli-"));
    const file = join(dir, "listener.yaml");
    await writeFile(file, ["tier: Prod", "host: all", "repo: {name: x, url: nixpkgs}", "nats: {url: 'nats://127.0.0.1:4222', nkeySeedFile: /x}", "stateDir: /tmp/x", "rollback: maybe", ""].join("\n"));
    const result = await runCli(["listener", "--config", file]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`invalid config ${file}:`);
    for (const key of ["host:", "tier:", "repo.url:", "rollback:"]) expect(result.stderr).toContain(`\n  ${key}`);
  });

  it("starts, says which subjects it takes, and stops on SIGTERM with exit code 0", async () => {
    const nats = await startNatsServer();
    cleanups.push(() => nats.stop());
    const dir = await mkdtemp(join(tmpdir(), "hd-listener-cli-"));
    const configFile = join(dir, "listener.json");
    await writeFile(
      configFile,
      JSON.stringify({
        host: "web1",
        tier: "test",
        roles: ["web", "edge"],
        repo: { name: "systems", url: `git+file://${dir}/none` },
        nats: { url: nats.url, nkeySeedFile: nats.identities.testListener.seedFile },
        stateDir: join(dir, "state"),
        metrics: { listen: "127.0.0.1:0" },
        system: { profile: join(dir, "system"), current: join(dir, "current"), booted: join(dir, "booted") },
      }),
    );
    const listener = await spawnBuilder(configFile, {}, { command: [process.execPath, CLI, "listener", "--config", configFile], readyMessage: "listener ready" });
    cleanups.push(() => listener.stop("SIGKILL"));
    const ready = listener.logs.find((l) => l.msg === "listener ready");
    expect(ready?.["subjects"]).toEqual(["deploy.test.web1", "deploy.test.all", "deploy.test.role.web", "deploy.test.role.edge", "deploy.discover"]);
    const port = String((await listener.waitForLog((l) => l.msg === "metrics server listening"))["port"]);
    const readyz = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(readyz.status).toBe(200);
    const report = (await readyz.json()) as { checks: Record<string, unknown> };
    expect(report).toMatchObject({ ready: true, checks: { nats: { ok: true }, nix: { ok: true }, listener: { ok: true, detail: "accepting deploys" } } });
    expect(report.checks).not.toHaveProperty("builder");
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    expect(await listener.stop("SIGTERM")).toMatchObject({ code: 0 });
    expect(listener.logs.map((l) => l.msg)).toContain("stopped");
  }, 60_000);
});
