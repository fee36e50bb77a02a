/**
 * What keeping a build costs per host, next to what the host's build costs
 * when nothing needs building: the GC root (`nix-store --add-root`) and the
 * closure comparison (`nix store diff-closures` + `nix path-info -S`, run
 * side by side as the builder runs them) versus `nix build` of an already
 * built host. The closures are test/fixtures/diff-closures/closures.nix
 * (two "systems" of a few packages each; real systems have thousands of
 * paths, so the comparison grows with them while the build floor does not).
 *   npm run build && npx tsx bench/keep-overhead.ts [runs]
 * No hard goal: the comparison runs only when a host's toplevel changed, so
 * nix had something to build; the ratio says how the keeping compares with
 * the floor of any host build.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { NixRunner } from "../src/nix/runner.js";
import { NixStore } from "../src/nix/store.js";
import { machine, percentile, round } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const runs = Number(process.argv[2] ?? 15);
const closures = join(here, "..", "test", "fixtures", "diff-closures", "closures.nix");
const env = { NIX_CONFIG: "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =" };
const build = async (generation: string) =>
  (await execa("nix-build", ["--no-out-link", closures, "--argstr", "generation", generation], { env, extendEnv: true })).stdout.trim();
const [before, after] = [await build("old"), await build("new")];
const installable = ["build", "--no-link", "--json", "--impure", "--expr", `import ${closures} { generation = "new"; }`];
await execa("nix", installable, { env, extendEnv: true });

const store = new NixStore(new NixRunner({ nixBin: "nix", killGraceMs: 1000, logTailLines: 10, env: { ...process.env, ...env } as Record<string, string> }));
const links = await mkdtemp(join(tmpdir(), "hd-bench-roots-"));
const buildMs: number[] = [];
const keepMs: number[] = [];
for (let i = 0; i < runs; i++) {
  let started = performance.now();
  await execa("nix", installable, { env, extendEnv: true });
  buildMs.push(performance.now() - started);
  started = performance.now();
  const [root, diff] = await Promise.all([store.addRoot(after, join(links, `r${i}`), 60_000), store.diffClosures(before, after, 60_000)]);
  keepMs.push(performance.now() - started);
  if (!root.ok || !diff.ok) throw new Error(`keeping failed: ${JSON.stringify({ root, diff })}`);
}

const median = (values: number[]) => round(percentile(values, 50), 1);
console.log(
  JSON.stringify(
    {
      runs,
      alreadyBuiltNixBuildMs: { median: median(buildMs), all: buildMs.map((v) => round(v, 0)) },
      keepMs: { median: median(keepMs), all: keepMs.map((v) => round(v, 0)) },
      ratio: round(percentile(keepMs, 50) / percentile(buildMs, 50), 2),
      machine: machine(),
    },
    null,
    2,
  ),
);
