/** The CLI as a user meets it: help, exit codes, config errors. */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";

describe("homelab-deploy", () => {
  it("has --help for itself and every subcommand, exiting 0", async () => {
    const root = await runCli(["--help"]);
    expect(root.exitCode).toBe(0);
    expect(root.stdout).toMatch(/builder \[options\]/);
    expect(root.stdout).toMatch(/build \[options\] \[repo\] \[target\]/);
    expect(root.stdout).toMatch(/status \[options\]/);
    expect(root.stdout).toMatch(/cancel \[options\] <job>/);
    expect(root.stdout).toMatch(/mcp \[options\]/);
    const mcp = await runCli(["mcp", "--help"]);
    expect(mcp.exitCode).toBe(0);
    for (const flag of ["--enable-builds", "--nats-url <url>", "--nkey-seed-file <file>", "--idle-timeout <duration>"]) expect(mcp.stdout).toContain(flag);
    const builder = await runCli(["builder", "--help"]);
    expect(builder.exitCode).toBe(0);
    expect(builder.stdout).toContain("--config <file>");
    const build = await runCli(["build", "--help"]);
    expect(build.exitCode).toBe(0);
    for (const flag of [
      "--ref <ref>",
      "--json",
      "--nats-url <url>",
      "--nkey-seed-file <file>",
      "HOMELAB_DEPLOY_NATS_URL",
      "--vault-addr <url>",
      "--vault-cacert <file>",
      "--vault-role-id-file <file>",
      "--vault-secret-id-file <file>",
      "--vault-kv-mount <mount>",
      "--vault-secret-path <path>",
      "--vault-secret-field <field>",
      "HOMELAB_DEPLOY_VAULT_ROLE_ID_FILE",
    ]) {
      expect(build.stdout).toContain(flag);
    }
  });

  it("exits 2 on usage errors", async () => {
    expect((await runCli(["bogus"])).exitCode).toBe(2);
    expect((await runCli(["build", "only-repo"])).exitCode).toBe(2);
    expect((await runCli(["builder"])).exitCode).toBe(2);
    const badTimeout = await runCli(["mcp", "--ack-timeout", "soon"]);
    expect(badTimeout.exitCode).toBe(2);
    expect(badTimeout.stderr).toContain('invalid --ack-timeout "soon"');
    const noCreds = await runCli(["build", "nixos-servers", "ns1"], { HOMELAB_DEPLOY_NKEY_SEED_FILE: "" });
    expect(noCreds.exitCode).toBe(2);
    expect(noCreds.stderr).toMatch(/^homelab-deploy: no NATS credentials: pass --nkey-seed-file FILE .*--vault-role-id-file FILE --vault-secret-id-file FILE/);
  });

  it("refuses two NKey sources, and names each missing Vault setting", async () => {
    const both = await runCli(["build", "nixos-servers", "ns1", "--vault-role-id-file", "/r"], { HOMELAB_DEPLOY_NKEY_SEED_FILE: "/s" });
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toContain("two NKey sources: pass --nkey-seed-file or the --vault-* options, not both");
    const partial = await runCli(["build", "nixos-servers", "ns1", "--vault-role-id-file", "/r", "--vault-secret-path", "a/b", "--vault-kv-mount", "/x"], {
      VAULT_ADDR: "",
    });
    expect(partial.exitCode).toBe(2);
    expect(partial.stderr).toContain("--vault-addr: required: the Vault server URL (or set VAULT_ADDR)");
    expect(partial.stderr).toContain("--vault-secret-id-file: required (expected string)");
    expect(partial.stderr).toMatch(/--vault-kv-mount: expected a Vault path/);
  });

  it("prints its version", async () => {
    const { exitCode, stdout } = await runCli(["--version"]);
    expect(exitCode).toBe(0);
    expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it("refuses a bad builder config with the key's path and exit code 2", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-cli-"));
    const file = join(dir, "config.yaml");
    await writeFile(
      file,
      ["nats:", "  nkeySeedFile: /x", "  colour: blue", "repos:", "  nixos-servers:", "    url: ftp//nope", "build:", "  timeout: soon", ""].join("\n"),
    );
    const { exitCode, stderr, stdout } = await runCli(["builder", "--config", file]);
    expect(exitCode).toBe(2);
    expect(stdout).toBe("");
    expect(stderr).toContain(`invalid config ${file}`);
    expect(stderr).toContain("nats.colour: unknown key");
    expect(stderr).toContain("nats.url: required: the NATS server URL");
    expect(stderr).toMatch(/repos\.nixos-servers\.url: expected a flake URL/);
    expect(stderr).toContain('build.timeout: expected a duration like 30s, 10m or 1h, got "soon"');
  });

  it("exits 2 when the builder's seed file is unusable, without printing its content", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hd-cli-"));
    const seed = join(dir, "seed");
    await writeFile(seed, "SAAGNSECRETNOTAUSERSEED\n");
    const file = join(dir, "config.json");
    await writeFile(
      file,
      JSON.stringify({ nats: { url: "nats://127.0.0.1:1", nkeySeedFile: seed }, repos: { r: { url: "git+file:///nonexistent" } }, stateDir: join(dir, "state") }),
    );
    const { exitCode, stderr, stdout } = await runCli(["builder", "--config", file]);
    expect(exitCode).toBe(2);
    expect(stderr).toContain(`seed file ${seed} holds an NKey seed, but not a user seed`);
    expect(stderr + stdout).not.toContain("SAAGNSECRET");
  });
});
