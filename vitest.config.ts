import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    setupFiles: ["test/support/setup.ts"],
    testTimeout: 90_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Tests start real nats-servers, daemons and nix builds; two files at a
    // time keep a 2-core CI machine responsive.
    maxWorkers: 2,
  },
});
