/** A real pino logger whose JSON lines are kept in memory, for modules tested in-process. */
import { pino } from "pino";
import type { Logger } from "../../src/logger.js";
import type { LogLine } from "./daemon.js";

export function memoryLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: "debug" }, { write: (text: string) => void lines.push(JSON.parse(text) as LogLine) });
  return { logger, lines };
}
