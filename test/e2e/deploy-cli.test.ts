/** `homelab-deploy deploy` as a user meets it before any listener answers: help, bad arguments, no listener, no NATS (all exit 2). */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

let nats: NatsServer;

beforeAll(async () => {
  nats = await startNatsServer();
});

afterAll(async () => {
  await nats?.stop();
});

const env = () => ({ HOMELAB_DEPLOY_NATS_URL: nats.url, HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile, HOMELAB_DEPLOY_ACK_TIMEOUT: "2s" });

describe("homelab-deploy deploy", () => {
  it("has --help with its flags and the client's connection flags", async () => {
    const help = await runCli(["deploy", "--help"]);
    expect(help.exitCode).toBe(0);
    for (const flag of ["--action <action>", "--ref <ref>", "--json", "--list", "--build", "--no-prebuilt", "--nats-url <url>", "--nkey-seed-file <file>", "--vault-role-id-file <file>", "--idle-timeout <duration>"]) {
      expect(help.stdout).toContain(flag);
    }
    expect((await runCli(["--help"])).stdout).toMatch(/deploy \[options\] \[tier\] \[target\]/);
  });

  it.each([
    [["deploy"], "deploy needs <tier> and <target>"],
    [["deploy", "Prod", "all"], 'invalid tier "Prod"'],
    [["deploy", "test", "web1;reboot"], 'invalid target "web1;reboot"'],
    [["deploy", "test", "role:a.b"], 'invalid role name "a.b"'],
    [["deploy", "test", "all", "--ref", "--bad"], 'invalid ref "--bad"'],
    [["deploy", "test", "all", "--build", "--no-prebuilt"], "cannot be combined with --no-prebuilt"],
    [["deploy", "--list", "test", "extra"], "--list takes at most one argument"],
  ])("refuses %j with a clear message and exit 2, before connecting", async (args, message) => {
    const result = await runCli(args, { HOMELAB_DEPLOY_NATS_URL: "nats://127.0.0.1:1", HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
  });

  it("--action takes only the four actions", async () => {
    const result = await runCli(["deploy", "test", "all", "--action", "reboot"], env());
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/argument 'reboot' is invalid. Allowed choices are switch, boot, test, dry-activate/);
  });

  it("says so when no listener answers (exit 2), for a deploy and for --list", async () => {
    const deploy = await runCli(["deploy", "test", "all"], env());
    expect(deploy.exitCode).toBe(2);
    expect(deploy.stderr).toMatch(/no listener is listening on deploy\.discover|no listener answered on deploy\.discover/);
    const list = await runCli(["deploy", "--list"], env());
    expect(list.exitCode).toBe(2);
    expect(list.stderr).toMatch(/no listener/);
  });

  it("says so when NATS cannot be reached (exit 2)", async () => {
    const result = await runCli(["deploy", "test", "all"], { ...env(), HOMELAB_DEPLOY_NATS_URL: "nats://127.0.0.1:1" });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/cannot reach NATS at nats:\/\/127\.0\.0\.1:1/);
  });
});
