/**
 * Gathering the answers of many daemons to one request (against a real
 * nats-server with the plan's permissions), and how the answers of several
 * builders to one control request combine.
 */
import type { NatsConnection } from "nats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { combineAnswers, gather, gatherControl } from "../../src/client/gather.js";
import { ConnectionError, NoBuilderError } from "../../src/errors.js";
import type { ControlResponse, StatusResponse } from "../../src/protocol.js";
import { connectAs } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

const status = (builder: string, jobId?: string): StatusResponse => ({
  type: "status",
  version: "0.1.0",
  builder,
  running: null,
  queued: jobId ? [{ jobId, repo: "r", target: "all", ref: null, position: 1, requesters: 1, enqueuedAt: "2026-12-01T00:00:00.000Z" }] : [],
});
const unknownJob: ControlResponse = { type: "rejected", code: "unknown_job", error: "no queued or running job j0000000001 (it may have finished already)" };

describe("combineAnswers", () => {
  it("keeps one answer per builder, sorted by name (a builder heard twice counts once)", () => {
    const combined = combineAnswers("status", [status("nix-cache03"), status("nix-cache02"), status("nix-cache03", "j0000000001")]);
    expect(combined).toEqual({ ok: true, builders: 3, answers: [status("nix-cache02"), status("nix-cache03", "j0000000001")] });
  });

  it("takes the holder's cancel answer over the others' unknown_job, whatever came first", () => {
    const holder: ControlResponse = { type: "cancel", jobId: "j0000000001", outcome: "removed" };
    expect(combineAnswers("cancel", [unknownJob, holder, unknownJob])).toEqual({ ok: true, builders: 3, answers: [holder] });
  });

  it("says unknown_job only when no builder has the job, and how many were asked", () => {
    expect(combineAnswers("cancel", [unknownJob])).toEqual({ ok: false, builders: 1, rejected: unknownJob });
    const combined = combineAnswers("cancel", [unknownJob, unknownJob]);
    expect(combined.ok).toBe(false);
    if (!combined.ok) {
      expect(combined.rejected.code).toBe("unknown_job");
      expect(combined.rejected.error).toBe(`${unknownJob.type === "rejected" ? unknownJob.error : ""}; none of the 2 builders that answered has it`);
    }
  });

  it("reports a refusal other than unknown_job first (a bad request is refused by all)", () => {
    const malformed: ControlResponse = { type: "rejected", code: "malformed_payload", error: "expected nothing" };
    expect(combineAnswers("status", [malformed, malformed])).toEqual({ ok: false, builders: 2, rejected: malformed });
    expect(combineAnswers("cancel", [unknownJob, malformed])).toEqual({ ok: false, builders: 2, rejected: malformed });
  });
});

