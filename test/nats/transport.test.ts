/**
 * The transport's flush over a live connection (the listener's "NATS
 * reached again" after a switch), against a real nats-server that is
 * killed and started again: while the connection is down the flush waits
 * for the reconnect, told by the state change, and settles only after it;
 * a transport that stops rejects the wait.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionError } from "../../src/errors.js";
import { fileSeedSource } from "../../src/nats/credentials.js";
import { NatsTransport, type ConnectionState } from "../../src/nats/transport.js";
import { memoryLogger } from "../support/logger.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

let nats: NatsServer;

beforeAll(async () => {
  nats = await startNatsServer();
});
afterAll(async () => {
  await nats?.stop();
});

async function connected(): Promise<{ transport: NatsTransport; events: string[]; reached: (state: ConnectionState) => Promise<void> }> {
  const transport = new NatsTransport({
    servers: [nats.url],
    name: "transport-test",
    seed: fileSeedSource(nats.identities.testListener.seedFile),
    logger: memoryLogger().logger,
    waitForServer: true,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  await transport.start();
  const events: string[] = [];
  transport.onStateChange((state) => events.push(state));
  const reached = (wanted: ConnectionState) =>
    new Promise<void>((resolve) => {
      const off = transport.onStateChange((state) => {
        if (state !== wanted) return;
        off();
        resolve();
      });
    });
  return { transport, events, reached };
}

describe("NatsTransport.flushConnected", () => {
  it("waits for the reconnect while NATS is down and flushes after it", async () => {
    const { transport, events, reached } = await connected();
    try {
      await transport.flushConnected();
      expect(events).toEqual([]);
      const down = reached("disconnected");
      await nats.stop();
      await down;
      const flushed = transport.flushConnected().then(() => events.push("flushed"));
      await nats.start();
      await flushed;
      expect(events).toEqual(["disconnected", "connected", "flushed"]);
    } finally {
      await transport.stop();
    }
  });

  it("rejects the wait when the transport stops before NATS is back", async () => {
    const { transport, reached } = await connected();
    const down = reached("disconnected");
    await nats.stop();
    await down;
    const flushed = transport.flushConnected();
    flushed.catch(() => undefined);
    await transport.stop(200);
    await expect(flushed).rejects.toBeInstanceOf(ConnectionError);
    expect(transport.state).toBe("closed");
    await nats.start();
  });
});
