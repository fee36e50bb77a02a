/**
 * Following one deploy's numbered messages from a listener (against a real
 * nats-server with the plan's permissions; the listener is the test's, so
 * that it can lose a message on purpose).
 */
import type { NatsConnection } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { followDeploy } from "../../src/client/deploy.js";
import type { DeployResponse } from "../../src/deploy-protocol.js";
import { connectAs } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const toplevel = `/nix/store/${"a".repeat(32)}-nixos-system-web1-1`;
const previous = `/nix/store/${"b".repeat(32)}-nixos-system-web1-0`;
const head = { deployId: "d0123456789", host: "web1" };
const messages: Record<number, Record<string, unknown>> = {
  1: { type: "accepted", seq: 1, ...head, tier: "test", action: "switch", ref: null, toplevel },
  2: { type: "started", seq: 2, ...head, action: "switch", toplevel, prebuilt: true },
  3: { type: "activating", seq: 3, ...head, action: "switch", toplevel, previous, generation: 2 },
  4: { type: "completed", seq: 4, ...head, action: "switch", status: "success", toplevel, previous, generation: 2, rebootRequired: false, changes: null, durationMs: 120 },
};

let nats: NatsServer;
let deployer: NatsConnection;
let listener: NatsConnection;

beforeAll(async () => {
  nats = await startNatsServer();
  [deployer, listener] = await Promise.all([connectAs(nats.url, nats.identities.testDeployer), connectAs(nats.url, nats.identities.testListener)]);
});

afterAll(async () => {
  await Promise.all([deployer?.close(), listener?.close()]);
  await nats?.stop();
});

/** A listener on deploy.test.web1 that answers a request with `sends`, in that order; `later` once the test asks. */
function fakeListener(sends: number[], later: number[] = []): { sendLater: () => void } {
  let reply: string | undefined;
  const publish = (seqs: number[]) => {
    for (const seq of seqs) listener.publish(reply as string, JSON.stringify(messages[seq]));
  };
  listener.subscribe("deploy.test.web1", {
    max: 1,
    callback: (_err, msg) => {
      reply = msg.reply;
      publish(sends);
    },
  });
  return { sendLater: () => publish(later) };
}

describe("followDeploy", () => {
  it("a message lost for good does not hold the final answer back: after the gap wait the rest goes on, in order", async () => {
    fakeListener([1, 2, 4]);
    await listener.flush();
    const seen: DeployResponse[] = [];
    // No idle limit: without the gap wait this would never end.
    const outcomes = await followDeploy(deployer, "deploy.test.web1", {}, ["web1"], { ackTimeoutMs: 10_000, idleTimeoutMs: 0, gapWaitMs: 300, onMessage: (m) => seen.push(m) });
    expect(seen.map((m) => (m as { seq?: number }).seq)).toEqual([1, 2, 4]);
    expect(outcomes.get("web1")).toMatchObject({ kind: "completed", message: { status: "success", seq: 4 } });
  });

  it("a resend that fills the gap is handed on in its place, before the final answer", async () => {
    const fake = fakeListener([1, 2, 4], [3]);
    await listener.flush();
    const seen: DeployResponse[] = [];
    const following = followDeploy(deployer, "deploy.test.web1", {}, ["web1"], {
      ackTimeoutMs: 10_000,
      idleTimeoutMs: 0,
      gapWaitMs: 600_000,
      onMessage: (m) => {
        seen.push(m);
        // Held: the completed waits behind the gap, so the resend goes out once `started` is through.
        if ((m as { seq?: number }).seq === 2) fake.sendLater();
      },
    });
    const outcomes = await following;
    expect(seen.map((m) => m.type)).toEqual(["accepted", "started", "activating", "completed"]);
    expect(outcomes.get("web1")).toMatchObject({ kind: "completed", message: { seq: 4 } });
  });
});
