/**
 * services.homelab-deploy.listener (nix/modules/listener.nix), evaluated
 * with the stand-in module system of test/fixtures/nix-module-eval (see
 * test/nixos/module.test.ts): the rendered config, the unit and its restart
 * handling, checked against docs/deployment.md.
 *
 * What the stand-in cannot catch, compared with nixpkgs' real module system
 * (nix/tests/module-eval.nix does that where nixpkgs can be fetched): the
 * real types' merge functions (two definitions of `roles` concatenated,
 * priorities such as mkDefault/mkForce), that `restartIfChanged` and
 * `stopIfChanged` are options of NixOS's systemd module and end up as
 * `X-RestartIfChanged=false` / `X-StopIfChanged=false` in the unit file,
 * systemd's own unit syntax, and options of other modules this one might
 * collide with.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadListenerConfig } from "../../src/listener-config.js";
import { ROOT } from "../support/cli.js";
import { evalModules, standInPackages, unitValue, type Evaluation, type Packages, type Unit } from "../support/nix-module.js";

const LISTENER = "homelab-deploy-listener";
const CREDENTIALS = `/run/credentials/${LISTENER}.service`;

/** A DNS server of the prod tier, its seed from Vault. */
function ns1(): Record<string, any> {
  return {
    services: {
      "homelab-deploy": {
        listener: {
          enable: true,
          host: "ns1",
          tier: "prod",
          roles: ["dns"],
          repo: { name: "nixos-servers", url: "git+https://git.example.org/infra/nixos-servers.git" },
          vault: {
            address: "https://vault.example.org:8200",
            roleIdFile: "/var/lib/vault/approle/role-id",
            secretIdFile: "/var/lib/vault/approle/secret-id",
          },
          health: { commands: [["systemctl", "is-active", "unbound.service"]], confirmTimeout: "2m" },
          openFirewall: true,
          settings: { nats: { url: "nats://nats.example.org:4222" } },
        },
      },
    },
  };
}

let packages: Packages;
let docs: string;

beforeAll(async () => {
  packages = await standInPackages();
  docs = await readFile(join(ROOT, "docs", "deployment.md"), "utf8");
});

function service(evaluation: Evaluation): Unit {
  const unit = evaluation.output.systemd?.services?.[LISTENER];
  expect(unit, `no unit ${LISTENER}`).toBeDefined();
  return unit as Unit;
}

async function rendered(unit: Unit): Promise<Record<string, any>> {
  const [bin, subcommand, flag, file] = String(unit.serviceConfig["ExecStart"]).split(" ");
  expect([bin, subcommand, flag]).toEqual([`${packages["homelab-deploy"]}/bin/homelab-deploy`, "listener", "--config"]);
  expect(file).toMatch(/^\/nix\/store\/[a-z0-9]{32}-homelab-deploy-listener\.json$/);
  // The listener's own loader accepts what the module renders.
  await loadListenerConfig(file as string);
  return JSON.parse(await readFile(file as string, "utf8")) as Record<string, any>;
}

