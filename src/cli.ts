#!/usr/bin/env node
/**
 * homelab-deploy: one binary, one subcommand per file in src/commands/.
 * Exit codes: 0 ok, 1 a build failed, 2 usage, config or connection error.
 */
import { Command, CommanderError } from "commander";
import { registerBuild } from "./commands/build.js";
import { registerBuilder } from "./commands/builder.js";
import { registerListener } from "./commands/listener.js";
import { registerCancel } from "./commands/cancel.js";
import { registerDeploy } from "./commands/deploy.js";
import { registerMcp } from "./commands/mcp.js";
import { registerStatus } from "./commands/status.js";
import { registerHistory } from "./commands/history.js";
import { ExitCode, errorMessage, exitCodeOf } from "./errors.js";
import { VERSION } from "./version.js";

function program(): Command {
  const root = new Command("homelab-deploy")
    .description("Nix build service driven over NATS: a builder daemon, the clients that ask it to build, and an MCP server")
    .version(VERSION)
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  registerBuilder(root);
  registerListener(root);
  registerBuild(root);
  registerStatus(root);
  registerCancel(root);
  registerHistory(root);
  registerDeploy(root);
  registerMcp(root);
  return root;
}

async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version "fail" with exit code 0; real usage errors get 2.
      return err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    process.stderr.write(`homelab-deploy: ${errorMessage(err)}\n`);
    return exitCodeOf(err);
  }
}

const code = await main(process.argv);
// Exit explicitly: a client must not linger on open handles once it has its answer.
process.exit(code);
