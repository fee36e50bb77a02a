/**
 * Why homelab-deploy does not register with the NATS services API
 * ($SRV.PING/INFO/STATS): under the plan's permission table the builder may
 * neither subscribe to $SRV.> nor answer on _INBOX.>, and the server says
 * so. docs/protocol.md explains what an operator would have to add.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectAs } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

let nats: NatsServer;
beforeAll(async () => {
  nats = await startNatsServer();
});
afterAll(async () => {
  await nats?.stop();
});

/** Waits for the server to log a violation matching `pattern`. */
async function violation(pattern: RegExp): Promise<string | undefined> {
  for (let i = 0; i < 40; i++) {
    const line = nats.log().split("\n").find((l) => pattern.test(l));
    if (line) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

describe("the NATS services API under the plan's permissions", () => {
  it("is refused to the builder: it may not subscribe to $SRV.>", async () => {
    const nc = await connectAs(nats.url, nats.identities.builder);
    await nc.services.add({ name: "homelab_deploy_builder", version: "0.1.0" }).catch(() => undefined);
    await nc.flush().catch(() => undefined);
    const line = await violation(/Subscription Violation.*\$SRV\.PING/);
    expect(line).toContain(`Nkey "${nats.identities.builder.publicKey}"`);
    await nc.close();
  });

  it("is out of reach for deployers: they may not publish to $SRV.>", async () => {
    const nc = await connectAs(nats.url, nats.identities.testDeployer);
    nc.publish("$SRV.PING");
    await nc.flush().catch(() => undefined);
    const line = await violation(/Publish Violation.*\$SRV\.PING/);
    expect(line).toContain(`Nkey "${nats.identities.testDeployer.publicKey}"`);
    await nc.close();
  });
});
