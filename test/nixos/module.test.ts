/**
 * The NixOS modules (nix/module.nix), evaluated here without nixpkgs: with
 * nix-instantiate and a small stand-in for the module system and the lib
 * functions they use (test/fixtures/nix-module-eval). What NixOS would turn
 * into unit files is checked against docs/deployment.md and the daemon's
 * own config loader; then the units' commands are run: the builder from
 * its ExecStart and rendered config, the scheduled build's script as is.
 *
 * What a stand-in cannot catch (test/fixtures/nix-module-eval/README.md):
 * it knows only the modules' own options, so a definition of a NixOS option
 * that does not exist or has the wrong type (a misspelt `startLimitBurst`,
 * `nix.settings` values nix.conf cannot hold) passes here; so do priority
 * and ordering effects (mkDefault, mkForce, mkBefore) and anything another
 * NixOS module adds. `nix flake check` (checks.module-eval, checks.vm) runs
 * the real module system and a VM where nixpkgs can be fetched.
 */
import { execFile } from "node:child_process";
import { chmod, copyFile, mkdtemp, readFile, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { ROOT } from "../support/cli.js";
import { spawnBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { bashPath, evalModules, standInPackages, unitValue, type Evaluation, type Packages, type Unit } from "../support/nix-module.js";

const run = promisify(execFile);
const BUILDER = "homelab-deploy-builder";
const SCHEDULER = "homelab-deploy-scheduled-build";
const CREDENTIALS = (unit: string) => `/run/credentials/${unit}.service`;

const VAULT = {
  address: "https://vault.home.2rjus.net:8200",
  caCertFile: "/etc/ssl/certs/homelab-root-ca.pem",
  roleIdFile: "/var/lib/vault/approle/role-id",
  secretIdFile: "/var/lib/vault/approle/secret-id",
};

/** nix-cache02 as the plan describes it: Vault, both repos, metrics for Prometheus, the scheduler. */
function nixCache02(): Record<string, any> {
  return {
    services: {
      "homelab-deploy": {
        builder: {
          enable: true,
          openFirewall: true,
          vault: { ...VAULT },
          settings: {
            nats: { url: "nats://nats.home.2rjus.net:4222" },
            repos: {
              "nixos-servers": { url: "git+https://git.t-juice.club/torjus/nixos-servers.git" },
              nixos: { url: "git+https://git.t-juice.club/torjus/nixos.git" },
            },
            build: { timeout: "2h" },
            vault: { timeout: "30s" },
          },
        },
        scheduledBuilds: {
          enable: true,
          repos: ["nixos-servers", "nixos"],
          natsUrl: "nats://nats.home.2rjus.net:4222",
          vault: { ...VAULT },
        },
      },
    },
  };
}

/** `| \`Key=value\` | why |` rows of the table under `heading` in docs/deployment.md. */
function documented(markdown: string, heading: string): Array<{ key: string; value: string }> {
  const start = markdown.indexOf(`\n${heading}\n`);
  expect(start, `docs/deployment.md has no heading ${heading}`).toBeGreaterThan(-1);
  const rest = markdown.slice(start + heading.length + 2);
  const end = rest.search(/\n#{2,3} /);
  const section = end === -1 ? rest : rest.slice(0, end);
  const rows = [...section.matchAll(/^\| `([A-Za-z]+)=([^`]*)` \|/gm)].map((m) => ({ key: m[1] as string, value: m[2] as string }));
  expect(rows.length, `no settings documented under ${heading}`).toBeGreaterThan(0);
  return rows;
}

/** A documented value with <placeholders> matching anything. */
function matches(value: string, documentedValue: string): boolean {
  const pattern = documentedValue
    .split(/<[^>]+>/)
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join(".+");
  return new RegExp(`^${pattern}$`).test(value);
}

function expectDocumented(unit: Unit, rows: Array<{ key: string; value: string }>) {
  const actual = Object.fromEntries(Object.entries(unit.serviceConfig).map(([key, value]) => [key, unitValue(value)]));
  expect(Object.keys(actual).sort()).toEqual(rows.map((r) => r.key).sort());
  for (const row of rows) {
    expect(matches(actual[row.key] as string, row.value), `${row.key}=${actual[row.key]} is documented as ${row.key}=${row.value}`).toBe(true);
  }
}

function service(evaluation: Evaluation, name: string): Unit {
  const unit = evaluation.output.systemd?.services?.[name];
  expect(unit, `no systemd.services.${name}`).toBeDefined();
  return unit as Unit;
}

/** ExecStart's store file: the rendered builder config, or the scheduler's script. */
function execStart(unit: Unit): string[] {
  return String(unit.serviceConfig["ExecStart"]).split(" ");
}

let packages: Packages;
let docs: string;

beforeAll(async () => {
  packages = await standInPackages();
  docs = await readFile(join(ROOT, "docs", "deployment.md"), "utf8");
});

describe("services.homelab-deploy.builder", () => {
  it("renders a config the daemon's own loader accepts, with the credentials from the unit's credential directory", async () => {
    const evaluation = await evalModules(nixCache02(), packages);
    expect(evaluation.failedAssertions).toEqual([]);
    const unit = service(evaluation, BUILDER);
    const [bin, subcommand, flag, configFile] = execStart(unit);
    // lib.getExe: the package's meta.mainProgram, not a hard-coded name.
    expect([bin, subcommand, flag]).toEqual([`${packages["homelab-deploy"]}/bin/homelab-deploy`, "builder", "--config"]);
    expect(configFile).toMatch(/^\/nix\/store\/[a-z0-9]{32}-homelab-deploy-builder\.json$/);

    const config = await loadConfig(configFile as string);
    expect(config.nats.url).toBe("nats://nats.home.2rjus.net:4222");
    expect(config.nats.nkeySeedFile).toBeUndefined();
    expect(Object.keys(config.repos).sort()).toEqual(["nixos", "nixos-servers"]);
    expect(config.repos["nixos"]?.url).toBe("git+https://git.t-juice.club/torjus/nixos.git");
    expect(config.vault).toMatchObject({
      address: VAULT.address,
      caCertFile: VAULT.caCertFile,
      roleIdFile: `${CREDENTIALS(BUILDER)}/vault-role-id`,
      secretIdFile: `${CREDENTIALS(BUILDER)}/vault-secret-id`,
      kvMount: "secret",
      secretPath: "shared/homelab-deploy/builder-nkey",
      secretField: "nkey",
      timeout: 30_000,
    });
    expect(config.build.timeout).toBe(7_200_000);
    expect(config.build.nixBin).toBe(`${packages.nix}/bin/nix`);
    expect(config.metrics.listen).toEqual({ host: "0.0.0.0", port: 9973 });
    expect(config.stateDir).toBe("/var/lib/homelab-deploy");

    // systemd copies the operator's files into the directory the config names.
    expect(unit.serviceConfig["LoadCredential"]).toEqual([`vault-role-id:${VAULT.roleIdFile}`, `vault-secret-id:${VAULT.secretIdFile}`]);
  });

  it("runs as its own system user with the state directory the config names, and opens the metrics port", async () => {
    const evaluation = await evalModules(nixCache02(), packages);
    const unit = service(evaluation, BUILDER);
    expect(unit.serviceConfig).toMatchObject({ User: "homelab-deploy", Group: "homelab-deploy", StateDirectory: "homelab-deploy" });
    expect(evaluation.output.users?.users?.["homelab-deploy"]).toEqual({
      isSystemUser: true,
      group: "homelab-deploy",
      home: "/var/lib/homelab-deploy",
      description: "homelab-deploy builder",
    });
    expect(evaluation.output.users?.groups).toHaveProperty("homelab-deploy");
    expect(evaluation.output.networking?.firewall?.allowedTCPPorts).toEqual([9973]);
    expect(unit.environment).toEqual({
      HOME: "/var/lib/homelab-deploy",
      XDG_CACHE_HOME: `/var/cache/${BUILDER}`,
      NIX_REMOTE: "daemon",
      NIX_CONFIG: "extra-experimental-features = nix-command flakes",
    });
    expect(unit.path).toEqual([packages.nix, packages.git]);
    expect(unit.wantedBy).toEqual(["multi-user.target"]);
    expect(unit.after).toEqual(["network-online.target", "nix-daemon.socket"]);
    expect(unit.requires).toEqual(["nix-daemon.socket"]);
    // NixOS's typed options for [Unit]'s StartLimit*, not raw unitConfig.
    expect(unit).toMatchObject({ startLimitIntervalSec: 600, startLimitBurst: 5 });
    expect(unit.unitConfig).toBeUndefined();
  });

  it("creates the user and group only under the module's default names", async () => {
    const definitions = nixCache02();
    Object.assign(definitions["services"]["homelab-deploy"]["builder"], { user: "nixbuilder", group: "builders" });
    const evaluation = await evalModules(definitions, packages);
    expect(evaluation.failedAssertions).toEqual([]);
    expect(evaluation.output.users).toEqual({ users: {}, groups: {} });
    expect(service(evaluation, BUILDER).serviceConfig).toMatchObject({ User: "nixbuilder", Group: "builders" });
    expect(evaluation.output.nix?.settings?.["extra-allowed-users"]).toEqual(["nixbuilder"]);
  });

  it("writes exactly the unit settings and hardening docs/deployment.md documents", async () => {
    const unit = service(await evalModules(nixCache02(), packages), BUILDER);
    expectDocumented(unit, [...documented(docs, "### The unit"), ...documented(docs, "### Hardening")]);
    expect(unit.serviceConfig["MemoryDenyWriteExecute"]).toBeUndefined();
  });

  it("keeps running when the kernel OOM-kills an evaluation worker, and leaves MemoryMax to NixOS's own option", async () => {
    const unit = service(await evalModules(nixCache02(), packages), BUILDER);
    expect(unit.serviceConfig["OOMPolicy"]).toBe("continue");
    expect(unit.serviceConfig["MemoryMax"]).toBeUndefined();
    // The module's memoryMax duplicated serviceConfig.MemoryMax and is gone.
    const old = nixCache02();
    old["services"]["homelab-deploy"]["builder"].memoryMax = "12G";
    await expect(evalModules(old, packages)).rejects.toThrow("The option `services.homelab-deploy.builder.memoryMax' does not exist.");
  });

  it("takes the firewall port from metrics.listen and keeps a state directory outside /var/lib writable", async () => {
    const definitions = nixCache02();
    const builder = definitions["services"]["homelab-deploy"]["builder"];
    builder.settings.metrics = { listen: "[::]:9100" };
    builder.settings.stateDir = "/srv/homelab-deploy";
    builder.settings.build.nixBin = "/opt/nix/bin/nix";
    const evaluation = await evalModules(definitions, packages);
    expect(evaluation.failedAssertions).toEqual([]);
    expect(evaluation.output.networking?.firewall?.allowedTCPPorts).toEqual([9100]);
    const unit = service(evaluation, BUILDER);
    expect(unit.serviceConfig["StateDirectory"]).toBeUndefined();
    expect(unit.serviceConfig["ReadWritePaths"]).toEqual(["/nix/var/nix/daemon-socket", "/srv/homelab-deploy"]);
    expect(evaluation.output.systemd?.tmpfiles?.rules).toEqual(["d /srv/homelab-deploy 0750 homelab-deploy homelab-deploy - -"]);
    expect(unit.environment?.["HOME"]).toBe("/srv/homelab-deploy");
    const config = await loadConfig(execStart(unit)[3] as string);
    expect(config.metrics.listen).toEqual({ host: "::", port: 9100 });
    expect(config.stateDir).toBe("/srv/homelab-deploy");
    expect(config.build.nixBin).toBe("/opt/nix/bin/nix");
  });

  it("opens nothing and defines nothing when not enabled", async () => {
    const evaluation = await evalModules({ services: { "homelab-deploy": { builder: { enable: false } } } }, packages);
    expect(evaluation).toEqual({ failedAssertions: [], output: {} });
  });

  it("passes a seed file with LoadCredential instead of Vault", async () => {
    const definitions = nixCache02();
    const builder = definitions["services"]["homelab-deploy"]["builder"];
    delete builder.vault;
    delete builder.settings.vault;
    builder.nkeySeedFile = "/run/secrets/builder.nkey";
    const evaluation = await evalModules(definitions, packages);
    expect(evaluation.failedAssertions).toEqual([]);
    const unit = service(evaluation, BUILDER);
    expect(unit.serviceConfig["LoadCredential"]).toEqual(["nkey-seed:/run/secrets/builder.nkey"]);
    const config = await loadConfig(execStart(unit)[3] as string);
    expect(config.nats.nkeySeedFile).toBe(`${CREDENTIALS(BUILDER)}/nkey-seed`);
    expect(config.vault).toBeUndefined();
  });
});

