/**
 * 10,000 random subjects and payloads under build.> against the real
 * daemon. Each must be answered (or ignored) exactly as docs/protocol.md
 * says. The oracle below is written from the document, with its own
 * patterns, not with the daemon's code. Afterwards a real build must still
 * succeed and the daemon's memory must not keep growing.
 */
import { readFile } from "node:fs/promises";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsConnection } from "nats";
import { runCli } from "../support/cli.js";
import { startBuilder, type BuilderProcess } from "../support/daemon.js";
import { createFixtureFlake, type FixtureFlake } from "../support/flake.js";
import { connectAs, sleep, type Message } from "../support/nats-client.js";
import { startNatsServer, type NatsServer } from "../support/nats-server.js";

// --- The oracle: docs/protocol.md, "Subjects and permissions", "Request", "rejected".
const REPOS = ["fixture"];
const HOSTS = ["a", "b"];
const HOST_RE = /^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;
const REPO_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const REF_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;
const RESERVED = ["responses", "discover", "status", "cancel", "history"];

type Expected = { answer: "ignored" } | { answer: "rejected"; code: string | string[] } | { answer: "accepted_or_queue_full" } | { answer: "control"; type: string[] };

function validRef(ref: string): boolean {
  return REF_RE.test(ref) && !ref.includes("..") && !ref.includes("//") && !ref.includes("/.") && !ref.endsWith(".lock") && !/[/.]$/.test(ref);
}

