/**
 * Nix's own distributed builds under the builder: with `builders` set (what
 * NixOS's nix.buildMachines writes to /etc/nix/machines) and no local build
 * slots, every derivation is built on a real remote builder over ssh-ng://
 * (Debian's sshd on loopback, test/support/sshd.ts), the results come back
 * into the builder's store, and the progress names the machine. An
 * unreachable remote builder is a host failure that names it.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jsonLines, runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { refusedPort } from "../support/ports.js";
import { startRemoteBuilder, type RemoteBuilder } from "../support/sshd.js";

const run = promisify(execFile);

let nats: NatsServer;
let flake: FixtureFlake;
let remote: RemoteBuilder;
const started: BuilderProcess[] = [];

function clientEnv(): Record<string, string> {
  return { HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
}

/**
 * A builder whose nix may build only on `machine` (max-jobs 0: no local
 * builds). One at a time: the test stops it before the next starts (else
 * both would answer).
 */
async function builderUsing(machine: string, sshOpts: string): Promise<BuilderProcess> {
  await Promise.all(started.splice(0).map((b) => b.stop()));
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { cache: flake.url },
    build: { timeout: "2m" },
    env: { NIX_CONFIG: `${process.env["NIX_CONFIG"] ?? ""}\nbuilders = ${machine}\nmax-jobs = 0`, NIX_SSHOPTS: sshOpts },
  });
  started.push(builder);
  return builder;
}

beforeAll(async () => {
  [nats, flake, remote] = await Promise.all([startNatsServer(), createFixtureFlake("cache-flake"), startRemoteBuilder()]);
}, 60_000);

afterAll(async () => {
  for (const builder of started) await builder.stop();
  await remote?.stop();
  await nats?.stop();
});

describe("nix remote builders", () => {
  it("build every derivation on the remote machine, say so in the progress, and land the result in the builder's store", async () => {
    const builder = await builderUsing(remote.machine, remote.sshOpts);
    await flake.bump();
    const result = await runCli(["build", "cache", "web", "--json"], clientEnv());
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    const messages = jsonLines(result.stdout);
    const finished = messages.find((m) => m.type === "host_finished") as Record<string, unknown>;
    expect(finished).toMatchObject({ host: "web", status: "success" });
    const storePath = finished.storePath as string;

    const building = messages.flatMap((m) => (m.type === "progress" && m.building ? [m.building as { drv: string; machine?: string }] : []));
    const machines = new Set(building.map((b) => b.machine ?? "(local)"));
    expect(machines, JSON.stringify(building)).toEqual(new Set([remote.url]));

    // Built there (it is in the remote store), and copied back here: the
    // builder's store, and so the cache it serves, has the whole closure.
    const remoteStore = `local?root=${remote.storeRoot}`;
    const there = await run("nix", ["path-info", "--store", remoteStore, "--recursive", storePath]);
    expect(there.stdout.split("\n").filter(Boolean)).toHaveLength(3);
    const here = await run("nix-store", ["--query", "--requisites", storePath]);
    expect(here.stdout.split("\n").filter(Boolean).sort()).toEqual(there.stdout.split("\n").filter(Boolean).sort());
    await builder.stop();
  }, 240_000);

  it("end in a host failure that names an unreachable remote builder", async () => {
    const closed = await refusedPort();
    const builder = await builderUsing(`${remote.url} ${remote.machine.split(" ").slice(1).join(" ")}`, `-p ${closed} -o BatchMode=yes -o ConnectTimeout=10`);
    await flake.bump();
    const result = await runCli(["build", "cache", "web"], clientEnv());
    expect(result.exitCode, result.stdout + result.stderr).toBe(1);
    const failed = result.stdout.split("\n").find((l) => l.startsWith("[1/1] web: failure in ")) ?? "";
    expect(failed).toContain(`: cannot build on '${remote.url}': error: cannot open connection to remote store '${remote.url}'`);
    // ssh's own reason is in the log tail below it.
    expect(result.stdout).toMatch(new RegExp(`port ${closed}: Connection refused`));
    await builder.stop();
  }, 240_000);
});
