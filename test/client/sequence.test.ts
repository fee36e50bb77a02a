import { describe, expect, it } from "vitest";
import { SeqOrder } from "../../src/client/sequence.js";

type M = { type: string; seq?: number; n?: string };
const m = (type: string, seq: number | undefined, n = `${type}${seq ?? ""}`): M => ({ type, seq, n });
const names = (list: M[]) => list.map((x) => x.n);

describe("SeqOrder", () => {
  it("hands messages on in order once, holding those after a gap until it fills", () => {
    const order = new SeqOrder<M>();
    expect(names(order.push(m("accepted", 1)))).toEqual(["accepted1"]);
    expect(names(order.push(m("host_finished", 3)))).toEqual([]);
    expect(order.waiting).toBe(true);
    expect(names(order.push(m("host_started", 2)))).toEqual(["host_started2", "host_finished3"]);
    expect(order.waiting).toBe(false);
    // A resend of what was handed on already.
    expect(order.push(m("host_started", 2))).toEqual([]);
    expect(order.push(m("host_finished", 3))).toEqual([]);
  });

  it("gives up on a gap that does not fill: the held messages go on in order, the missing numbers are reported", () => {
    const order = new SeqOrder<M>();
    order.push(m("accepted", 4));
    order.push(m("host_finished", 7));
    order.push(m("host_finished", 6));
    expect(order.flush()).toEqual({ messages: [m("host_finished", 6), m("host_finished", 7)], missing: [5] });
    expect(order.waiting).toBe(false);
    // The lost one, late: handed on, not held again.
    expect(names(order.push(m("host_started", 5)))).toEqual(["host_started5"]);
    expect(names(order.push(m("completed", 8)))).toEqual(["completed8"]);
  });

  it("passes snapshots through, drops stale ones, and learns of a gap from them", () => {
    const order = new SeqOrder<M>();
    order.push(m("accepted", 1));
    order.push(m("host_started", 2));
    expect(names(order.push(m("progress", 2)))).toEqual(["progress2"]);
    // A heartbeat that says message 3 was sent: 3 is missing.
    expect(names(order.push(m("heartbeat", 3)))).toEqual(["heartbeat3"]);
    expect(order.waiting).toBe(true);
    expect(names(order.push(m("host_finished", 3)))).toEqual(["host_finished3"]);
    // A progress of the host before, resent or delayed: stale.
    expect(order.push(m("progress", 2))).toEqual([]);
  });

  it("starts counting again at resumed (a new run of the builder)", () => {
    const order = new SeqOrder<M>();
    for (let seq = 1; seq <= 9; seq++) order.push(m("host_finished", seq));
    // The restarted builder saved seq 6: it goes on from 7.
    expect(names(order.push(m("resumed", 7)))).toEqual(["resumed7"]);
    expect(names(order.push(m("host_started", 8)))).toEqual(["host_started8"]);
    expect(order.waiting).toBe(false);
    // Resent after a NATS outage: still the same run.
    expect(order.push(m("resumed", 7))).toEqual([]);
    expect(order.push(m("host_started", 8))).toEqual([]);
  });

  it("a joiner starts after the job's number its accepted repeats", () => {
    const order = new SeqOrder<M>();
    expect(names(order.push({ type: "accepted", seq: 5, n: "accepted5", joined: true } as M))).toEqual(["accepted5"]);
    expect(names(order.push(m("queued", 6)))).toEqual(["queued6"]);
    expect(order.waiting).toBe(false);
  });

  it("passes messages without seq (older builders, rejected) straight on", () => {
    const order = new SeqOrder<M>();
    expect(names(order.push(m("rejected", undefined)))).toEqual(["rejected"]);
    expect(names(order.push(m("accepted", undefined)))).toEqual(["accepted"]);
  });
});
