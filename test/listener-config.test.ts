import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../src/errors.js";
import { DEFAULT_HEALTH_COMMAND, defaultHost, loadListenerConfig, parseListenerConfig } from "../src/listener-config.js";
import { ROOT } from "./support/cli.js";

const base = {
  tier: "test",
  repo: { name: "nixos-servers", url: "git+https://git.example.org/nixos-servers.git" },
  nats: { url: "nats://127.0.0.1:4222", nkeySeedFile: "/run/keys/listener.nk" },
  stateDir: "/var/lib/homelab-deploy-listener",
};

function problems(raw: unknown): string[] {
  try {
    parseListenerConfig(raw, "listener.yaml", {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error("expected the config to be rejected");
}

describe("listener config", () => {
  it("accepts examples/listener.example.yaml as shipped", async () => {
    const config = await loadListenerConfig(join(ROOT, "examples", "listener.example.yaml"));
    expect(config).toMatchObject({ host: "web1", tier: "test", roles: ["web"], rollback: true, selfUnit: "/etc/systemd/system/homelab-deploy-listener.service" });
    expect(config.health).toEqual({ commands: [DEFAULT_HEALTH_COMMAND], timeout: 120_000, confirmTimeout: 90_000 });
  });

  it("fills in the defaults", () => {
    const config = parseListenerConfig(base, "listener.yaml", {});
    expect(config.host).toBe(defaultHost());
    expect(config.roles).toEqual([]);
    expect(config.metrics.listen).toEqual({ host: "127.0.0.1", port: 9972 });
    expect(config.health).toEqual({ commands: [["systemctl", "is-system-running", "--wait"]], timeout: 120_000, confirmTimeout: 90_000 });
    expect(config.rollback).toBe(true);
    expect(config.system).toEqual({ profile: "/nix/var/nix/profiles/system", current: "/run/current-system", booted: "/run/booted-system" });
    expect(config.selfUnit).toBeUndefined();
    expect(config.heartbeatInterval).toBe(30_000);
  });

  it("refuses a heartbeat interval that a deployer's idle timeout would take for a dead listener, as the builder's", () => {
    expect(parseListenerConfig({ ...base, heartbeatInterval: "1m" }, "listener.yaml", {}).heartbeatInterval).toBe(60_000);
    expect(problems({ ...base, heartbeatInterval: "3m" })).toEqual([
      "heartbeatInterval: must be at most 1m: clients give up after 2m without a message (their default --idle-timeout), so a longer interval makes every quiet build or deploy look dead",
    ]);
  });

  it("takes stateDir from systemd's STATE_DIRECTORY and the Vault address from VAULT_ADDR", () => {
    const { stateDir: _stateDir, nats, ...rest } = base;
    const config = parseListenerConfig(
      { ...rest, nats: { url: nats.url }, vault: { roleIdFile: "/r", secretIdFile: "/s", secretPath: "shared/homelab-deploy/listener-test-nkey" } },
      "listener.yaml",
      { STATE_DIRECTORY: "/var/lib/x", VAULT_ADDR: "https://vault.example.org:8200" },
    );
    expect(config.stateDir).toBe("/var/lib/x");
    expect(config.vault).toMatchObject({ address: "https://vault.example.org:8200", secretPath: "shared/homelab-deploy/listener-test-nkey" });
  });

  it("refuses bad tiers, hosts, roles and repos with their key paths", () => {
    expect(problems({ ...base, tier: "Prod" })[0]).toMatch(/^tier: expected a tier of lower-case letters/);
    expect(problems({ ...base, tier: "responses" })[0]).toMatch(/^tier: /);
    expect(problems({ ...base, host: "all" })[0]).toMatch(/^host: .*not "all"/);
    expect(problems({ ...base, host: "a;b" })[0]).toMatch(/^host: /);
    expect(problems({ ...base, roles: ["web", "$(id)"] })[0]).toMatch(/^roles\.1: /);
    expect(problems({ ...base, repo: { name: "discover", url: base.repo.url } })[0]).toMatch(/^repo\.name: /);
    expect(problems({ ...base, repo: { name: "x", url: "nixpkgs" } })[0]).toMatch(/^repo\.url: expected a flake URL/);
  });

  it("needs exactly one seed source, a vault secretPath, absolute paths and argv health commands", () => {
    expect(problems({ ...base, nats: { url: base.nats.url } })).toEqual([expect.stringMatching(/^nats\.nkeySeedFile: required unless a vault block is given/)]);
    const vault = { address: "https://vault.example.org:8200", roleIdFile: "/r", secretIdFile: "/s" };
    expect(problems({ ...base, nats: { url: base.nats.url }, vault })).toEqual([expect.stringMatching(/^vault\.secretPath: /)]);
    expect(problems({ ...base, stateDir: "state" })).toEqual(["stateDir: expected an absolute path"]);
    expect(problems({ ...base, system: { current: "run/current-system" } })).toEqual(["system.current: expected an absolute path"]);
    expect(problems({ ...base, health: { commands: ["systemctl is-system-running"] } })[0]).toMatch(/^health\.commands\.0: /);
    expect(problems({ ...base, health: { commands: [[]] } })[0]).toMatch(/^health\.commands\.0: /);
    expect(problems({ ...base, nats: { ...base.nats, queueGroup: "x" } })).toEqual(["nats.queueGroup: unknown key"]);
    expect(problems({ ...base, colour: "blue" })).toEqual(["colour: unknown key"]);
  });
});
