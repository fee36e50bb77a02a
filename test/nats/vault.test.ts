/**
 * NKey seeds from Vault, end to end: a Vault API server on loopback (HTTP,
 * and HTTPS with a CA made here), a real nats-server with the plan's users,
 * the builder daemon and the build client as child processes talking to
 * Vault through node-vault, and real nix builds.
 */
import { copyFile, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createAccount, createUser } from "nkeys.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publicKeyOf } from "../../src/nats/credentials.js";
import { jsonLines, runCli, type CliResult } from "../support/cli.js";
import { startBuilder, type BuilderProcess, type LogLine } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";
import { startVaultServer, type AppRoleCredentials, type VaultServer } from "../support/vault-server.js";

const BUILDER_PATH = "shared/homelab-deploy/builder-nkey";
const SCHEDULER_PATH = "shared/homelab-deploy/scheduler-nkey";

let nats: NatsServer;
let flake: FixtureFlake;
let vault: VaultServer;
let tlsVault: VaultServer;
let builderRole: AppRoleCredentials;
let dir: string;

/** Everything that must never be printed, and everything that was printed, for the last test. */
const secrets = new Set<string>();
const daemons: BuilderProcess[] = [];
const clientRuns: CliResult[] = [];

function putBuilderSeed(server: VaultServer, seed = nats.identities.builder.seed): number {
  secrets.add(seed);
  return server.putSecret("secret", BUILDER_PATH, { nkey: `${seed}\n` });
}

async function addRole(server: VaultServer, name: string): Promise<AppRoleCredentials> {
  const role = await server.addAppRole(name);
  secrets.add(role.secretId);
  return role;
}

/** The daemon's vault block: short timeouts and backoff caps keep the tests quick. */
function vaultBlock(server: VaultServer, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    address: server.url,
    roleIdFile: builderRole.roleIdFile,
    secretIdFile: builderRole.secretIdFile,
    timeout: "500ms",
    retry: { initialDelay: "100ms", maxDelay: "400ms" },
    ...overrides,
  };
}

async function startVaultBuilder(
  vaultSettings: Record<string, unknown>,
  options: { waitReady?: boolean; env?: Record<string, string> } = {},
): Promise<BuilderProcess> {
  const builder = await startBuilder(
    { natsUrl: nats.url, repos: { fixture: flake.url }, extra: { vault: vaultSettings }, ...(options.env ? { env: options.env } : {}) },
    { waitReady: false },
  );
  daemons.push(builder);
  if (options.waitReady ?? true) await builder.waitForLog((l) => l.msg === "builder ready: listening on build.>");
  return builder;
}

async function requestBuild(host = "alpha", env: Record<string, string> = {}, args: string[] = []): Promise<CliResult> {
  const result = await runCli(["build", "fixture", host, "--json", ...args], { HOMELAB_DEPLOY_NATS_URL: nats.url, ...env });
  clientRuns.push(result);
  return result;
}

function asDeployer(): Record<string, string> {
  return { HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.testDeployer.seedFile };
}

function finalOf(result: CliResult): Record<string, unknown> {
  return jsonLines(result.stdout).at(-1) ?? {};
}

/** The Vault client's retries: the log lines with its `vault` and `retryInMs` fields. */
const retryLines = (builder: BuilderProcess) => builder.logs.filter((l) => typeof l.vault === "string" && typeof l.retryInMs === "number");
const waitForRetries = (builder: BuilderProcess, count: number, pattern: RegExp) =>
  builder.waitForLog(() => retryLines(builder).filter((l) => pattern.test(String(l.msg))).length >= count, 15_000);

beforeAll(async () => {
  [nats, flake, vault, tlsVault, dir] = await Promise.all([
    startNatsServer(),
    createFixtureFlake(),
    startVaultServer(),
    startVaultServer({ tls: true }),
    mkdtemp(join(tmpdir(), "hd-vault-test-")),
  ]);
  builderRole = await addRole(vault, "nix-cache02");
  putBuilderSeed(vault);
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop("SIGKILL")));
  await Promise.all([nats?.stop(), vault?.stop(), tlsVault?.stop()]);
});

