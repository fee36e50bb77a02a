/**
 * pino loggers: JSON lines for journald, colourless pretty lines on a TTY.
 * The daemon logs to stdout; client commands log to stderr because their
 * stdout belongs to results (and to the MCP protocol).
 */
import { createRequire } from "node:module";
import { pino, type Logger, type LevelWithSilent } from "pino";
import type PinoPretty from "pino-pretty";

// pino-pretty (and its colour and date libraries) is only needed on a
// terminal; a daemon under systemd never loads it.
const require = createRequire(import.meta.url);

export type { Logger };

/**
 * Belt and braces: no code path passes secrets to the logger, but if one
 * ever does under these names the value is replaced before it is written.
 */
const REDACT_PATHS = [
  "seed",
  "nkeySeed",
  "token",
  "clientToken",
  "secretId",
  "secret_id",
  "*.seed",
  "*.nkeySeed",
  "*.token",
  "*.clientToken",
  "*.secretId",
  "*.secret_id",
];

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** 1 = stdout, 2 = stderr. */
  fd?: 1 | 2;
  /** Human-readable lines; defaults to whether the fd is a TTY. */
  pretty?: boolean;
  name?: string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const fd = options.fd ?? 1;
  const stream = fd === 1 ? process.stdout : process.stderr;
  const pretty = options.pretty ?? stream.isTTY === true;
  const base = {
    level: options.level ?? "info",
    name: options.name ?? "homelab-deploy",
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
  };
  if (pretty) {
    const colorize = process.env["NO_COLOR"] === undefined && stream.isTTY === true;
    const prettyStream = require("pino-pretty") as typeof PinoPretty;
    return pino(base, prettyStream({ destination: fd, sync: true, colorize, ignore: "pid,hostname,name" }));
  }
  return pino(base, pino.destination({ fd, sync: true }));
}
