/**
 * What a test started (servers, builders), undone after each test, last
 * first. A failing undo is swallowed so that it cannot hide the test's own
 * failure; every builder listens on build.>, so one test's must be gone
 * before the next test's requests.
 */
import { afterEach } from "vitest";

export function cleanupsAfterEach(): Array<() => Promise<unknown>> {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
  });
  return cleanups;
}
