import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defaultEvalWorkers, loadConfig, parseConfig } from "../src/config.js";
import { ConfigError } from "../src/errors.js";
import { ROOT } from "./support/cli.js";

const base = {
  nats: { url: "nats://127.0.0.1:4222", nkeySeedFile: "/run/keys/builder.nk" },
  repos: { "nixos-servers": { url: "git+https://git.example.org/infra/nixos-servers.git" } },
  stateDir: "/var/lib/homelab-deploy",
};

const vaultBased = {
  nats: { url: "nats://127.0.0.1:4222" },
  vault: {
    address: "https://vault.example.org:8200",
    roleIdFile: "/var/lib/vault/approle/role-id",
    secretIdFile: "/var/lib/vault/approle/secret-id",
  },
  repos: base.repos,
  stateDir: base.stateDir,
};

function problems(raw: unknown): string[] {
  try {
    parseConfig(raw, "test.yaml", {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error("expected the config to be rejected");
}

describe("config", () => {
  it("accepts config.example.yaml as shipped", async () => {
    const config = await loadConfig(join(ROOT, "config.example.yaml"));
    expect(Object.keys(config.repos)).toEqual(["nixos-servers", "nixos"]);
    expect(config.repos["nixos-servers"]?.url).toBe("git+https://git.example.org/infra/nixos-servers.git");
    expect(config.build).toMatchObject({ timeout: 3_600_000, maxQueue: 32, logTailLines: 50, keepGenerations: 2, keepRefBuilds: 604_800_000, historySize: 50 });
    expect(config.metrics.listen).toEqual({ host: "0.0.0.0", port: 9973 });
    expect(config.stateDir).toBe("/var/lib/homelab-deploy");
    // Production takes the seed from Vault, and the example spells out the defaults.
    expect(config.nats.nkeySeedFile).toBeUndefined();
    expect(config.vault).toMatchObject({ kvMount: "secret", secretPath: "shared/homelab-deploy/builder-nkey", secretField: "nkey", timeout: 10_000 });
  });

  it("fills in the documented defaults", () => {
    const config = parseConfig(base, "test.yaml");
    expect(config.build).toEqual({
      timeout: 3_600_000,
      fetchTimeout: 120_000,
      resolveTimeout: 600_000,
      maxQueue: 32,
      logTailLines: 50,
      keepGoing: true,
      killGrace: 3_000,
      heartbeatInterval: 30_000,
      nixBin: "nix",
      evalWorkers: defaultEvalWorkers(),
      evalMaxMemory: 2 * 1024 ** 3,
      keepGenerations: 2,
      keepRefBuilds: 7 * 86_400_000,
      historySize: 50,
      copyTimeout: 1_800_000,
      resume: true,
    });
    expect(config.log.level).toBe("info");
    expect(config.nats.queueGroup).toBeUndefined();
  });

  it("takes evalWorkers (default half the CPUs, 1 to 4) and evalMaxMemory as a size", () => {
    expect([1, 2, 3, 8, 16, 64].map((cpus) => defaultEvalWorkers(cpus))).toEqual([1, 1, 1, 4, 4, 4]);
    const config = parseConfig({ ...base, build: { evalWorkers: 3, evalMaxMemory: "512MiB" } }, "test.yaml");
    expect(config.build).toMatchObject({ evalWorkers: 3, evalMaxMemory: 512 * 1024 ** 2 });
    expect(parseConfig({ ...base, build: { evalMaxMemory: "1.5G" } }, "test.yaml").build.evalMaxMemory).toBe(1.5 * 1024 ** 3);
    expect(problems({ ...base, build: { evalMaxMemory: "lots" } })).toEqual(['build.evalMaxMemory: expected a size like 512MiB or 2GiB, got "lots"']);
    expect(problems({ ...base, build: { evalWorkers: 0 } })[0]).toMatch(/^build\.evalWorkers: /);
    expect(parseConfig({ ...base, build: { evalHostsPerWorker: 1 } }, "test.yaml").build.evalHostsPerWorker).toBe(1);
    expect(problems({ ...base, build: { evalHostsPerWorker: 0 } })[0]).toMatch(/^build\.evalHostsPerWorker: /);
  });

  it("takes a list of NATS URLs and durations with several units", () => {
    const config = parseConfig(
      { ...base, nats: { ...base.nats, url: ["nats://a:4222", "tls://b:4222"] }, build: { timeout: "1h30m", resolveTimeout: 90 } },
      "test.yaml",
    );
    expect(config.nats.url).toEqual(["nats://a:4222", "tls://b:4222"]);
    expect(config.build.timeout).toBe(5_400_000);
    expect(config.build.resolveTimeout).toBe(90_000);
  });

  it("names the key and what is wrong with it", () => {
    expect(problems({ ...base, repos: { "nixos-servers": { url: "not a url" } } })).toEqual([
      expect.stringMatching(/^repos\.nixos-servers\.url: expected a flake URL/),
    ]);
    expect(problems({ ...base, build: { timeout: "forever" } })).toEqual([
      'build.timeout: expected a duration like 30s, 10m or 1h, got "forever"',
    ]);
    expect(problems({ ...base, build: { maxQueue: 0 } })).toEqual([expect.stringMatching(/^build\.maxQueue: /)]);
    expect(problems({ ...base, log: { level: "loud" } })).toEqual([expect.stringMatching(/^log\.level: /)]);
    expect(problems({ ...base, nats: { ...base.nats, url: "http://x" } })).toEqual([
      expect.stringMatching(/^nats\.url: /),
    ]);
  });

  it("reports unknown keys by path instead of ignoring them", () => {
    expect(problems({ ...base, nats: { ...base.nats, nkeySeed: "SU..." }, bild: {} })).toEqual([
      "nats.nkeySeed: unknown key",
      "bild: unknown key",
    ]);
  });

  it("rejects repo names that cannot be subjects or collide with control subjects", () => {
    for (const name of ["responses", "discover", "status", "cancel", "history", "bad name", "a.b", "-x"]) {
      expect(problems({ ...base, repos: { [name]: { url: "github:a/b" } } })).toEqual([
        expect.stringMatching(new RegExp(`^repos\\.${name.replace(".", "\\.")}: invalid name`)),
      ]);
    }
    // The error names every reserved word, history (the newest control request) included.
    expect(problems({ ...base, repos: { history: { url: "github:a/b" } } })[0]).toMatch(/not one of responses, discover, status, cancel, history$/);
  });

  it("requires repos and an NKey source", () => {
    expect(problems({ nats: { url: base.nats.url }, repos: {}, stateDir: base.stateDir })).toEqual([
      "repos: expected at least one repo",
      "nats.nkeySeedFile: required unless a vault block is given: exactly one NKey source (nats.nkeySeedFile, or vault) must be configured",
    ]);
    expect(problems(null)).toEqual([
      "nats: required (expected object)",
      "repos: required (expected record)",
      expect.stringMatching(/^stateDir: required: the directory for the builder's state files/),
    ]);
  });

  it("requires nats.url instead of waiting for a NATS server on a default address", () => {
    const { url: _url, ...nats } = base.nats;
    expect(problems({ ...base, nats })).toEqual([
      "nats.url: required: the NATS server URL, like nats://nats.example.org:4222 (or a list of them)",
    ]);
  });

  it("takes stateDir from systemd's STATE_DIRECTORY when the config has none, and listens on loopback by default", () => {
    const { stateDir: _stateDir, ...noStateDir } = base;
    expect(problems(noStateDir)).toEqual([expect.stringMatching(/^stateDir: required: .*the NixOS module sets \/var\/lib\/homelab-deploy/)]);
    const config = parseConfig(noStateDir, "test.yaml", { STATE_DIRECTORY: "/var/lib/hd:/var/lib/other" });
    expect(config.stateDir).toBe("/var/lib/hd");
    expect(config.metrics.listen).toEqual({ host: "127.0.0.1", port: 9973 });
  });

  it("refuses a heartbeat interval that a client's idle timeout would take for a dead builder", () => {
    expect(parseConfig({ ...base, build: { heartbeatInterval: "1m" } }, "test.yaml").build.heartbeatInterval).toBe(60_000);
    expect(problems({ ...base, build: { heartbeatInterval: "3m" } })).toEqual([
      "build.heartbeatInterval: must be at most 1m: clients give up after 2m without a message (their default --idle-timeout), so a longer interval makes every quiet build or deploy look dead",
    ]);
  });

  it("takes build.copyTo as a Nix store URL and refuses anything else", () => {
    const copyTo = (url: string) => parseConfig({ ...base, build: { copyTo: url, copyTimeout: "5m" } }, "test.yaml").build;
    for (const url of ["file:///var/cache/nix", "ssh-ng://buildhost01", "s3://cache?region=eu-west-1", "https://cache.example.org", "daemon", "/srv/store"]) {
      expect(copyTo(url)).toMatchObject({ copyTo: url, copyTimeout: 300_000 });
    }
    for (const url of ["--option", "file:///x y", "ftp://cache", "file:///cache#x", ""]) {
      expect(problems({ ...base, build: { copyTo: url } })).toEqual([
        "build.copyTo: expected a Nix store URL such as file:///var/cache/nix, ssh-ng://cache01 or s3://bucket",
      ]);
    }
  });

  it("takes metrics.listen as host:port and stateDir as an absolute path, with defaults", () => {
    const defaults = parseConfig(base, "test.yaml");
    expect(defaults.metrics.listen).toEqual({ host: "127.0.0.1", port: 9973 });
    expect(defaults.stateDir).toBe("/var/lib/homelab-deploy");
    const custom = (listen: string) => parseConfig({ ...base, metrics: { listen } }, "test.yaml").metrics.listen;
    expect(custom("127.0.0.1:0")).toEqual({ host: "127.0.0.1", port: 0 });
    expect(custom("[::]:9100")).toEqual({ host: "::", port: 9100 });
    expect(custom("buildhost02.example.org:9973")).toEqual({ host: "buildhost02.example.org", port: 9973 });
    for (const listen of ["9973", "0.0.0.0:99999", ":9973", "http://0.0.0.0:9973", "::1:9973", "host:port"]) {
      expect(problems({ ...base, metrics: { listen } })).toEqual([expect.stringMatching(/^metrics\.listen: expected host:port/)]);
    }
    expect(problems({ ...base, metrics: { port: 9973 } })).toEqual(["metrics.port: unknown key"]);
    expect(parseConfig({ ...base, stateDir: "/srv/hd" }, "test.yaml").stateDir).toBe("/srv/hd");
    expect(problems({ ...base, stateDir: "state" })).toEqual(["stateDir: expected an absolute directory path"]);
  });

  it("takes the seed from Vault instead, with the documented defaults", () => {
    const config = parseConfig(vaultBased, "test.yaml", {});
    expect(config.nats.nkeySeedFile).toBeUndefined();
    expect(config.vault).toEqual({
      address: "https://vault.example.org:8200",
      roleIdFile: "/var/lib/vault/approle/role-id",
      secretIdFile: "/var/lib/vault/approle/secret-id",
      kvMount: "secret",
      secretPath: "shared/homelab-deploy/builder-nkey",
      secretField: "nkey",
      timeout: 10_000,
      retry: { initialDelay: 1_000, maxDelay: 60_000 },
    });
  });

  it("says which when both NKey sources or neither are configured", () => {
    expect(problems({ ...vaultBased, nats: base.nats })).toEqual(["vault: give exactly one NKey source: nats.nkeySeedFile or vault, not both"]);
    expect(problems({ ...vaultBased, vault: undefined })).toEqual([expect.stringMatching(/^nats\.nkeySeedFile: required unless a vault block is given/)]);
  });

  it("fills vault.address and vault.caCertFile from VAULT_ADDR and VAULT_CACERT, as the vault CLI does", () => {
    const { address: _address, ...withoutAddress } = vaultBased.vault;
    const env = { VAULT_ADDR: "https://vault.env:8200", VAULT_CACERT: "/etc/ssl/vault-ca.pem" };
    expect(parseConfig({ ...vaultBased, vault: withoutAddress }, "test.yaml", env).vault).toMatchObject({
      address: "https://vault.env:8200",
      caCertFile: "/etc/ssl/vault-ca.pem",
    });
    // The config wins over the environment.
    expect(parseConfig(vaultBased, "test.yaml", env).vault?.address).toBe("https://vault.example.org:8200");
    expect(problems({ ...vaultBased, vault: withoutAddress })).toEqual(["vault.address: required: the Vault server URL (or set VAULT_ADDR)"]);
  });

  it("names the vault key and what is wrong with it", () => {
    const vault = (extra: Record<string, unknown>) => ({ ...vaultBased, vault: { ...vaultBased.vault, ...extra } });
    expect(problems(vault({ address: "vault:8200" }))).toEqual([expect.stringMatching(/^vault\.address: expected a Vault address/)]);
    expect(problems(vault({ kvMount: "/secret/" }))).toEqual([expect.stringMatching(/^vault\.kvMount: expected a Vault path/)]);
    expect(problems(vault({ secretPath: "a/../b" }))).toEqual([expect.stringMatching(/^vault\.secretPath: expected a Vault path/)]);
    expect(problems(vault({ timeout: "soon" }))).toEqual(['vault.timeout: expected a duration like 30s, 10m or 1h, got "soon"']);
    expect(problems(vault({ retry: { initialDelay: "1m", maxDelay: "10s" } }))).toEqual(["vault.retry.maxDelay: must not be shorter than initialDelay"]);
    expect(problems(vault({ token: "hvs.x" }))).toEqual(["vault.token: unknown key"]);
    const { roleIdFile: _roleIdFile, ...withoutRoleId } = vaultBased.vault;
    expect(problems({ ...vaultBased, vault: withoutRoleId })).toEqual(["vault.roleIdFile: required (expected string)"]);
  });

  it("reads JSON as well as YAML, and says when the file is neither", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-config-"));
    await writeFile(join(dir, "c.json"), JSON.stringify(base));
    expect((await loadConfig(join(dir, "c.json"))).repos["nixos-servers"]).toBeDefined();
    await writeFile(join(dir, "bad.yaml"), "nats: [unclosed\n");
    await expect(loadConfig(join(dir, "bad.yaml"))).rejects.toThrow(/not valid YAML\/JSON/);
    await expect(loadConfig(join(dir, "missing.yaml"))).rejects.toThrow(/cannot read file/);
  });
});
