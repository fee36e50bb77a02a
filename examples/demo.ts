/**
 * `npm run demo`: homelab-deploy end to end on this machine, with nothing
 * from the network. Starts a local nats-server with the plan's NKey users
 * and permissions, a builder on the bundled demo flake (examples/demo-flake:
 * three NixOS-shaped hosts) that copies what it builds to a signed
 * `file://` binary cache, and one deploy listener per host (tier `test`,
 * each with a nix store of its own that trusts only that cache, its system
 * links in a temp dir). Then, with the real CLI: `build demo all`,
 * `deploy test all` (prebuilt: the listeners fetch the builder's closures
 * and evaluate nothing) and `deploy --list`. Everything it started and
 * every temp dir is gone when it exits, with the deploy's exit code. The
 * set-up is the deploy tests' (test/support/listener.ts).
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CLI } from "../test/support/cli.js";
import { createFixtureFlake } from "../test/support/flake.js";
import { createListener, startDeployFixture, type DeployFixture, type ListenerHost } from "../test/support/listener.js";

const here = dirname(fileURLToPath(import.meta.url));
const HOSTS = ["web01", "db01", "monitor01"];
const ROLES: Record<string, string[]> = { web01: ["web"], db01: ["db"], monitor01: ["monitoring"] };
const say = (line: string) => process.stdout.write(`\x1b[1m==> ${line}\x1b[0m\n`);

function requireTools(): void {
  const missing = ["nats-server", "nix", "nix-store", "git"].filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  if (missing.length === 0) return;
  process.stderr.write(
    `The demo needs ${missing.join(", ")}. On Debian/Ubuntu run \`sudo bash .ci/setup\` (installs nats-server and nix-bin);\n` +
      "elsewhere install nats-server and nix (with flakes) from your system's packages.\n",
  );
  process.exit(2);
}

/** The real CLI, its output straight to ours; resolves with its exit code. */
function cli(args: string[], env: Record<string, string>): Promise<number> {
  say(`homelab-deploy ${args.join(" ")}`);
  return new Promise<number>((resolve) => {
    const client = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, ...env } });
    client.once("exit", (code) => resolve(code ?? 1));
  });
}

/** A listener's nix store holds read-only paths: make them writable so the dir can go. */
async function removeDir(dir: string): Promise<void> {
  spawnSync("chmod", ["-R", "u+w", dir]);
  await rm(dir, { recursive: true, force: true });
}

async function main(): Promise<number> {
  requireTools();
  // Offline and without a sandbox: the demo's derivations use /bin/sh.
  process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");
  const dirs: string[] = [];
  const listeners: ListenerHost[] = [];
  let fixture: DeployFixture | undefined;
  let code = 1;
  try {
    say(`creating the demo flake as a git repo (${HOSTS.length} NixOS-shaped hosts: ${HOSTS.join(", ")})`);
    const flake = await createFixtureFlake(["system-flake", join(here, "demo-flake")]);
    dirs.push(flake.dir);

    say("starting a local nats-server with the plan's NKey users, a cache signing key, and the builder (copies to a file:// cache)");
    fixture = await startDeployFixture(flake, "demo");
    dirs.push(fixture.dir, fixture.nats.dir, dirname(fixture.builder.configFile));
    const logs = fixture.builder.logs;
    say(`nats-server on ${fixture.nats.url}; builder connected as NKey user ${String(logs.find((l) => l.msg === "connected to NATS")?.user)}, metrics on ${String(logs.find((l) => l.msg === "metrics server listening")?.url)}`);
    say(`the binary cache: file://${fixture.cache} (key ${fixture.publicKey.split(":")[0]})`);

    say("building what the hosts run now (the flake's first revision), then committing a new one");
    const running = await fixture.build(HOSTS);
    await flake.bump();

    for (const host of HOSTS) {
      const listener = await createListener(fixture, { host, tier: "test", roles: ROLES[host] ?? [] });
      dirs.push(listener.root);
      await listener.install(running[host] as string);
      await listener.start();
      listeners.push(listener);
      say(`listener ${host} (tier test, roles ${(ROLES[host] ?? []).join(",")}): running ${running[host]}; its profile and current/booted links in ${listener.root}`);
    }

    const deployer = { HOMELAB_DEPLOY_NATS_URL: fixture.nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: fixture.nats.identities.testDeployer.seedFile };
    say("as the test deployer (may publish build.> and deploy.test.>):");
    code = await cli(["build", "demo", "all"], deployer);
    if (code !== 0) return code;
    code = await cli(["deploy", "test", "all"], deployer);
    const listed = await cli(["deploy", "--list"], deployer);
    if (code === 0) code = listed;
    for (const [i, listener] of listeners.entries()) {
      const ran = (await listener.activations()).map(([action]) => action);
      say(`${HOSTS[i]}: its fixture switch-to-configuration ran: ${ran.join(", ") || "never"}; current -> ${String(await listener.current())}`);
    }
    return code;
  } catch (err) {
    process.stderr.write(`the demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    say("stopping the listeners, the builder and nats-server (SIGTERM), removing the temp dirs");
    for (const listener of listeners) await listener.process?.stop("SIGTERM");
    await fixture?.builder.stop();
    await fixture?.nats.stop("SIGTERM");
    if (code !== 0) {
      // Something went wrong: keep what the daemons said.
      const kept = await mkdtemp(join(tmpdir(), "hd-demo-logs-"));
      if (fixture) await writeFile(join(kept, "builder.log"), fixture.builder.output());
      for (const [i, listener] of listeners.entries()) await writeFile(join(kept, `listener-${HOSTS[i]}.log`), listener.process?.output() ?? "");
      say(`the daemons' logs: ${kept}`);
    }
    for (const dir of dirs) await removeDir(dir);
    say(`done: exit ${code}`);
  }
}

process.exit(await main());
