/**
 * A real Chromium for the status page's tests, driven by playwright-core:
 * Debian's `chromium` found on PATH (.ci/setup installs it), never a
 * downloaded browser. playwright's launch() gives every browser a fresh
 * temporary profile (user-data-dir).
 */
import { access, constants } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

export async function chromiumPath(): Promise<string> {
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    for (const name of ["chromium", "chromium-browser"]) {
      const path = join(dir, name);
      try {
        await access(path, constants.X_OK);
        return path;
      } catch {
        // not in this directory
      }
    }
  }
  throw new Error("chromium is not on PATH; install it (bash .ci/setup does, on Debian/Ubuntu)");
}

export async function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: await chromiumPath(), headless: true, args: CHROMIUM_ARGS });
}
