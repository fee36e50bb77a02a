/**
 * The usual end-to-end setup: a nats-server with the plan's users, both
 * fixture flakes (`progress` and `fixture`), a builder serving them with
 * 1 s heartbeats, and a raw NATS connection as the test deployer.
 */
import type { NatsConnection } from "nats";
import { startBuilder, type BuilderProcess } from "./daemon.js";
import { createFixtureFlake, type FixtureFlake } from "./flake.js";
import { connectAs } from "./nats-client.js";
import { startNatsServer, type NatsServer } from "./nats-server.js";

export interface BuildEnvironment {
  nats: NatsServer;
  progressFlake: FixtureFlake;
  flake: FixtureFlake;
  builder: BuilderProcess;
  deployer: NatsConnection;
  stop(): Promise<void>;
}

export async function startBuildEnvironment(): Promise<BuildEnvironment> {
  const [nats, progressFlake, flake] = await Promise.all([startNatsServer(), createFixtureFlake("progress-flake"), createFixtureFlake()]);
  const builder = await startBuilder({
    natsUrl: nats.url,
    seedFile: nats.identities.builder.seedFile,
    repos: { progress: progressFlake.url, fixture: flake.url },
    build: { timeout: "5m", heartbeatInterval: "1s", logTailLines: 50 },
  });
  const deployer = await connectAs(nats.url, nats.identities.testDeployer);
  return {
    nats,
    progressFlake,
    flake,
    builder,
    deployer,
    async stop() {
      await deployer.close();
      await builder.stop();
      await nats.stop();
    },
  };
}