/** `| \`Key=value\` |` rows of the table under `heading`, up to the next heading. */
function documented(heading: string): Map<string, string> {
  const start = docs.indexOf(`\n${heading}\n`);
  expect(start, `docs/deployment.md has no heading ${heading}`).toBeGreaterThan(-1);
  const rest = docs.slice(start + heading.length + 2);
  const end = rest.search(/\n#{2,4} /);
  const section = end === -1 ? rest : rest.slice(0, end);
  return new Map([...section.matchAll(/^\| `([A-Za-z]+)=([^`]*)` \|/gm)].map((m) => [m[1] as string, m[2] as string]));
}

describe("services.homelab-deploy.listener", () => {
  it("renders the listener's config from the typed options, with the credentials from the unit's credential directory", async () => {
    const evaluation = await evalModules(ns1(), packages);
    expect(evaluation.failedAssertions).toEqual([]);
    const unit = service(evaluation);
    expect(await rendered(unit)).toEqual({
      host: "ns1",
      tier: "prod",
      roles: ["dns"],
      repo: { name: "nixos-servers", url: "git+https://git.example.org/infra/nixos-servers.git" },
      rollback: true,
      health: { commands: [["systemctl", "is-active", "unbound.service"]], confirmTimeout: "2m" },
      stateDir: "/var/lib/homelab-deploy-listener",
      metrics: { listen: "0.0.0.0:9972" },
      selfUnit: "/etc/systemd/system/homelab-deploy-listener.service",
      nixBin: `${packages.nix}/bin/nix`,
      nats: { url: "nats://nats.example.org:4222" },
      vault: {
        address: "https://vault.example.org:8200",
        roleIdFile: `${CREDENTIALS}/vault-role-id`,
        secretIdFile: `${CREDENTIALS}/vault-secret-id`,
        kvMount: "secret",
        secretPath: "shared/homelab-deploy/listener-prod-nkey",
        secretField: "nkey",
      },
    });
    expect(unit.serviceConfig["LoadCredential"]).toEqual([
      "vault-role-id:/var/lib/vault/approle/role-id",
      "vault-secret-id:/var/lib/vault/approle/secret-id",
    ]);
    expect(evaluation.output.networking?.firewall?.allowedTCPPorts).toEqual([9972]);
  });

  it("is not restarted or stopped by a switch, restarts whenever it exits, and runs as root with nix, git and systemctl", async () => {
    const unit = service(await evalModules(ns1(), packages));
    expect(unit).toMatchObject({ restartIfChanged: false, stopIfChanged: false });
    expect(unit.serviceConfig).toMatchObject({ Restart: "always", Type: "exec" });
    expect(unit.serviceConfig["User"]).toBeUndefined();
    expect(unit.path).toEqual([packages.nix, packages.git, packages.systemd]);
    expect(unit.environment).toEqual({ NIX_REMOTE: "daemon", NIX_CONFIG: "extra-experimental-features = nix-command flakes" });
    expect(unit.wantedBy).toEqual(["multi-user.target"]);
    // No users, no hardening: it switches the whole system.
    const evaluation = await evalModules(ns1(), packages);
    expect(evaluation.output.users).toBeUndefined();
  });

  it("writes exactly the unit settings docs/deployment.md documents", async () => {
    const unit = service(await evalModules(ns1(), packages));
    const rows = documented("### The listener's unit");
    const actual = Object.fromEntries(Object.entries(unit.serviceConfig).map(([key, value]) => [key, unitValue(value)]));
    expect(Object.keys(actual).sort()).toEqual([...rows.keys()].sort());
    for (const [key, value] of rows) {
      const pattern = new RegExp(`^${value.split(/<[^>]+>/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".+")}$`);
      expect(actual[key], `${key} is documented as ${value}`).toMatch(pattern);
    }
  });

  it("takes the host name from networking.hostName, a seed file instead of Vault, and a state directory outside /var/lib", async () => {
    const definitions = ns1();
    const listener = definitions["services"]["homelab-deploy"]["listener"];
    delete listener.host;
    delete listener.vault;
    delete listener.health;
    listener.openFirewall = false;
    listener.nkeySeedFile = "/run/secrets/listener.nkey";
    listener.settings.stateDir = "/srv/listener";
    const evaluation = await evalModules(definitions, packages, { system: { networking: { hostName: "web2" } } });
    expect(evaluation.failedAssertions).toEqual([]);
    const unit = service(evaluation);
    const config = await rendered(unit);
    expect(config).toMatchObject({ host: "web2", nats: { nkeySeedFile: `${CREDENTIALS}/nkey-seed` }, stateDir: "/srv/listener", health: {} });
    expect(config["vault"]).toBeUndefined();
    expect(unit.serviceConfig["LoadCredential"]).toEqual(["nkey-seed:/run/secrets/listener.nkey"]);
    expect(unit.serviceConfig["StateDirectory"]).toBeUndefined();
    expect(evaluation.output.systemd?.tmpfiles?.rules).toEqual(["d /srv/listener 0700 root root - -"]);
    expect(evaluation.output.networking?.firewall?.allowedTCPPorts).toEqual([]);
  });

  it("defines nothing when not enabled, and a host without the listener needs none of its options", async () => {
    const evaluation = await evalModules({ services: { "homelab-deploy": { listener: { enable: false } } } }, packages);
    expect(evaluation).toEqual({ failedAssertions: [], output: {} });
  });

  it("refuses a tier, role or repo name the protocol does not allow, and a missing tier, as NixOS does", async () => {
    const cases: Array<[(l: Record<string, any>) => void, string]> = [
      [(l) => (l.tier = "Prod"), "A definition for option `services.homelab-deploy.listener.tier' is not of type `string matching the pattern [a-z][a-z0-9-]*'"],
      [(l) => (l.roles = ["dns", "a.b"]), "A definition for option `services.homelab-deploy.listener.roles' is not of type `list of string matching"],
      [(l) => (l.repo.name = "nixos servers"), "A definition for option `services.homelab-deploy.listener.repo.name' is not of type"],
      [(l) => (l.host = "-ns1"), "A definition for option `services.homelab-deploy.listener.host' is not of type"],
      [(l) => delete l.tier, "The option `services.homelab-deploy.listener.tier' is used but not defined."],
      [(l) => (l.healthCommands = []), "The option `services.homelab-deploy.listener.healthCommands' does not exist."],
    ];
    for (const [edit, message] of cases) {
      const definitions = ns1();
      edit(definitions["services"]["homelab-deploy"]["listener"]);
      await expect(evalModules(definitions, packages), message).rejects.toThrow(message);
    }
  });

  it("asserts what the listener would refuse at start: NKey sources, credential files in settings, no port to open", async () => {
    const cases: Array<[(l: Record<string, any>) => void, string]> = [
      [(l) => (l.nkeySeedFile = "/run/secrets/l.nk"), "services.homelab-deploy.listener: give exactly one NKey source"],
      [(l) => (l.settings.vault = { roleIdFile: "/x" }), "services.homelab-deploy.listener.settings: set the NKey files with"],
      [(l) => (l.settings.metrics = { listen: "127.0.0.1:0" }), "services.homelab-deploy.listener.openFirewall: settings.metrics.listen (\"127.0.0.1:0\") has no fixed port"],
      [(l) => (l.settings.stateDir = "relative"), "services.homelab-deploy.listener.settings.stateDir: expected an absolute directory path"],
    ];
    for (const [edit, message] of cases) {
      const definitions = ns1();
      edit(definitions["services"]["homelab-deploy"]["listener"]);
      const { failedAssertions } = await evalModules(definitions, packages);
      expect(failedAssertions).toHaveLength(1);
      expect(failedAssertions[0]).toContain(message);
    }
  });
});
