/**
 * `homelab-deploy mcp --enable-deploy` end to end: the MCP server as a real
 * child process driven by the SDK's Client over stdio, against the deploy
 * fixture of test/support/listener.ts (real nats-server with the plan's
 * permissions, the builder, a test and a prod listener). The MCP server
 * connects as the test deployer, so NATS lets it deploy tier test only.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { createListener, startDeployFixture, type DeployFixture, type ListenerHost } from "../support/listener.js";

let fixture: DeployFixture;
let v2: Record<string, string>;
const listeners: ListenerHost[] = [];
const clients: Client[] = [];

async function startMcp(args: string[]): Promise<Client> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, "mcp", ...args],
    env: {
      HOMELAB_DEPLOY_NATS_URL: fixture.nats.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: fixture.nats.identities.testDeployer.seedFile,
      HOMELAB_DEPLOY_LOG_LEVEL: "info",
    },
    stderr: "pipe",
  });
  const client = new Client({ name: "homelab-deploy-test", version: "1.0.0" });
  await client.connect(transport);
  clients.push(client);
  return client;
}

const text = (result: CallToolResult) => result.content.map((c) => (c.type === "text" ? c.text : "")).join("\n");
const call = async (client: Client, name: string, args: Record<string, unknown> = {}) =>
  (await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 })) as CallToolResult;

beforeAll(async () => {
  fixture = await startDeployFixture();
  const v1 = await fixture.build(["web1", "db1"]);
  await fixture.flake.bump();
  v2 = await fixture.build(["web1", "db1"]);
  for (const [host, tier] of [
    ["web1", "test"],
    ["db1", "prod"],
  ] as const) {
    const listener = await createListener(fixture, { host, tier });
    await listener.install(v1[host] as string);
    await listener.start();
    listeners.push(listener);
  }
}, 240_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  for (const listener of listeners) await listener.process.stop("SIGKILL").catch(() => undefined);
  await fixture?.stop();
});

describe("mcp --enable-deploy", () => {
  it("offers deploy and list_hosts only with --enable-deploy", async () => {
    const without = await startMcp(["--enable-builds"]);
    expect((await without.listTools()).tools.map((t) => t.name)).not.toContain("deploy");
    const result = await call(without, "list_hosts");
    expect(result.isError).toBe(true);
    const withDeploy = await startMcp(["--enable-deploy"]);
    const names = (await withDeploy.listTools()).tools.map((t) => t.name);
    expect(names).toEqual(expect.arrayContaining(["deploy", "list_hosts"]));
  });

  it("list_hosts shows every listener and whether it is behind the builder's newest build", async () => {
    const client = await startMcp(["--enable-deploy"]);
    const result = await call(client, "list_hosts");
    expect(result.isError, text(result)).toBeFalsy();
    const hosts = (result.structuredContent as { hosts: Array<Record<string, unknown>> }).hosts;
    expect(hosts.map((h) => [h["host"], h["tier"], h["built"], h["behind"]])).toEqual([
      ["db1", "prod", v2["db1"], true],
      ["web1", "test", v2["web1"], true],
    ]);
  });

  it("deploy switches a test host to the builder's system; prod is refused by NATS for this identity", async () => {
    const client = await startMcp(["--enable-deploy"]);
    const ok = await call(client, "deploy", { tier: "test", target: "web1" });
    expect(ok.isError, text(ok)).toBeFalsy();
    expect(ok.structuredContent).toMatchObject({ outcome: "success", tier: "test", target: "web1", hosts: [{ host: "web1", status: "success", toplevel: v2["web1"], action: "switch" }] });
    expect(await listeners[0]!.current()).toBe(v2["web1"]);

    const refused = await call(client, "deploy", { tier: "prod", target: "db1" });
    expect(refused.isError).toBe(true);
    expect(text(refused)).toMatch(/NATS refused the request on deploy\.prod\.db1/);
    expect(await listeners[1]!.activations()).toEqual([]);
  });
});
