/**
 * Log lines that go into a NATS message. NATS refuses payloads above its
 * max_payload (1 MiB by default), so a tail is cut to a fixed budget: long
 * lines are shortened and, if still too big, the oldest lines dropped.
 */
export const MAX_TAIL_LINE_CHARS = 2_000;
export const MAX_TAIL_CHARS = 128 * 1024;

/** An error message goes into every requester's host_finished and completed (once per host). */
export const MAX_ERROR_CHARS = 8 * 1024;

export function boundedText(text: string, max = MAX_ERROR_CHARS): string {
  return text.length > max ? `${text.slice(0, max)}… (cut at ${max} characters; the builder's log has it all)` : text;
}

export function boundedLogTail(lines: readonly string[], maxLine = MAX_TAIL_LINE_CHARS, maxTotal = MAX_TAIL_CHARS): string[] {
  const kept: string[] = [];
  let total = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    const raw = lines[i] as string;
    const line = raw.length > maxLine ? `${raw.slice(0, maxLine)}…` : raw;
    if (total + line.length > maxTotal) break;
    total += line.length;
    kept.push(line);
  }
  return kept.reverse();
}
