/**
 * `npm run demo`: homelab-deploy end to end on this machine, with nothing
 * from the network. Starts a local nats-server with the plan's NKey users
 * and permissions, a builder on the bundled demo flake
 * (examples/demo-flake), asks it to build every host with the real CLI,
 * prints the result, and cleans up.
 */
import { spawn, spawnSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CLI } from "../test/support/cli.js";
import { startBuilder } from "../test/support/daemon.js";
import { createFixtureFlake } from "../test/support/flake.js";
import { startNatsServer } from "../test/support/nats-server.js";

const here = dirname(fileURLToPath(import.meta.url));
const say = (line: string) => process.stdout.write(`\x1b[1m==> ${line}\x1b[0m\n`);

function requireTools(): void {
  const missing = ["nats-server", "nix", "git"].filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  if (missing.length === 0) return;
  process.stderr.write(
    `The demo needs ${missing.join(", ")}. On Debian/Ubuntu run \`sudo bash .ci/setup\` (installs nats-server and nix-bin);\n` +
      "elsewhere install nats-server and nix (with flakes) from your system's packages.\n",
  );
  process.exit(2);
}

async function main(): Promise<number> {
  requireTools();
  // Offline and without a sandbox: the demo's derivations use /bin/sh.
  process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");

  say("starting a local nats-server with the plan's DEPLOY account (builder, deployers, scheduler)");
  const nats = await startNatsServer();
  say(`nats-server listening on ${nats.url}`);

  say("creating the demo flake as a git repo (three hosts: web01, db01, monitor01)");
  const flake = await createFixtureFlake(join(here, "demo-flake"));

  say("starting the builder daemon");
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { demo: flake.url },
    build: { timeout: "5m" },
  });
  const ready = builder.logs.find((l) => l.msg === "connected to NATS");
  say(`builder connected as NKey user ${String(ready?.user)} and listening on build.>`);
  const metrics = builder.logs.find((l) => l.msg === "metrics server listening");
  say(`builder metrics on ${String(metrics?.url)} (also /healthz, /readyz)`);

  say("homelab-deploy build demo all   (as the test deployer)");
  const code = await new Promise<number>((resolve) => {
    const client = spawn(process.execPath, [CLI, "build", "demo", "all"], {
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile },
    });
    client.once("exit", (exitCode) => resolve(exitCode ?? 1));
  });

  say("stopping the builder (SIGTERM) and nats-server");
  const logFile = join(nats.dir, "builder.log");
  await builder.stop();
  await writeFile(logFile, builder.output());
  await nats.stop("SIGTERM");
  say(`done: the client exited ${code}. Builder log: ${logFile}; builder config: ${builder.configFile}`);
  return code;
}

process.exit(await main());
