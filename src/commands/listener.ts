/** `homelab-deploy listener --config FILE`: the deploy listener on every NixOS host. */
import { Option, type Command } from "commander";
import { startListenerDaemon } from "../daemon/listener-daemon.js";
import { loadListenerConfig } from "../listener-config.js";
import { createLogger } from "../logger.js";
import { runDaemon } from "./daemon-lifecycle.js";

export function registerListener(program: Command): void {
  program
    .command("listener")
    .description("run the deploy listener: take deploy requests for this host from NATS, switch to the system the builder built, check health, roll back")
    .addOption(new Option("-c, --config <file>", "config file (YAML, or JSON)").env("HOMELAB_DEPLOY_LISTENER_CONFIG").makeOptionMandatory())
    .action(async (flags: { config: string }) => {
      const config = await loadListenerConfig(flags.config);
      const logger = createLogger({ level: config.log.level, fd: 1 });
      process.exitCode = await runDaemon(logger, "listener", () => startListenerDaemon(config, logger));
    });
}
