/** `homelab-deploy builder --config FILE`: the long-running build service. */
import { Option, type Command } from "commander";
import { loadConfig } from "../config.js";
import { startDaemon } from "../daemon/daemon.js";
import { createLogger } from "../logger.js";
import { runDaemon } from "./daemon-lifecycle.js";

export function registerBuilder(program: Command): void {
  program
    .command("builder")
    .description("run the build service: take build requests from NATS and build them with nix, one host at a time")
    .addOption(new Option("-c, --config <file>", "config file (YAML, or JSON)").env("HOMELAB_DEPLOY_CONFIG").makeOptionMandatory())
    .action(async (flags: { config: string }) => {
      process.exitCode = await runBuilder(flags.config);
    });
}

export async function runBuilder(configFile: string): Promise<number> {
  const config = await loadConfig(configFile);
  const logger = createLogger({ level: config.log.level, fd: 1 });
  return runDaemon(logger, "builder", () => startDaemon(config, logger));
}
