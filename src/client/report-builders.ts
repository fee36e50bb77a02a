/**
 * How the answers of several builders (one queue group) are shown: each
 * builder by name. With one builder this is exactly the single-builder text.
 */
import type { DiscoverResponse, StatusResponse } from "../protocol.js";
import { describeDiscover, describeStatus } from "./report.js";

/** Each builder's status (they already start with "builder <name>"), a blank line between. */
export function describeStatuses(statuses: readonly StatusResponse[], now = Date.now()): string[] {
  return statuses.flatMap((status, i) => [...(i > 0 ? [""] : []), ...describeStatus(status, now)]);
}

export function describeDiscovers(discovers: readonly DiscoverResponse[], repo?: string): string[] {
  if (discovers.length === 1) return describeDiscover(discovers[0] as DiscoverResponse, repo);
  return discovers.flatMap((discover) => [
    `builder ${discover.builder} (homelab-deploy ${discover.version}):`,
    ...describeDiscover(discover, repo).map((line) => `  ${line}`),
  ]);
}

/** Every repo some builder builds, each once, in the order first seen. */
export function reposOf(discovers: readonly DiscoverResponse[]): string[] {
  return [...new Set(discovers.flatMap((d) => d.repos.map((r) => r.name)))];
}
