/**
 * The shared responder with a protocol of its own (as a second daemon would
 * use it), over a real nats-server with the plan's users: numbering by the
 * protocol's `Numbering`, a joiner's acknowledgement repeating the last
 * number, unnumbered answers, cutting to max_payload with the protocol's
 * steps, and resending numbered messages (never snapshots) after a NATS
 * restart, which the requester side's SeqOrder drops by `seq`.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SeqOrder } from "../../src/client/sequence.js";
import { fileSeedSource } from "../../src/nats/credentials.js";
import { payloadBytes } from "../../src/nats/fit-payload.js";
import { Responder } from "../../src/nats/responder.js";
import { NatsTransport } from "../../src/nats/transport.js";
import type { Numbering } from "../../src/protocol.js";
import { memoryLogger } from "../support/logger.js";
import { connectAs, Inbox, type Message } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

/** A made-up protocol, shaped like a deploy's: an ack, snapshots while it runs, a final with details. */
type DeployMessage =
  | { type: "accepted"; seq?: number | undefined; deployId: string; joined: boolean }
  | { type: "step"; seq?: number | undefined; deployId: string; name: string }
  | { type: "tick"; seq?: number | undefined; deployId: string; elapsedMs: number }
  | { type: "finished"; seq?: number | undefined; deployId: string; output: string };
const NUMBERING: Numbering = { snapshots: new Set(["tick"]), unnumbered: new Set(["refused"]) };
const MAX_PAYLOAD = 4_096;

let nats: NatsServer;

beforeAll(async () => {
  nats = await startNatsServer({ maxPayload: MAX_PAYLOAD });
});
afterAll(async () => {
  await nats?.stop();
});

async function setUp() {
  const { logger, lines } = memoryLogger();
  const transport = new NatsTransport({
    servers: [nats.url],
    name: "responder-test",
    seed: fileSeedSource(nats.identities.builder.seedFile),
    logger,
    waitForServer: true,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  await transport.start();
  const sent: Array<{ deployId: string; message: DeployMessage }> = [];
  const responder = new Responder<DeployMessage, { id: string; seq: number; requesters: Set<string> }>({
    transport,
    logger,
    numbering: NUMBERING,
    cutSteps: (message) => (message.type === "finished" ? [{ ...message, output: `${message.output.slice(0, 100)}… (cut)` }] : []),
    onSent: (conversation, message) => sent.push({ deployId: conversation.id, message }),
  });
  const nc = await connectAs(nats.url, nats.identities.scheduler);
  const [first, joiner] = [await Inbox.open(nc), await Inbox.open(nc)];
  const conversation = { id: "d1", seq: 0, requesters: new Set([first.subject]) };
  const stop = async () => {
    responder.stop();
    await transport.stop();
    await nc.close();
  };
  return { transport, responder, conversation, first, joiner, sent, lines, stop };
}

const seqs = (messages: Message[]) => messages.map((m) => `${m.type}:${m.seq ?? "-"}`);

describe("Responder", () => {
  it("numbers by the protocol's Numbering, repeats the last number for a joiner's ack, and cuts a final to max_payload", async () => {
    const { responder, conversation, first, joiner, sent, lines, stop } = await setUp();
    try {
      responder.sendTo(first.subject, conversation, { type: "accepted", deployId: "d1", joined: false });
      responder.send(conversation, { type: "tick", deployId: "d1", elapsedMs: 5 });
      responder.send(conversation, { type: "step", deployId: "d1", name: "copy" });
      conversation.requesters.add(joiner.subject);
      responder.sendTo(joiner.subject, conversation, { type: "accepted", deployId: "d1", joined: true }, { repeatLast: true });
      responder.send(conversation, { type: "tick", deployId: "d1", elapsedMs: 10 });
      responder.send(conversation, { type: "finished", deployId: "d1", output: "x".repeat(10_000) });
      responder.answer(first.subject, { type: "refused" });
      await first.waitFor((m) => m.type === "refused");
      await joiner.waitFor((m) => m.type === "finished");

      expect(seqs(first.messages)).toEqual(["accepted:1", "tick:1", "step:2", "tick:2", "finished:3", "refused:-"]);
      expect(seqs(joiner.messages)).toEqual(["accepted:2", "tick:2", "finished:3"]);
      const finished = first.messages.find((m) => m.type === "finished")!;
      expect(payloadBytes(finished)).toBeLessThanOrEqual(MAX_PAYLOAD);
      expect(finished.output).toMatch(/… \(cut\)$/);
      // Observers get every conversation message, numbered and uncut.
      expect(sent.map((s) => `${s.message.type}:${s.message.seq}`)).toEqual(["accepted:1", "tick:1", "step:2", "accepted:2", "tick:2", "finished:3"]);
      expect((sent.at(-1)!.message as { output: string }).output).toHaveLength(10_000);
      expect(lines.some((l) => l.type === "finished" && l.maxPayload === MAX_PAYLOAD)).toBe(true);
    } finally {
      await stop();
    }
  });

  it("calls the owner's heartbeat every interval until stopHeartbeats(); its ticks repeat the last number", async () => {
    const { responder, conversation, first, stop } = await setUp();
    try {
      responder.send(conversation, { type: "step", deployId: "d1", name: "switch" });
      let beats = 0;
      responder.startHeartbeats(50, () => {
        beats++;
        responder.send(conversation, { type: "tick", deployId: "d1", elapsedMs: beats });
      });
      await first.waitFor(() => first.messages.filter((m) => m.type === "tick").length >= 3, 10_000);
      responder.stopHeartbeats();
      const afterStop = beats;
      // Another conversation message goes through while no tick follows it.
      responder.send(conversation, { type: "finished", deployId: "d1", output: "ok" });
      await first.waitFor((m) => m.type === "finished");
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(beats).toBe(afterStop);
      const ticks = first.messages.filter((m) => m.type === "tick");
      expect(ticks.every((m) => m.seq === 1)).toBe(true);
      expect(seqs(first.messages).at(-1)).toBe("finished:2");
    } finally {
      await stop();
    }
  });

  it("sends numbered messages again after a NATS restart, never snapshots; SeqOrder hands each on once", async () => {
    const { transport, responder, conversation, first, stop } = await setUp();
    try {
      const reconnected = new Promise<void>((resolve) => {
        let down = false;
        transport.onStateChange((state) => {
          if (state === "disconnected") down = true;
          if (state === "connected" && down) resolve();
        });
      });
      responder.send(conversation, { type: "step", deployId: "d1", name: "copy" });
      responder.send(conversation, { type: "tick", deployId: "d1", elapsedMs: 1 });
      await first.waitFor((m) => m.type === "tick");
      await nats.stop();
      await nats.start();
      await reconnected;
      responder.send(conversation, { type: "finished", deployId: "d1", output: "ok" });
      // The resends come 2 s after the reconnect: both numbered messages, more than once in 30 s, the tick never.
      await first.waitFor((m) => m.type === "step" && first.messages.filter((n) => n.type === "step").length >= 2, 20_000);
      await first.waitFor(() => first.messages.filter((n) => n.type === "finished").length >= 2, 20_000);
      expect(first.messages.filter((m) => m.type === "tick")).toHaveLength(1);

      const order = new SeqOrder<Message>(NUMBERING);
      const handedOn = first.messages.flatMap((m) => order.push(m));
      expect(seqs(handedOn)).toEqual(["step:1", "tick:1", "finished:2"]);
    } finally {
      await stop();
    }
  });
});
