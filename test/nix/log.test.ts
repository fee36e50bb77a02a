/**
 * The internal-json parser on streams recorded from real nix
 * (test/fixtures/nix-log/, Nix 2.8; re-record with record.ts there).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { NixLogState, drvName, parseNixLine, type NixProgress } from "../../src/nix/log.js";
import { ROOT } from "../support/cli.js";

async function replay(file: string, tailLines = 50) {
  const text = await readFile(join(ROOT, "test", "fixtures", "nix-log", file), "utf8");
  const state = new NixLogState(tailLines);
  const snapshots: NixProgress[] = [];
  for (const line of text.split("\n")) {
    if (state.push(line)) snapshots.push(structuredClone(state.progress));
  }
  return { state, snapshots };
}

describe("parseNixLine", () => {
  it("parses @nix lines and tolerates what it does not know", () => {
    expect(parseNixLine('@nix {"action":"stop","id":5}')).toEqual({ action: "stop", id: 5 });
    expect(parseNixLine('@nix {"action":"start","id":1,"type":105,"fields":["/nix/store/x-a.drv","",1,1],"machine":"ssh-ng://b"}')).toMatchObject({
      action: "start",
      type: 105,
      machine: "ssh-ng://b",
    });
    expect(parseNixLine('@nix {"action":"teleport","id":1}')).toEqual({ action: "ignored" });
    expect(parseNixLine("@nix {not json")).toEqual({ action: "plain", text: "@nix {not json" });
    expect(parseNixLine("warning: Git tree '/x' is dirty")).toEqual({ action: "plain", text: "warning: Git tree '/x' is dirty" });
    expect(parseNixLine("\u001b[31;1merror:\u001b[0m boom")).toEqual({ action: "plain", text: "error: boom" });
  });

  it("names derivations without their hash", () => {
    expect(drvName("/nix/store/qa25jimzn91kb3i4bqj10n7xd2h6g5by-dep1.drv")).toBe("dep1");
    expect(drvName("/nix/store/qa25jimzn91kb3i4bqj10n7xd2h6g5by-nixos-system-ns1-25.05.drv")).toBe("nixos-system-ns1-25.05");
  });
});

describe("NixLogState on a recorded successful build", () => {
  it("counts derivations up to the total and never backwards", async () => {
    const { state, snapshots } = await replay("success.jsonl");
    expect(state.progress.derivations).toEqual({ done: 5, expected: 5, running: 0, failed: 0 });
    const done = snapshots.map((s) => s.derivations.done);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(new Set(done)).toEqual(new Set([0, 1, 2, 3, 4, 5]));
    expect(snapshots.some((s) => s.building?.drv === "dep3")).toBe(true);
    expect(state.progress.building).toBeNull();
    expect(state.mainError()).toBeUndefined();
    expect(state.realiseStarted).toBe(true);
  });

  it("keeps only the last lines, in order, tagged with their derivation", async () => {
    const { state } = await replay("success.jsonl", 10);
    const tail = state.logTail();
    expect(tail).toHaveLength(10);
    expect(tail.at(-1)).toBe("multi-system> multi line 300");
    expect(tail[0]).toBe("multi-system> multi line 291");
  });
});

describe("NixLogState on a recorded build failure", () => {
  it("reports nix's error, the failed count and the end of the log", async () => {
    const { state } = await replay("build-failure.jsonl");
    expect(state.mainError()?.message).toMatch(/^error: builder for '\/nix\/store\/[a-z0-9]{32}-failing-system\.drv' failed with exit code 2$/);
    expect(state.progress.derivations.failed).toBe(1);
    expect(state.realiseStarted).toBe(true);
    const tail = state.logTail();
    expect(tail).toHaveLength(50);
    expect(tail).toContain("failing-system> failing line 120");
    expect(tail).toContain("failing-system> error: the service failed to start");
    expect(tail.every((line) => !line.includes("\u001b"))).toBe(true);
  });
});

describe("NixLogState on a recorded evaluation error", () => {
  it("never sees a build start and keeps the message with its location", async () => {
    const { state, snapshots } = await replay("eval-error.jsonl");
    expect(state.realiseStarted).toBe(false);
    expect(snapshots).toEqual([]);
    const error = state.mainError();
    expect(error?.message).toMatch(/^error: attribute 'services' missing/);
    expect(error?.message).not.toContain("\u001b");
    expect(error?.file).toMatch(/flake\.nix$/);
    expect(error?.line).toBe(40);
    expect(error?.column).toBeGreaterThan(0);
    // The --show-trace hint is kept in the log but is not the error.
    expect(state.logTail().at(-1)).toContain("--show-trace");
  });
});

describe("build log lines (read without JSON.parse until the tail is shown)", () => {
  const start = '@nix {"action":"start","fields":["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.drv","",1,1],"id":7,"level":3,"parent":0,"text":"building","type":105}';
  const texts = ['plain', 'quote " and \\ backslash', "tab\tand unicode ✓ \u00e9", "\u001b[31mred\u001b[0m", "ends with ],\"id\":1,\"type\":101}", ""];

  it("shows each line as nix meant it: escapes decoded, colours removed, tagged with its derivation", () => {
    const state = new NixLogState(20);
    state.push(start);
    for (const text of texts) state.push(`@nix {"action":"result","fields":[${JSON.stringify(text)}],"id":7,"type":101}`);
    state.push('@nix {"action":"result","fields":["after the hook"],"id":7,"type":107}');
    state.push('@nix {"action":"result","fields":["no such activity"],"id":99,"type":101}');
    expect(state.logTail()).toEqual([
      "hello-2.12> plain",
      'hello-2.12> quote " and \\ backslash',
      "hello-2.12> tab\tand unicode ✓ é",
      "hello-2.12> red",
      'hello-2.12> ends with ],"id":1,"type":101}',
      "hello-2.12> ",
      "hello-2.12> after the hook",
      "no such activity",
    ]);
  });

  it("takes the full parse for the same event written another way (keys in another order), with the same result", () => {
    const state = new NixLogState(5);
    state.push(start);
    state.push('@nix {"id":7,"type":101,"action":"result","fields":["reordered"]}');
    state.push('@nix {"action":"result","fields":["spaced"], "id":7, "type":101}');
    expect(state.logTail()).toEqual(["hello-2.12> reordered", "hello-2.12> spaced"]);
  });

  it("still follows progress between log lines", () => {
    const state = new NixLogState(5);
    state.push('@nix {"action":"start","fields":[],"id":1,"level":0,"parent":0,"text":"","type":104}');
    state.push(start);
    state.push('@nix {"action":"result","fields":["x"],"id":7,"type":101}');
    expect(state.push('@nix {"action":"result","fields":[0,1,1,0],"id":1,"type":105}')).toBe(true);
    expect(state.progress.derivations).toEqual({ done: 0, expected: 1, running: 1, failed: 0 });
  });
});

describe("NixLogState memory", () => {
  it("stays bounded however many lines nix prints", () => {
    const state = new NixLogState(50);
    state.push('@nix {"action":"start","id":1,"type":105,"fields":["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-flood.drv","",1,1]}');
    for (let i = 0; i < 100_000; i++) state.push(`@nix {"action":"result","id":1,"type":101,"fields":["line ${i}"]}`);
    expect(state.logTail()).toHaveLength(50);
    expect(state.logTail().at(-1)).toBe("flood> line 99999");
  });
});

describe("NixLogState with remote builders", () => {
  it("says which machine builds a derivation (the Build activity's second field), and nothing for a local one", () => {
    const state = new NixLogState(50);
    state.push('@nix {"action":"start","id":1,"type":105,"fields":["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-unbound.conf.drv","ssh-ng://builder@nix-build01?ssh-key=/etc/nix/id&remote-program=nix-daemon",1,1]}');
    expect(state.progress.building).toEqual({ drv: "unbound.conf", phase: null, machine: "ssh-ng://builder@nix-build01" });
    state.push('@nix {"action":"result","id":1,"type":104,"fields":["buildPhase"]}');
    expect(state.progress.building).toEqual({ drv: "unbound.conf", phase: "buildPhase", machine: "ssh-ng://builder@nix-build01" });
    // The remote builder's own log, relayed: the same derivation, no machine named, still remote.
    state.push('@nix {"action":"start","id":3,"type":105,"fields":["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-unbound.conf.drv","",1,1]}');
    expect(state.progress.building).toEqual({ drv: "unbound.conf", phase: null, machine: "ssh-ng://builder@nix-build01" });
    state.push('@nix {"action":"stop","id":3}');
    state.push('@nix {"action":"start","id":2,"type":105,"fields":["/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-ns1.drv","",1,1]}');
    expect(state.progress.building).toEqual({ drv: "nixos-system-ns1", phase: null });
    state.push('@nix {"action":"stop","id":2}');
    expect(state.progress.building).toEqual({ drv: "unbound.conf", phase: "buildPhase", machine: "ssh-ng://builder@nix-build01" });
  });

  it("blames the unreachable remote builder first, before nix's generic 'unable to start any build'", () => {
    const state = new NixLogState(50);
    // Recorded from Nix 2.8 with --builders 'ssh-ng://127.0.0.1 x86_64-linux' --max-jobs 0 and nothing listening.
    state.push(
      '@nix {"action":"msg","level":0,"msg":"cannot build on \'ssh-ng://127.0.0.1\': \\u001b[31;1merror:\\u001b[0m cannot open connection to remote store \'\\u001b[35;1mssh-ng://127.0.0.1\\u001b[0m\': \\u001b[35;1m\\u001b[31;1merror:\\u001b[0m unexpected end-of-file\\u001b[0m"}',
    );
    state.push(
      '@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\\u001b[31;1merror:\\u001b[0m unable to start any build; remote machines may not have all required system features.","raw_msg":"unable to start any build; remote machines may not have all required system features."}',
    );
    expect(state.mainError()?.message).toBe(
      "cannot build on 'ssh-ng://127.0.0.1': error: cannot open connection to remote store 'ssh-ng://127.0.0.1': error: unexpected end-of-file",
    );
  });
});

describe("NixLogState on recorded fetch and evaluation failures", () => {
  const NIXBLD_WARNING = "warning: the group 'nixbld' specified in 'build-users-group' does not exist";
  const NIXBLD_WARNING_JSON = `@nix ${JSON.stringify({ action: "msg", level: 1, msg: `\u001b[35;1mwarning:\u001b[0m ${NIXBLD_WARNING.slice(9)}` })}`;

  async function lines(file: string) {
    return (await readFile(join(ROOT, "test", "fixtures", "nix-log", file), "utf8")).split("\n");
  }

  /** The recorded stream, after the warnings a fresh machine adds to every nix call. */
  async function errorOf(file: string) {
    const state = new NixLogState(50);
    for (const line of [NIXBLD_WARNING, NIXBLD_WARNING_JSON, ...(await lines(file))]) state.push(line);
    return state.mainError();
  }

  it("names git's reason for a refused connection, not nix's 'program git failed'", async () => {
    const error = await errorOf("connection-refused.jsonl");
    expect(error?.message).toMatch(/^fatal: unable to access 'http:\/\/127\.0\.0\.1:\d+\/x\/': .*Couldn't connect to server \(program 'git' failed with exit code 128\)$/);
  });

  it("names a failed DNS lookup (recorded once; the tests make no DNS queries)", async () => {
    const error = await errorOf("dns-failure.jsonl");
    expect(error?.message).toMatch(/^fatal: unable to access 'http:\/\/no-such-host\.invalid\/x\/': Could not resolve host: no-such-host\.invalid/);
  });

  it("names a missing branch and a missing commit", async () => {
    expect((await errorOf("missing-branch.jsonl"))?.message).toMatch(/^fatal: ambiguous argument 'no-such-branch': unknown revision/);
    expect((await errorOf("missing-commit.jsonl"))?.message).toMatch(/^error: Cannot find Git revision '0123456789{1}/);
  });

  it("keeps a syntax error's message and location", async () => {
    const error = await errorOf("syntax-error.jsonl");
    expect(error).toMatchObject({ message: expect.stringMatching(/^error: syntax error, unexpected end of file/), line: 22, column: 7 });
    expect(error?.file).toMatch(/-source\/flake\.nix$/);
  });

  it("takes nix's plain-text stack overflow as the error", async () => {
    expect(await errorOf("stack-overflow.jsonl")).toEqual({ message: "error: stack overflow (possible infinite recursion)" });
  });

  it("never takes a warning for the error", async () => {
    const state = new NixLogState(50);
    state.push(NIXBLD_WARNING);
    state.push(NIXBLD_WARNING_JSON);
    expect(state.mainError()).toBeUndefined();
  });
});
