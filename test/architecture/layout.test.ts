/**
 * The architecture README and src/<folder>/README.md describe, checked: every
 * relative import in src/ points down the layers (or within its own folder),
 * never up, so a newcomer can trust `ls src/` and the READMEs.
 */
import { readdir, readFile } from "node:fs/promises";
import { dirname, join, normalize, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../support/cli.js";

const SRC = join(ROOT, "src");

/** Layer of each component; top-level files are the shared vocabulary (layer 0, with util). */
const LAYERS: Record<string, number> = {
  util: 0,
  "(top)": 0,
  nix: 1,
  nats: 1,
  builder: 2,
  client: 2,
  observability: 2,
  listener: 2,
  daemon: 3,
  /** The MCP server: a component the `mcp` command runs, like the daemon for `builder`. */
  mcp: 3,
  commands: 4,
  "cli.ts": 5,
};

function componentOf(file: string): string {
  const rel = relative(SRC, file);
  const [first, ...rest] = rel.split("/");
  if (rest.length === 0) return first === "cli.ts" ? "cli.ts" : "(top)";
  return first!;
}

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sourceFiles(path)));
    else if (entry.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

describe("src/ layout", () => {
  it("has a README in every component folder, and every folder has a layer", async () => {
    for (const entry of await readdir(SRC, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      expect(LAYERS[entry.name], `src/${entry.name} has no layer in this test`).toBeDefined();
      const readme = await readFile(join(SRC, entry.name, "README.md"), "utf8");
      expect(readme, `src/${entry.name}/README.md`).toMatch(/may import/i);
    }
  });

  it("imports only down the layers, or within a component", async () => {
    const violations: string[] = [];
    for (const file of await sourceFiles(SRC)) {
      const from = componentOf(file);
      const text = await readFile(file, "utf8");
      for (const match of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        const target = normalize(join(dirname(file), match[1]!));
        const to = componentOf(target);
        if (to === from) continue;
        const [a, b] = [LAYERS[from], LAYERS[to]];
        if (a === undefined || b === undefined) {
          violations.push(`${relative(ROOT, file)}: unknown component ${to}`);
        } else if (b > a || (b === a && a > 0)) {
          violations.push(`${relative(ROOT, file)} (${from}, layer ${a}) imports ${match[1]} (${to}, layer ${b})`);
        }
      }
    }
    expect(violations).toEqual([]);
  });
});