function body(payload: Uint8Array): { json: unknown } | { invalid: true } {
  if (payload.length > 4096) return { invalid: true };
  const text = new TextDecoder().decode(payload).trim();
  if (text === "") return { json: {} };
  try {
    return { json: JSON.parse(text) };
  } catch {
    return { invalid: true };
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function expected(subject: string, payload: Uint8Array): Expected {
  if (subject === "build.responses" || subject.startsWith("build.responses.")) return { answer: "ignored" };
  const tokens = subject.split(".");
  const parsed = body(payload);
  if (tokens.length === 2) {
    const name = tokens[1] as string;
    if (!["discover", "status", "cancel", "history"].includes(name)) return { answer: "rejected", code: "invalid_name" };
    if ("invalid" in parsed || !isObject(parsed.json)) return { answer: "rejected", code: "malformed_payload" };
    const keys = Object.keys(parsed.json);
    if (name === "discover") {
      const ok = keys.every((k) => k === "refresh") && (parsed.json.refresh === undefined || typeof parsed.json.refresh === "boolean");
      return ok ? { answer: "control", type: ["discover"] } : { answer: "rejected", code: "malformed_payload" };
    }
    if (name === "history") {
      const { repo, host } = parsed.json;
      const structural = !keys.every((k) => k === "repo" || k === "host") || typeof repo !== "string" || (host !== undefined && typeof host !== "string");
      const badName = (typeof repo === "string" && (!REPO_RE.test(repo) || RESERVED.includes(repo))) || (typeof host === "string" && !HOST_RE.test(host));
      // With both kinds of problem, the first one zod reports decides.
      if (structural && badName) return { answer: "rejected", code: ["malformed_payload", "invalid_name"] };
      if (structural) return { answer: "rejected", code: "malformed_payload" };
      if (badName) return { answer: "rejected", code: "invalid_name" };
      if (!REPOS.includes(repo as string)) return { answer: "rejected", code: "unknown_repo" };
      return { answer: "control", type: ["history"] };
    }
    if (name === "status") return keys.length === 0 ? { answer: "control", type: ["status"] } : { answer: "rejected", code: "malformed_payload" };
    const jobId = parsed.json.jobId;
    const ok = keys.length === 1 && typeof jobId === "string" && /^j[0-9a-f]{10}$/.test(jobId);
    return ok ? { answer: "rejected", code: "unknown_job" } : { answer: "rejected", code: "malformed_payload" };
  }
  if (tokens.length !== 3) return { answer: "rejected", code: "invalid_name" };
  const [, repo, target] = tokens as [string, string, string];
  if (!REPO_RE.test(repo) || RESERVED.includes(repo)) return { answer: "rejected", code: "invalid_name" };
  if (!REPOS.includes(repo)) return { answer: "rejected", code: "unknown_repo" };
  if (target !== "all" && !HOST_RE.test(target)) return { answer: "rejected", code: "invalid_name" };
  if ("invalid" in parsed || !isObject(parsed.json)) return { answer: "rejected", code: "malformed_payload" };
  const { ref, ...rest } = parsed.json;
  if (Object.keys(rest).length > 0) return { answer: "rejected", code: "malformed_payload" };
  if (ref !== undefined && typeof ref !== "string") return { answer: "rejected", code: "malformed_payload" };
  if (typeof ref === "string" && !validRef(ref)) return { answer: "rejected", code: "invalid_name" };
  if (target !== "all" && !HOSTS.includes(target)) return { answer: "rejected", code: "unknown_host" };
  return { answer: "accepted_or_queue_full" };
}

// --- Generators. Tokens never hold what NATS itself forbids in a subject
// (whitespace, ".", "*", ">"); everything else is fair game.
// (No "..": a subject with an empty token is not a valid NATS subject and never reaches anyone.)
const hostile = ["-rf", "$(id)", "a;b", "`id`", "a|b", "-", "x".repeat(64), "ä", "a'b", "\\", "%00", "--upload-pack=x", "${IFS}"];
const token = fc.oneof(
  fc.constantFrom("fixture", "nope", "a", "b", "all", "c", ...RESERVED, ...hostile),
  fc.stringMatching(/^[A-Za-z0-9_-]{1,70}$/),
  fc.string({ minLength: 1, maxLength: 20, unit: "binary" }).filter((t) => !/[\s.*>\u0000-\u001f\u007f]/.test(t) && t.length > 0),
);
const subject = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(token, token).map(([r, t]) => `build.${r}.${t}`) },
  { weight: 2, arbitrary: token.map((t) => `build.${t}`) },
  { weight: 1, arbitrary: fc.array(token, { minLength: 3, maxLength: 5 }).map((ts) => `build.${ts.join(".")}`) },
  { weight: 1, arbitrary: token.map((t) => `build.responses.${t}`) },
  { weight: 1, arbitrary: fc.constantFrom("build.fixture.a", "build.fixture.b", "build.fixture.all", "build.status", "build.discover", "build.cancel", "build.history") },
);
const refLike = fc.oneof(fc.constantFrom("main", "no-such-branch", "feature/x", "a..b", "-x", "v1.0", "x.lock"), fc.string({ maxLength: 30 }));
const encoder = new TextEncoder();
const payload = fc.oneof(
  { weight: 4, arbitrary: fc.constant(new Uint8Array()) },
  { weight: 2, arbitrary: refLike.map((ref) => encoder.encode(JSON.stringify({ ref }))) },
  { weight: 1, arbitrary: fc.record({ refresh: fc.oneof(fc.boolean(), fc.integer()) }).map((o) => encoder.encode(JSON.stringify(o))) },
  { weight: 1, arbitrary: fc.oneof(fc.stringMatching(/^j[0-9a-f]{10}$/), fc.string()).map((jobId) => encoder.encode(JSON.stringify({ jobId }))) },
  { weight: 1, arbitrary: fc.record({ repo: fc.oneof(fc.constantFrom("fixture", "nope", "history"), fc.string(), fc.integer()), host: fc.oneof(token, fc.integer()) }, { requiredKeys: [] }).map((o) => encoder.encode(JSON.stringify(o))) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => encoder.encode(JSON.stringify(v))) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((s) => encoder.encode(s)) },
  { weight: 1, arbitrary: fc.integer({ min: 4097, max: 9000 }).map((n) => encoder.encode(JSON.stringify({ ref: "x".repeat(n) }))) },
);

// --- The run.
let nats: NatsServer;
let flake: FixtureFlake;
let builder: BuilderProcess;
let nc: NatsConnection;
const answers = new Map<string, Message[]>();

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

beforeAll(async () => {
  nats = await startNatsServer();
  flake = await createFixtureFlake("tiny-flake");
  builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { fixture: flake.url },
    build: { maxQueue: 8, timeout: "1m" },
    extra: { log: { level: "info" } },
  });
  nc = await connectAs(nats.url, nats.identities.testDeployer);
  nc.subscribe("build.responses.fuzz.>", {
    callback: (_err, msg) => {
      const list = answers.get(msg.subject) ?? [];
      list.push(JSON.parse(new TextDecoder().decode(msg.data)) as Message);
      answers.set(msg.subject, list);
    },
  });
  await nc.flush();
});

