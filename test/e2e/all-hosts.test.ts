/**
 * Target `all`: every host evaluated once (by the worker pool, see
 * test/e2e/fleet-eval.test.ts), its .drv paths reused for an unchanged
 * revision (across a restart too), and a host that does not evaluate
 * costing only itself, whatever kind of error it is.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cleanupsAfterEach } from "../support/cleanups.js";
import { jsonLines, runCli } from "../support/cli.js";
import { spawnBuilder, startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake } from "../support/flake.js";
import { startNatsServer } from "../support/nats-server.js";

const cleanups = cleanupsAfterEach();
async function setup(fixture: string) {
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const flake = await createFixtureFlake(fixture);
  let builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url } });
  cleanups.push(() => builder.stop("SIGKILL"));
  const env = { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile };
  const buildAll = async () => {
    const result = await runCli(["build", "fixture", "all", "--json"], env);
    return { exitCode: result.exitCode, final: jsonLines(result.stdout).at(-1) as unknown as { status: string; results: Array<Record<string, unknown>> } };
  };
  const restart = async (): Promise<BuilderProcess> => {
    await builder.stop();
    builder = await spawnBuilder(builder.configFile);
    return builder;
  };
  return { flake, buildAll, restart, builder: () => builder };
}

const logged = (builder: BuilderProcess, msg: string) => builder.logs.filter((l) => l.msg === msg);

describe("target all", () => {
  it("evaluates every host once, then reuses the .drv paths for the same revision, also after a restart", async () => {
    const { flake, buildAll, restart, builder } = await setup("tiny-flake");
    await flake.bump();
    const first = await buildAll();
    expect(first.exitCode).toBe(0);
    expect(first.final.results.map((r) => r.status)).toEqual(["success", "success"]);
    const [evaluation] = logged(builder(), "evaluated every host");
    expect(evaluation).toMatchObject({ hosts: 2, failed: [] });

    expect((await buildAll()).exitCode).toBe(0);
    expect(logged(builder(), "evaluated every host")).toHaveLength(1);
    expect(logged(builder(), "every host's toplevel .drv is known from an earlier evaluation of this revision")).toHaveLength(1);

    const stateDir = JSON.parse(await readFile(builder().configFile, "utf8")).stateDir as string;
    const saved = JSON.parse(await readFile(join(stateDir, "toplevels.json"), "utf8")) as { nix: string; entries: Array<[string, Record<string, string>]> };
    expect(saved.nix).toMatch(/^nix \(Nix\) /);
    expect(Object.keys(saved.entries[0]?.[1] ?? {})).toEqual(["a", "b"]);

    const restarted = await restart();
    expect((await buildAll()).exitCode).toBe(0);
    expect(logged(restarted, "evaluated every host")).toHaveLength(0);
    expect(logged(restarted, "every host's toplevel .drv is known from an earlier evaluation of this revision")).toHaveLength(1);

    // A new revision is evaluated again.
    await flake.bump();
    expect((await buildAll()).exitCode).toBe(0);
    expect(logged(restarted, "evaluated every host")).toHaveLength(1);
  });

  it("reports a host whose evaluation throws (a failed NixOS assertion) with nix's message, and builds the others", async () => {
    const { flake, buildAll, builder } = await setup("tiny-flake");
    await flake.editFlake((text) =>
      text.replace("b = host \"b\";", 'b = host "b";\n        asserted.config.system.build.toplevel = throw "Failed assertions:\\n- services.nginx needs a virtual host";'),
    );
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(1);
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["a"]).toMatchObject({ status: "success" });
    expect(byHost["b"]).toMatchObject({ status: "success" });
    expect(byHost["asserted"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^Failed assertions:\n\s*- services\.nginx needs a virtual host/) });
    expect(logged(builder(), "evaluated every host")[0]).toMatchObject({ failed: ["asserted"] });
  });

  it("a host whose evaluation fails with an error other than throw (a missing attribute) costs only that host", async () => {
    const { flake, buildAll, builder } = await setup("progress-flake");
    await flake.bump();
    const { exitCode, final } = await buildAll();
    expect(exitCode).toBe(1);
    expect(logged(builder(), "evaluated every host")[0]).toMatchObject({ failed: ["evalfail"] });
    const byHost = Object.fromEntries(final.results.map((r) => [r.host, r]));
    expect(byHost["multi"]).toMatchObject({ status: "success" });
    expect(byHost["failing"]).toMatchObject({ status: "failure" });
    expect(byHost["evalfail"]).toMatchObject({ status: "eval_error", error: expect.stringMatching(/^attribute 'services' missing/) });
  });
});