describe("gather", () => {
  let nats: NatsServer;
  const open: NatsConnection[] = [];
  const as = async (role: keyof NatsServer["identities"]) => {
    const nc = await connectAs(nats.url, nats.identities[role]);
    open.push(nc);
    return nc;
  };
  const encoder = new TextEncoder();
  /** A daemon that answers each request on `subject` with `answers(request)`, one message each, in order. */
  const responder = async (nc: NatsConnection, subject: string, answers: () => unknown[]) => {
    nc.subscribe(subject, { callback: (_err, msg) => answers().forEach((answer) => msg.respond(encoder.encode(JSON.stringify(answer)))) });
    await nc.flush();
  };

  beforeAll(async () => {
    nats = await startNatsServer();
  });
  afterAll(async () => {
    for (const nc of open) await nc.close();
    await nats?.stop();
  });

  it("gathers every builder's answer to a control request on build.responses.", async () => {
    await responder(await as("builder"), "build.status", () => [status("builder-b")]);
    await responder(await as("builder"), "build.status", () => [status("builder-a")]);
    const answers = await gatherControl(await as("scheduler"), "status", undefined, { ackTimeoutMs: 10_000 });
    expect(answers.map((a) => (a as StatusResponse).builder).sort()).toEqual(["builder-a", "builder-b"]);
  });

  it("takes the reply prefix from the request: a deployer asks daemons that answer under deploy.responses.", async () => {
    // Stand-ins for deploy listeners (the admin deployer may publish deploy.>): two hosts answer deploy.discover.
    await responder(await as("adminDeployer"), "deploy.discover", () => [{ host: "web1" }]);
    await responder(await as("adminDeployer"), "deploy.discover", () => [{ host: "web2" }]);
    const schema = z.object({ host: z.string() });
    const deployer = await as("testDeployer");
    const answers = await gather(deployer, { subject: "deploy.discover", replyPrefix: "deploy.responses.", schema, responders: "listener" }, { ackTimeoutMs: 10_000 });
    expect(answers.map((a) => a.host).sort()).toEqual(["web1", "web2"]);
  });

  it("follows streams until the caller has every final answer it expects", async () => {
    const stream = (host: string) => () => [1, 2, 3].map((seq) => ({ host, seq, final: seq === 3 }));
    await responder(await as("adminDeployer"), "deploy.test.all", stream("web1"));
    await responder(await as("adminDeployer"), "deploy.test.all", stream("web2"));
    const seen: string[] = [];
    const schema = z.object({ host: z.string(), seq: z.number(), final: z.boolean() });
    const answers = await gather(
      await as("testDeployer"),
      { subject: "deploy.test.all", replyPrefix: "deploy.responses.", schema, responders: "listener" },
      {
        ackTimeoutMs: 10_000,
        // Far longer than the test's own timeout: only `complete` can end it.
        quietMs: 600_000,
        maxAfterFirstMs: 600_000,
        onAnswer: (a) => seen.push(`${a.host}:${a.seq}`),
        complete: (all) => new Set(all.filter((a) => a.final).map((a) => a.host)).size === 2,
      },
    );
    expect(answers).toHaveLength(6);
    expect(seen.filter((s) => s.startsWith("web1"))).toEqual(["web1:1", "web1:2", "web1:3"]);
  });

  it("says no daemon is listening when nobody serves the subject", async () => {
    const err = await gather(await as("testDeployer"), { subject: "deploy.test.nobody", replyPrefix: "deploy.responses.", schema: z.object({}), responders: "listener" }, { ackTimeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoBuilderError);
    expect((err as Error).message).toBe("no listener is listening on deploy.test.nobody (NATS reported no responders); is the listener running?");
  });

  it("fails at once, as refused, when NATS refuses the reply subject or the request to this user", async () => {
    await responder(await as("builder"), "build.status", () => [status("builder-a")]);
    // The scheduler may not subscribe under deploy.responses.; the test deployer may not publish deploy.prod.*.
    const refusedReply = await gather(
      await as("scheduler"),
      { subject: "build.status", replyPrefix: "deploy.responses.", schema: z.object({}) },
      { ackTimeoutMs: 600_000 },
    ).catch((e: unknown) => e);
    expect(refusedReply).toBeInstanceOf(ConnectionError);
    expect((refusedReply as Error).message).toMatch(/^NATS refused the request on build\.status \(Permissions Violation for Subscription to "deploy\.responses\./);
    const refusedRequest = await gather(
      await as("testDeployer"),
      { subject: "deploy.prod.web1", replyPrefix: "deploy.responses.", schema: z.object({}), responders: "listener" },
      { ackTimeoutMs: 600_000 },
    ).catch((e: unknown) => e);
    expect(refusedRequest).toBeInstanceOf(ConnectionError);
    expect(refusedRequest).toMatchObject({ reason: "refused" });
    expect((refusedRequest as Error).message).toMatch(/^NATS refused the request on deploy\.prod\.web1 \(Permissions Violation for Publish to "deploy\.prod\.web1"\)/);
  });
});