afterAll(async () => {
  await nc?.close();
  await builder?.stop();
  await nats?.stop();
});

async function fuzzRound(round: number, count: number): Promise<void> {
  const cases = fc.sample(fc.tuple(subject, payload), { numRuns: count, seed: 4242 + round });
  const expectations: Array<{ reply: string; subject: string; expect: Expected; payload: Uint8Array }> = [];
  for (const [index, [subj, data]] of cases.entries()) {
    const reply = `build.responses.fuzz.${round}.${index}`;
    nc.publish(subj, data, { reply });
    expectations.push({ reply, subject: subj, expect: expected(subj, data), payload: data });
    if (index % 250 === 249) await nc.flush();
  }
  await nc.flush();
  const deadline = Date.now() + 60_000;
  const answered = () => expectations.every((e) => e.expect.answer === "ignored" || (answers.get(e.reply)?.length ?? 0) > 0);
  while (!answered() && Date.now() < deadline) await sleep(100);
  // Give the ignored ones a moment to show they stay unanswered.
  await sleep(500);
  const wrong: string[] = [];
  for (const e of expectations) {
    const first = answers.get(e.reply)?.[0];
    const describe = `${JSON.stringify(e.subject)} ${JSON.stringify(new TextDecoder().decode(e.payload).slice(0, 80))}: expected ${JSON.stringify(e.expect)}, got ${JSON.stringify(first)}`;
    switch (e.expect.answer) {
      case "ignored":
        if (first !== undefined) wrong.push(describe);
        break;
      case "rejected":
        if (first?.type !== "rejected" || ![e.expect.code].flat().includes(String(first.code))) wrong.push(describe);
        break;
      case "control":
        if (!e.expect.type.includes(String(first?.type))) wrong.push(describe);
        break;
      case "accepted_or_queue_full":
        if (!(first?.type === "accepted" || (first?.type === "rejected" && first.code === "queue_full"))) wrong.push(describe);
        break;
    }
  }
  expect(wrong.slice(0, 20), `${wrong.length} of ${count} answered wrongly`).toEqual([]);
  // Every accepted request also gets its final message.
  const acceptedReplies = expectations.filter((e) => answers.get(e.reply)?.[0]?.type === "accepted").map((e) => e.reply);
  const finished = () => acceptedReplies.every((r) => answers.get(r)?.some((m) => m.type === "completed"));
  for (const end = Date.now() + 120_000; !finished() && Date.now() < end; ) await sleep(200);
  expect(acceptedReplies.filter((r) => !answers.get(r)?.some((m) => m.type === "completed"))).toEqual([]);
}

describe("fuzzing build.> with 10,000 requests", () => {
  it("answers or ignores each as documented, survives, builds afterwards, and does not leak", async () => {
    const pid = builder.child.pid as number;
    const baseline = await rssMiB(pid);
    await fuzzRound(1, 5_000);
    const afterFirst = await rssMiB(pid);
    await fuzzRound(2, 5_000);
    await sleep(1_000);
    const afterSecond = await rssMiB(pid);

    expect(builder.child.exitCode).toBeNull();
    await flake.bump();
    const build = await runCli(["build", "fixture", "all"], {
      HOMELAB_DEPLOY_NATS_URL: nats.url,
      HOMELAB_DEPLOY_NKEY_SEED_FILE: nats.identities.scheduler.seedFile,
    });
    expect(build.exitCode).toBe(0);
    expect(builder.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    // The second 5,000 requests must not cost what the first did: growth
    // that continues is a leak. (V8 keeps some heap once grown, so "near the
    // baseline" is a bound, not equality.)
    console.log(`fuzz RSS MiB: baseline ${baseline.toFixed(1)}, after 5k ${afterFirst.toFixed(1)}, after 10k ${afterSecond.toFixed(1)}`);
    expect(afterSecond - afterFirst).toBeLessThan(15);
    expect(afterSecond - baseline).toBeLessThan(60);
  });
});