describe("services.homelab-deploy.scheduledBuilds", () => {
  it("is a oneshot service with the scheduler's own Vault identity, on a 2-hourly persistent timer with 5 min of jitter", async () => {
    const evaluation = await evalModules(nixCache02(), packages);
    const unit = service(evaluation, SCHEDULER);
    expect(unit.environment).toEqual({
      HOMELAB_DEPLOY_NATS_URL: "nats://nats.home.2rjus.net:4222",
      HOMELAB_DEPLOY_VAULT_ADDR: VAULT.address,
      HOMELAB_DEPLOY_VAULT_CACERT: VAULT.caCertFile,
      HOMELAB_DEPLOY_VAULT_ROLE_ID_FILE: `${CREDENTIALS(SCHEDULER)}/vault-role-id`,
      HOMELAB_DEPLOY_VAULT_SECRET_ID_FILE: `${CREDENTIALS(SCHEDULER)}/vault-secret-id`,
      HOMELAB_DEPLOY_VAULT_KV_MOUNT: "secret",
      HOMELAB_DEPLOY_VAULT_SECRET_PATH: "shared/homelab-deploy/scheduler-nkey",
      HOMELAB_DEPLOY_VAULT_SECRET_FIELD: "nkey",
    });
    expect(unit.serviceConfig).toMatchObject({ Type: "oneshot", DynamicUser: true, TimeoutStartSec: "4h" });
    expect(unit.after).toEqual(["network-online.target", `${BUILDER}.service`]);
    expect(unit.wantedBy).toBeUndefined();
    expectDocumented(unit, [...documented(docs, "## `services.homelab-deploy.scheduledBuilds`"), ...documented(docs, "### Hardening")]);

    const timer = evaluation.output.systemd?.timers?.[SCHEDULER];
    expect(timer).toMatchObject({
      wantedBy: ["timers.target"],
      timerConfig: { OnCalendar: "*-*-* 00/2:00:00", RandomizedDelaySec: "5min", Persistent: true },
    });
  });

  it("has an OnCalendar that systemd reads as every two hours", async () => {
    const evaluation = await evalModules(nixCache02(), packages);
    const onCalendar = String(evaluation.output.systemd?.timers?.[SCHEDULER]?.timerConfig["OnCalendar"]);
    const { stdout } = await run("systemd-analyze", ["calendar", "--iterations=4", onCalendar], { env: { ...process.env, TZ: "UTC" } });
    const times = [...stdout.matchAll(/(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC/g)].map((m) =>
      Date.parse(`${(m[1] as string).replace(" ", "T")}Z`),
    );
    expect(times).toHaveLength(4);
    for (let i = 1; i < times.length; i++) expect((times[i] as number) - (times[i - 1] as number)).toBe(2 * 3600_000);
    expect(new Date(times[0] as number).getUTCHours() % 2).toBe(0);
  });

  it("quotes every repo as one word and ends the options before them", async () => {
    const definitions = nixCache02();
    definitions["services"]["homelab-deploy"]["scheduledBuilds"]["extraArgs"] = ["--idle-timeout", "10m"];
    const evaluation = await evalModules(definitions, packages, { runtimeShell: await bashPath() });
    const script = await readFile(execStart(service(evaluation, SCHEDULER))[0] as string, "utf8");
    expect(script).toContain("for repo in nixos-servers nixos; do");
    expect(script).toContain(`${packages["homelab-deploy"]}/bin/homelab-deploy build --idle-timeout 10m -- "$repo" all || code=$?`);
    await run("bash", ["-n", execStart(service(evaluation, SCHEDULER))[0] as string]);
  });
});

describe("assertions", () => {
  type Edit = (d: Record<string, any>) => void;
  const builderOf = (d: Record<string, any>) => d["services"]["homelab-deploy"]["builder"];
  const schedulerOf = (d: Record<string, any>) => d["services"]["homelab-deploy"]["scheduledBuilds"];
  const cases: Array<[string, Edit, string]> = [
    ["both NKey sources", (d) => (builderOf(d).nkeySeedFile = "/run/secrets/b.nk"), "services.homelab-deploy.builder: give exactly one NKey source"],
    ["no NKey source", (d) => delete schedulerOf(d).vault, "services.homelab-deploy.scheduledBuilds: give exactly one NKey source"],
    ["role-id without secret-id", (d) => delete builderOf(d).vault.secretIdFile, "services.homelab-deploy.builder.vault: roleIdFile and secretIdFile go together"],
    ["Vault without an address", (d) => delete schedulerOf(d).vault.address, "services.homelab-deploy.scheduledBuilds.vault.address: required with Vault"],
    ["a relative credential path", (d) => (builderOf(d).vault.roleIdFile = "role-id"), 'services.homelab-deploy.builder.vault.roleIdFile: expected an absolute path, got "role-id"'],
    [
      "a credential file in settings",
      (d) => (builderOf(d).settings.nats.nkeySeedFile = "/run/secrets/b.nk"),
      "not with nats.nkeySeedFile",
    ],
    ["no repos", (d) => ((builderOf(d).settings.repos = {}), (schedulerOf(d).enable = false)), "services.homelab-deploy.builder.settings.repos: expected at least one repo"],
    ["a reserved repo name", (d) => (builderOf(d).settings.repos.status = { url: "git+https://example.org/x.git" }), "services.homelab-deploy.builder.settings.repos.status: invalid repo name"],
    ["the control request history as a repo name", (d) => (builderOf(d).settings.repos.history = { url: "git+https://example.org/x.git" }), "services.homelab-deploy.builder.settings.repos.history: invalid repo name"],
    ["a shell metacharacter in a scheduled repo", (d) => ((schedulerOf(d).repos = ["nixos; rm -rf /"]), (builderOf(d).enable = false)), 'services.homelab-deploy.scheduledBuilds.repos: invalid repo name "nixos; rm -rf /"'],
    ["a scheduled repo that looks like an option", (d) => ((schedulerOf(d).repos = ["--ref"]), (builderOf(d).enable = false)), 'invalid repo name "--ref"'],
    ["a scheduled repo the builder does not have", (d) => (schedulerOf(d).repos = ["nixos-servers", "gunter"]), '"gunter" is not a repo of services.homelab-deploy.builder.settings.repos'],
    ["nothing to schedule", (d) => (schedulerOf(d).repos = []), "services.homelab-deploy.scheduledBuilds.repos: expected at least one repo to build"],
    ["openFirewall with port 0", (d) => (builderOf(d).settings.metrics = { listen: "127.0.0.1:0" }), "services.homelab-deploy.builder.openFirewall: settings.metrics.listen (\"127.0.0.1:0\") has no fixed port"],
  ];

  it.each(cases)("%s", async (_, edit, message) => {
    const definitions = nixCache02();
    edit(definitions);
    const { failedAssertions } = await evalModules(definitions, packages);
    expect(failedAssertions).toHaveLength(1);
    expect(failedAssertions[0]).toContain(message);
  });

  it("lets the builder's user into the nix daemon with extra-allowed-users, whatever allowed-users says (as harmonia's module does)", async () => {
    // A narrowed allowed-users (this once failed an assertion that read allowed-users alone).
    const narrowed = await evalModules(nixCache02(), packages, { system: { nix: { settings: { "allowed-users": ["@wheel"] } } } });
    expect(narrowed.failedAssertions).toEqual([]);
    expect(narrowed.output.nix).toEqual({ settings: { "extra-allowed-users": ["homelab-deploy"] } });
    // NixOS's default (everyone): the same, and allowed-users is left alone.
    const defaults = await evalModules(nixCache02(), packages);
    expect(defaults.output.nix?.settings).toEqual({ "extra-allowed-users": ["homelab-deploy"] });
    // Not made trusted.
    expect(defaults.output.nix?.settings).not.toHaveProperty("trusted-users");
  });

  it("refuses options that do not exist, values of the wrong type and a missing natsUrl, as NixOS does", async () => {
    const typo = nixCache02();
    builderOf(typo).openFirwall = true;
    await expect(evalModules(typo, packages)).rejects.toThrow("The option `services.homelab-deploy.builder.openFirwall' does not exist.");
    const wrongType = nixCache02();
    builderOf(wrongType).openFirewall = "yes";
    await expect(evalModules(wrongType, packages)).rejects.toThrow("A definition for option `services.homelab-deploy.builder.openFirewall' is not of type `boolean'");
    const noUrl = nixCache02();
    delete schedulerOf(noUrl).natsUrl;
    await expect(evalModules(noUrl, packages)).rejects.toThrow("The option `services.homelab-deploy.scheduledBuilds.natsUrl' is used but not defined.");
  });
});

/**
 * systemd's LoadCredential, emulated: the named files copied to a private
 * directory, which stands in for /run/credentials/<unit>.service in the
 * paths the unit hands the program.
 */
async function credentialDirectory(unit: Unit, unitName: string): Promise<(text: string) => string> {
  const dir = await mkdtemp(join(tmpdir(), "hd-credentials-"));
  for (const entry of (unit.serviceConfig["LoadCredential"] as string[]) ?? []) {
    const [id, source] = [entry.slice(0, entry.indexOf(":")), entry.slice(entry.indexOf(":") + 1)];
    await copyFile(source, join(dir, id));
    await chmod(join(dir, id), 0o400);
  }
  return (text) => text.replaceAll(CREDENTIALS(unitName), dir);
}

describe("the units' commands, run", () => {
  let nats: NatsServer;
  let builder: BuilderProcess;
  let definitions: (scheduledRepos: string[]) => Record<string, unknown>;
  let goodFlake: FixtureFlake;
  let builderCommand: string[];

  beforeAll(async () => {
    const [server, good, bad] = await Promise.all([startNatsServer(), createFixtureFlake("tiny-flake"), createFixtureFlake("tiny-flake")]);
    nats = server;
    goodFlake = good;
    // Every host of "bad" fails to build.
    await bad.editFlake((text) => text.replace("/bin/mkdir $out", "exit 1"));
    const state = await mkdtemp(join(tmpdir(), "hd-state-"));
    definitions = (scheduledRepos) => ({
      services: {
        "homelab-deploy": {
          builder: {
            enable: true,
            nkeySeedFile: nats.identities.builder.seedFile,
            settings: {
              nats: { url: nats.url },
              repos: { good: { url: good.url }, bad: { url: bad.url } },
              metrics: { listen: "127.0.0.1:0" },
              stateDir: join(state, "homelab-deploy"),
              log: { level: "debug" },
            },
          },
          scheduledBuilds: {
            enable: true,
            repos: scheduledRepos,
            natsUrl: nats.url,
            nkeySeedFile: nats.identities.scheduler.seedFile,
          },
        },
      },
    });
    const evaluation = await evalModules(definitions(["good"]), packages);
    expect(evaluation.failedAssertions).toEqual([]);
    // tmpfiles' job: the state directory outside /var/lib.
    await mkdir(join(state, "homelab-deploy"));
    const unit = service(evaluation, BUILDER);
    const inCredentials = await credentialDirectory(unit, BUILDER);
    const [bin, subcommand, flag, rendered] = execStart(unit);
    const configFile = join(state, "homelab-deploy-builder.json");
    await writeFile(configFile, inCredentials(await readFile(rendered as string, "utf8")));
    // Ready means the daemon logged "builder ready: listening on build.>".
    builderCommand = [bin as string, subcommand as string, flag as string, configFile];
    builder = await spawnBuilder(configFile, {}, { command: builderCommand });
  });

  afterAll(async () => {
    await builder?.stop();
    await nats?.stop();
  });

  /** The scheduled-build unit for these repos: its script run as is, with the unit's environment. */
  async function runScheduledBuild(repos: string[]) {
    const evaluation = await evalModules(definitions(repos), packages, { runtimeShell: await bashPath() });
    expect(evaluation.failedAssertions).toEqual([]);
    const unit = service(evaluation, SCHEDULER);
    const inCredentials = await credentialDirectory(unit, SCHEDULER);
    // A store file is not executable; systemd runs it through its #! line, so do we.
    const file = join(await mkdtemp(join(tmpdir(), "hd-unit-")), SCHEDULER);
    await copyFile(execStart(unit)[0] as string, file);
    await chmod(file, 0o755);
    const env = Object.fromEntries(Object.entries(unit.environment ?? {}).map(([key, value]) => [key, inCredentials(value)]));
    return execa(file, [], { env, extendEnv: false, reject: false, stdin: "ignore", timeout: 120_000 });
  }

  it("the scheduled build builds every repo in order, then fails the unit because one repo failed", async () => {
    const result = await runScheduledBuild(["bad", "good"]);
    expect(result.exitCode).toBe(1);
    const stdout = String(result.stdout);
    expect(stdout.indexOf("scheduled build: bad, all hosts")).toBeGreaterThan(-1);
    expect(stdout.indexOf("scheduled build: bad, all hosts")).toBeLessThan(stdout.indexOf("scheduled build: good, all hosts"));
    expect(String(result.stderr)).toContain("scheduled build: bad failed (exit code 1)");
    expect(String(result.stderr)).not.toContain("scheduled build: good failed");
    // Both repos' hosts went through the builder: bad's failed, good's built.
    expect(stdout).toMatch(/completed: failure, 0 of 2 hosts built/);
    expect(stdout).toMatch(/completed: success, 2 of 2 hosts built/);
  });

  it("the scheduled build succeeds when every host builds", async () => {
    const result = await runScheduledBuild(["good"]);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(String(result.stdout)).toMatch(/completed: success, 2 of 2 hosts built/);
  });

  it("the scheduled build rides through a restart of the builder (SIGTERM, as a switch does) and succeeds", async () => {
    // Slow enough that the restart lands in the middle of the job.
    await goodFlake.editFlake((text) => text.replace("echo ${name}; /bin/mkdir $out", "echo ${name}; /bin/sleep 2; /bin/mkdir $out"));
    const before = new Set(builder.logs);
    const run = runScheduledBuild(["good"]);
    await builder.waitForLog((l) => !before.has(l) && l.msg === "building host" && l.host === "a", 60_000);
    const { code } = await builder.stop("SIGTERM");
    expect(code).toBe(0);
    builder = await spawnBuilder(builderCommand[3] as string, {}, { command: builderCommand });
    const result = await run;
    expect(result.exitCode, `${String(result.stdout)}\n${String(result.stderr)}`).toBe(0);
    const stdout = String(result.stdout);
    expect(stdout).toMatch(/interrupted: the builder is shutting down \(it received SIGTERM\); .*; waiting for it/);
    expect(stdout.indexOf("resumed: the builder is back")).toBeGreaterThan(stdout.indexOf("interrupted:"));
    expect(stdout).toMatch(/completed: success, 2 of 2 hosts built/);
  });
});