describe("a builder whose NKey seed is in Vault", () => {
  it("logs in with its AppRole, reads the seed from KV v2, revokes the token and serves a build", async () => {
    const before = vault.requests.length;
    const builder = await startVaultBuilder(vaultBlock(vault));
    try {
      const fetched = await builder.waitForLog((l) => l.msg === "fetched the NKey seed from Vault");
      expect(fetched).toMatchObject({ vault: vault.url, secretPath: `secret/data/${BUILDER_PATH}#nkey`, user: nats.identities.builder.publicKey });
      expect(builder.logs.find((l) => l.msg === "connected to NATS")?.user).toBe(nats.identities.builder.publicKey);
      expect(vault.requests.slice(before).map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([
        "POST /v1/auth/approle/login 200",
        `GET /v1/secret/data/${BUILDER_PATH} 200`,
        "POST /v1/auth/token/revoke-self 204",
      ]);
      expect(vault.revokedTokens).toContain(vault.issuedTokens.at(-1));

      const result = await requestBuild("alpha", asDeployer());
      expect(result.exitCode).toBe(0);
      expect(finalOf(result)).toMatchObject({ type: "completed", status: "success" });
    } finally {
      expect((await builder.stop()).code).toBe(0);
    }
  });

  it("takes the address and CA from VAULT_ADDR and VAULT_CACERT, over HTTPS", async () => {
    const role = await addRole(tlsVault, "nix-cache02");
    putBuilderSeed(tlsVault);
    const settings = vaultBlock(tlsVault, { roleIdFile: role.roleIdFile, secretIdFile: role.secretIdFile });
    delete settings["address"];
    const builder = await startVaultBuilder(settings, { env: { VAULT_ADDR: tlsVault.url, VAULT_CACERT: tlsVault.tls?.caFile ?? "" } });
    try {
      expect(builder.logs.find((l) => l.msg === "fetched the NKey seed from Vault")?.vault).toBe(tlsVault.url);
      expect(tlsVault.url).toMatch(/^https:/);
      expect(builder.logs.find((l) => l.msg === "connected to NATS")?.user).toBe(nats.identities.builder.publicKey);
    } finally {
      await builder.stop();
    }
  });
});

describe("a Vault that is not ready: the builder waits and retries", () => {
  it("waits for a Vault that comes up after the builder started, then serves", async () => {
    const late = await startVaultServer({ down: true });
    try {
      const role = await addRole(late, "nix-cache02");
      putBuilderSeed(late);
      const builder = await startVaultBuilder(vaultBlock(late, { roleIdFile: role.roleIdFile, secretIdFile: role.secretIdFile }), {
        waitReady: false,
      });
      try {
        await waitForRetries(builder, 2, new RegExp(`^Vault at ${late.url} is unreachable \\(connect ECONNREFUSED`));
        expect(builder.child.exitCode).toBeNull();
        await late.start();
        await builder.waitForLog((l) => l.msg === "builder ready: listening on build.>");
        const result = await requestBuild("beta", asDeployer());
        expect(result.exitCode).toBe(0);
      } finally {
        await builder.stop();
      }
    } finally {
      await late.stop();
    }
  });

  it("retries 5xx answers with growing delays, capped and jittered", async () => {
    vault.failNext(4, 503, ["Vault is sealed"]);
    const builder = await startVaultBuilder(vaultBlock(vault));
    try {
      const retries = retryLines(builder);
      expect(retries).toEqual(Array.from({ length: 4 }, (_, i) => expect.objectContaining({ vault: vault.url, status: 503, attempt: i + 1 })));
      // Vault's own reason reaches the journal: the operator's only clue that it is sealed.
      for (const line of retries) expect(line.msg).toContain("(503: Vault is sealed)");
      // initialDelay 100ms doubling to maxDelay 400ms, each with up to half taken off.
      retries.forEach((line, i) => {
        const ceiling = Math.min(100 * 2 ** i, 400);
        expect(line.retryInMs).toBeGreaterThanOrEqual(ceiling / 2);
        expect(line.retryInMs).toBeLessThanOrEqual(ceiling);
      });
      expect(builder.logs.find((l) => l.msg === "fetched the NKey seed from Vault")?.attempt).toBe(5);
    } finally {
      await builder.stop();
    }
  });

  it("gives up on an answer slower than vault.timeout and asks again", async () => {
    const before = vault.requests.length;
    vault.hangNext(2);
    const builder = await startVaultBuilder(vaultBlock(vault, { timeout: "300ms" }));
    try {
      const retries = retryLines(builder);
      expect(retries.map((l) => l.msg)).toEqual([
        expect.stringMatching(/did not answer within 300ms \(vault\.timeout\); retrying in /),
        expect.stringMatching(/did not answer within 300ms \(vault\.timeout\); retrying in /),
      ]);
      // The first two requests were never answered (Vault hung on them): the builder gave up on
      // each by itself and got its seed from the third, whatever the clock says.
      expect(builder.logs.find((l) => l.msg === "fetched the NKey seed from Vault")).toMatchObject({ attempt: 3 });
      expect(vault.requests.slice(before, before + 3).map((r) => r.status)).toEqual([0, 0, 200]);
    } finally {
      await builder.stop();
    }
  });

  it("reports a certificate from an unknown CA as a TLS/CA problem and retries until the CA file is right", async () => {
    const role = await addRole(tlsVault, "nix-cache02-tls");
    putBuilderSeed(tlsVault);
    const caFile = join(dir, "ca.pem");
    await copyFile(tlsVault.tls?.otherCaFile ?? "", caFile);
    const builder = await startVaultBuilder(
      vaultBlock(tlsVault, { roleIdFile: role.roleIdFile, secretIdFile: role.secretIdFile, caCertFile: caFile }),
      { waitReady: false },
    );
    try {
      await waitForRetries(builder, 2, /^TLS\/CA problem talking to Vault at https:\/\/localhost:\d+ \(UNABLE_TO_VERIFY_LEAF_SIGNATURE: .*check that vault\.caCertFile \(.*ca\.pem\) holds the CA that signed Vault's certificate/);
      expect(builder.child.exitCode).toBeNull();
      await copyFile(tlsVault.tls?.caFile ?? "", caFile);
      await builder.waitForLog((l) => l.msg === "builder ready: listening on build.>");
    } finally {
      await builder.stop();
    }
  });
});

describe("a Vault problem only an operator can fix: exit 1 at once, with one line saying what to fix", () => {
  interface FatalCase {
    name: string;
    /** The vault block's overrides; `server` when the case needs a Vault of its own. */
    setup: () => Promise<{ overrides?: Record<string, unknown>; server?: VaultServer }>;
    line: RegExp;
  }
  const cases: FatalCase[] = [
    {
      name: "a wrong secret-id (400)",
      setup: async () => {
        const wrong = join(dir, "wrong.secret-id");
        await writeFile(wrong, "00000000-0000-0000-0000-000000000000\n");
        return { overrides: { secretIdFile: wrong } };
      },
      line: /^Vault at http:\/\/127\.0\.0\.1:\d+ refused the AppRole login \(400: invalid role or secret ID\): check vault\.roleIdFile and vault\.secretIdFile$/,
    },
    {
      name: "a login refused with 403",
      setup: async () => {
        // Its own Vault: the injected answer must reach this builder and no other.
        const server = await startVaultServer();
        const role = await addRole(server, "nix-cache02");
        putBuilderSeed(server);
        server.failNext(1, 403, ["permission denied"]);
        return { server, overrides: { roleIdFile: role.roleIdFile, secretIdFile: role.secretIdFile } };
      },
      line: /refused the AppRole login \(403: permission denied\): check vault\.roleIdFile and vault\.secretIdFile$/,
    },
    {
      name: "no secret at the path (404)",
      setup: async () => ({ overrides: { secretPath: "shared/homelab-deploy/missing" } }),
      line: /has no secret at secret\/data\/shared\/homelab-deploy\/missing \(404\): check vault\.kvMount and vault\.secretPath/,
    },
    {
      name: "a policy that does not allow reading the path (403)",
      setup: async () => ({ overrides: { secretPath: "other/builder-nkey" } }),
      line: /denied reading secret\/data\/other\/builder-nkey \(403: permission denied\): the AppRole's policy needs "read" on secret\/data\/other\/builder-nkey$/,
    },
    {
      name: "a secret without the field",
      setup: async () => ({ overrides: { secretField: "seed" } }),
      line: /^Vault secret secret\/data\/shared\/homelab-deploy\/builder-nkey has no field "seed" \(its fields: nkey\): check vault\.secretField$/,
    },
    {
      name: "a value that is not a seed",
      setup: async () => {
        vault.putSecret("secret", "shared/homelab-deploy/garbage", { nkey: "hunter2" });
        return { overrides: { secretPath: "shared/homelab-deploy/garbage" } };
      },
      line: /^Vault secret secret\/data\/shared\/homelab-deploy\/garbage field "nkey" does not hold an NKey seed: store the NATS user seed/,
    },
    {
      name: "an account seed instead of a user seed",
      setup: async () => {
        const seed = new TextDecoder().decode(createAccount().getSeed());
        secrets.add(seed);
        vault.putSecret("secret", "shared/homelab-deploy/account", { nkey: seed });
        return { overrides: { secretPath: "shared/homelab-deploy/account" } };
      },
      line: /field "nkey" holds an NKey seed, but not a user seed \(it must start with SU\)/,
    },
    {
      name: "an unreadable role-id file",
      setup: async () => ({ overrides: { roleIdFile: join(dir, "no-such-role-id") } }),
      line: /^cannot read vault\.roleIdFile .*no-such-role-id: ENOENT/,
    },
    {
      name: "an unreadable secret-id file",
      setup: async () => ({ overrides: { secretIdFile: dir } }),
      line: /^cannot read vault\.secretIdFile .*: EISDIR/,
    },
    {
      name: "an unreadable CA file",
      setup: async () => ({ overrides: { caCertFile: join(dir, "no-such-ca.pem") } }),
      line: /^cannot read vault\.caCertFile .*no-such-ca\.pem: ENOENT/,
    },
  ];

  // Each case has its own builder (and, where it matters, its own Vault): they can run side by side.
  it.concurrent.for(cases)("$name", async ({ setup, line }, { expect }) => {
    const { overrides = {}, server = vault } = await setup();
    try {
      const builder = await startVaultBuilder(vaultBlock(server, overrides), { waitReady: false });
      const code = await builder.exited;
      expect(code).toBe(1);
      // Without waiting: a retried problem would never exit, and says "retrying" first.
      expect(retryLines(builder)).toEqual([]);
      // (The metrics state file's first-start warning is about metrics, not credentials.)
      const problems = builder.logs.filter((l: LogLine) => (l.level ?? 0) >= 40 && l.component !== "state");
      expect(problems).toEqual([expect.objectContaining({ level: 60, msg: expect.stringMatching(line) })]);
      expect(builder.output().split("\n").filter((l) => l.trim() && !l.startsWith("{"))).toEqual([]);
    } finally {
      if (server !== vault) await server.stop();
    }
  });
});

describe("a rotated key", () => {
  it("does not bother Vault when NATS merely restarts: it reconnects with the seed it has", async () => {
    const builder = await startVaultBuilder(vaultBlock(vault));
    try {
      const logins = vault.requests.filter((r) => r.path === "/v1/auth/approle/login").length;
      await nats.stop();
      await builder.waitForLog((l) => l.msg === "disconnected from NATS");
      await nats.start();
      await builder.waitForLog((l) => l.msg === "reconnected to NATS", 10_000);
      expect(vault.requests.filter((r) => r.path === "/v1/auth/approle/login").length).toBe(logins);
    } finally {
      await builder.stop();
    }
  });

  it("fetches the seed again when NATS drops the old key, and reconnects with the new one", async () => {
    const builder = await startVaultBuilder(vaultBlock(vault));
    try {
      const rotated = await nats.rotate("builder", { beforeReload: (identity) => void putBuilderSeed(vault, identity.seed) });
      await builder.waitForLog((l) => l.msg === "connected to NATS" && l.user === rotated.publicKey);
      expect(builder.logs.filter((l) => l.msg === "fetched the NKey seed from Vault").map((l) => l.user)).toEqual([
        expect.not.stringMatching(rotated.publicKey),
        rotated.publicKey,
      ]);
      expect(builder.logs.find((l) => l.msg === "NATS refused the key; retrying with a reloaded seed")?.user).toBe(rotated.publicKey);
      const result = await requestBuild("gamma", asDeployer());
      expect(result.exitCode).toBe(0);
    } finally {
      await builder.stop();
    }
  });

  it("fetches the seed again when NATS refuses it at start-up, and connects with the new one", async () => {
    const current = nats.identities.builder;
    const stale = new TextDecoder().decode(createUser().getSeed());
    putBuilderSeed(vault, stale);
    // The current seed reaches Vault just after the builder has read the stale one.
    vault.afterAnswer((r) => r.path.endsWith(BUILDER_PATH), () => void putBuilderSeed(vault, current.seed));
    const builder = await startVaultBuilder(vaultBlock(vault));
    try {
      expect(builder.logs.filter((l) => l.msg === "fetched the NKey seed from Vault").map((l) => l.user)).toEqual([
        publicKeyOf(new TextEncoder().encode(stale)),
        current.publicKey,
      ]);
      expect(builder.logs.find((l) => l.msg === "connected to NATS")?.user).toBe(current.publicKey);
    } finally {
      await builder.stop();
    }
  });

  it("looks at Vault only once more, then exits, when Vault still has the refused key", async () => {
    const builder = await startVaultBuilder(vaultBlock(vault));
    const logins = () => vault.requests.filter((r) => r.path === "/v1/auth/approle/login").length;
    const before = logins();
    await nats.rotate("builder");
    const code = await builder.exited;
    expect(code).toBe(2);
    expect(logins() - before).toBe(1);
    expect(builder.logs.find((l) => l.msg === "NATS refused the key and its source still has the same one")).toBeDefined();
    expect(builder.logs.find((l) => l.msg === "lost the NATS connection for good")?.err).toMatch(/refused NKey user U[A-Z0-9]{55}/);
    putBuilderSeed(vault);
  });
});

describe("the build client with its seed in Vault", () => {
  let builder: BuilderProcess;
  let scheduler: AppRoleCredentials;
  let tlsScheduler: AppRoleCredentials;

  beforeAll(async () => {
    builder = await startBuilder({ natsUrl: nats.url, seedFile: nats.identities.builder.seedFile, repos: { fixture: flake.url } });
    daemons.push(builder);
    secrets.add(nats.identities.builder.seed);
    secrets.add(nats.identities.scheduler.seed);
    scheduler = await addRole(vault, "scheduler");
    vault.putSecret("secret", SCHEDULER_PATH, { nkey: nats.identities.scheduler.seed });
    tlsScheduler = await addRole(tlsVault, "scheduler");
    tlsVault.putSecret("secret", SCHEDULER_PATH, { nkey: nats.identities.scheduler.seed });
  });

  afterAll(async () => {
    await builder?.stop();
  });

  const vaultFlags = () => [
    "--vault-addr",
    vault.url,
    "--vault-role-id-file",
    scheduler.roleIdFile,
    "--vault-secret-id-file",
    scheduler.secretIdFile,
    "--vault-secret-path",
    SCHEDULER_PATH,
  ];

  it("builds as the scheduler with --vault-* flags, and revokes its token", async () => {
    const issued = vault.issuedTokens.length;
    const result = await requestBuild("delta", {}, vaultFlags());
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(finalOf(result)).toMatchObject({ type: "completed", status: "success" });
    expect(vault.issuedTokens.length).toBe(issued + 1);
    expect(vault.revokedTokens).toContain(vault.issuedTokens.at(-1));
  });

  it("takes every Vault setting from the environment, over HTTPS with VAULT_ADDR and VAULT_CACERT", async () => {
    const result = await requestBuild("alpha", {
      VAULT_ADDR: tlsVault.url,
      VAULT_CACERT: tlsVault.tls?.caFile ?? "",
      HOMELAB_DEPLOY_VAULT_ROLE_ID_FILE: tlsScheduler.roleIdFile,
      HOMELAB_DEPLOY_VAULT_SECRET_ID_FILE: tlsScheduler.secretIdFile,
      HOMELAB_DEPLOY_VAULT_SECRET_PATH: SCHEDULER_PATH,
    });
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
  });

  it("exits 2 naming the flags to fix when Vault refuses the AppRole", async () => {
    const wrong = join(dir, "client-wrong.secret-id");
    await writeFile(wrong, "11111111-1111-1111-1111-111111111111\n");
    const flags = vaultFlags();
    flags[flags.indexOf("--vault-secret-id-file") + 1] = wrong;
    const result = await requestBuild("alpha", {}, flags);
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(
      /^homelab-deploy: Vault at http:\/\/127\.0\.0\.1:\d+ refused the AppRole login \(400: invalid role or secret ID\): check --vault-role-id-file and --vault-secret-id-file$/,
    );
  });

  it("exits 2 at once when Vault is unreachable, instead of waiting like the daemon", async () => {
    const flags = vaultFlags();
    flags[1] = "http://127.0.0.1:1";
    const result = await requestBuild("alpha", {}, flags);
    expect(result.exitCode).toBe(2);
    // At the first refusal: one line, the error, and no retry before it (the daemon would log
    // "…; retrying in …" and try again).
    expect(result.stderr.trim().split("\n")).toEqual([expect.stringContaining("Vault at http://127.0.0.1:1 is unreachable (connect ECONNREFUSED 127.0.0.1:1)")]);
  });

  it("refuses to guess: a Vault source needs the client's own secret path", async () => {
    const flags = vaultFlags().slice(0, -2);
    const result = await requestBuild("alpha", {}, flags);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("--vault-secret-path: required");
  });
});

describe("secrets", () => {
  it("never appear in anything the daemons or the client printed", () => {
    // Guards against passing vacuously: the file started many daemons, and Vault issued tokens.
    expect(daemons.length).toBeGreaterThan(15);
    expect(vault.issuedTokens.length + tlsVault.issuedTokens.length).toBeGreaterThan(10);
    const printed = [...daemons.map((d) => d.output()), ...clientRuns.map((r) => r.stdout + r.stderr)].join("\n");
    expect(printed).toContain("fetched the NKey seed from Vault");
    for (const secret of [...secrets, ...vault.issuedTokens, ...tlsVault.issuedTokens]) {
      expect(printed).not.toContain(secret);
    }
  });
});
