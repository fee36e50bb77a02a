/**
 * What can be cut from the listener's messages to fit the NATS server's
 * max_payload (the mechanism is src/nats/fit-payload.ts). Only `completed`
 * and `health` can grow: a command's output in an error's cause, a long
 * list of changed packages. The final answer always goes out, at worst
 * without those details, saying so.
 */
import type { DeployCompleted, DeployHealth, DeployResponse } from "../deploy-protocol.js";
import { cutText } from "../nats/fit-payload.js";
import { keepPackages } from "../protocol.js";

function completedSteps(message: DeployCompleted): DeployCompleted[] {
  const withCause = (max: number): DeployCompleted =>
    message.error ? { ...message, error: { ...message.error, message: cutText(message.error.message, 1_000) as string, ...(message.error.cause !== undefined ? { cause: cutText(message.error.cause, max) as string } : {}) } } : message;
  const noPackages = (m: DeployCompleted): DeployCompleted =>
    m.changes ? { ...m, changes: keepPackages(m.changes, 0) } : m;
  return [withCause(4_000), noPackages(withCause(500)), { ...noPackages(withCause(0)), changes: null }];
}

function healthSteps(message: DeployHealth): DeployHealth[] {
  const cut = (max: number): DeployHealth => ({
    ...message,
    checks: message.checks.map((c) => ({ ...c, argv: c.argv.map((a) => cutText(a, 200) as string), ...(c.error !== undefined ? { error: cutText(c.error, max) as string } : {}) })),
  });
  return [cut(2_000), cut(200), { ...message, checks: message.checks.filter((c) => !c.ok).slice(0, 1).map((c) => ({ ...c, argv: c.argv.slice(0, 1) })) }];
}

/** The cut versions of a deploy message, least loss first. */
export function deployCutSteps(message: DeployResponse): DeployResponse[] {
  if (message.type === "completed") return completedSteps(message);
  if (message.type === "health") return healthSteps(message);
  return [];
}
