/**
 * Loopback ports for tests: a free one for a server to listen on, and one
 * where connections are refused for as long as the test runs.
 */
import { connect, createServer } from "node:net";

/** A port nothing listens on right now (the OS's ephemeral range), for a server to listen on next. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (typeof address !== "object" || address === null) throw new Error("no free port");
  return address.port;
}

/**
 * A loopback port where a connection is refused, and stays refused: a
 * privileged one (below 1024) with nothing listening. A free port from the
 * ephemeral range (freePort) can be handed to another test's server the
 * moment it is closed, and then "unreachable" answers (it happened in a
 * fresh-clone run: ssh met another server instead of "Connection refused");
 * every server in the tests listens on an ephemeral port.
 */
export async function refusedPort(): Promise<number> {
  for (let port = 1; port < 1024; port++) {
    if ((await connectError(port)) === "ECONNREFUSED") return port;
  }
  throw new Error("every privileged loopback port accepts connections");
}

async function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
  });
}

/** Whether something accepts connections on the loopback port (a server that has come up). */
export async function accepts(port: number): Promise<boolean> {
  return (await connectError(port)) === undefined;
}
