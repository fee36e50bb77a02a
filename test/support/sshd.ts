/**
 * A real Nix remote builder on loopback: Debian's sshd on a free port with
 * a host key and a client key made here, and `nix-daemon --stdio` behind it
 * (what `ssh-ng://` runs on the other side).
 *
 * The "remote" machine is this one, so its nix-daemon must not use the
 * builder's own /nix/store: the local nix holds the lock on the output path
 * while the remote builds it, and the remote would wait for that lock
 * forever. It uses a chroot store under the temp dir instead (same logical
 * /nix/store, so store paths are the same as on a real second machine);
 * Nix builds in such a store only in its sandbox, which gets /bin, /usr and
 * /lib for the fixtures' /bin/sh, and it builds as root: see build-users-group.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { accepts, freePort } from "./ports.js";

const run = promisify(execFile);
export const SSHD = "/usr/sbin/sshd";

export interface RemoteBuilder {
  port: number;
  /** The `ssh-ng://` store URL nix names the machine by (without its ?settings). */
  url: string;
  /** One line of nix's `builders` setting (the machines file format). */
  machine: string;
  /** NIX_SSHOPTS for the local nix: the port, and the host key made here. */
  sshOpts: string;
  /** The remote store's root: what it built is under <root>/nix/store. */
  storeRoot: string;
  stop(): Promise<void>;
}


export async function startRemoteBuilder(): Promise<RemoteBuilder> {
  const dir = await mkdtemp(join(tmpdir(), "hd-remote-"));
  await chmod(dir, 0o700);
  const hostKey = join(dir, "host_key");
  const clientKey = join(dir, "client_key");
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", hostKey]);
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", clientKey]);
  const authorized = join(dir, "authorized_keys");
  await writeFile(authorized, await readFile(`${clientKey}.pub`), { mode: 0o600 });
  const knownHosts = join(dir, "known_hosts");
  const port = await freePort();
  await writeFile(knownHosts, `[127.0.0.1]:${port} ${(await readFile(`${hostKey}.pub`, "utf8")).trim()}\n`);

  const storeRoot = join(dir, "remote-store");
  await mkdir(storeRoot);
  const remoteProgram = join(dir, "remote-nix-daemon");
  const remoteConfig = [
    `store = local?root=${storeRoot}`,
    "sandbox = true",
    // No build users: they are the same nixbld users the builder's own nix
    // uses, with a user pool of their own here, and nix kills every process
    // of a build user before and after each build (other tests' builds too).
    "build-users-group =",
    "sandbox-paths = /bin /usr /lib /lib64",
    "substituters =",
    "experimental-features = nix-command",
  ].join("\n");
  await writeFile(remoteProgram, `#!/bin/sh\nexport NIX_CONFIG='${remoteConfig}'\nexec nix-daemon "$@"\n`, { mode: 0o755 });

  const config = join(dir, "sshd_config");
  await writeFile(
    config,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${authorized}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      "StrictModes no",
      "UsePAM no",
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "",
    ].join("\n"),
  );
  // sshd's privilege separation directory; Debian creates it only from its unit.
  await mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const child: ChildProcess = spawn(SSHD, ["-D", "-f", config, "-E", join(dir, "sshd.log")], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  for (let waited = 0; !(await accepts(port)); waited += 50) {
    if (child.exitCode !== null || waited > 10_000) {
      const log = await readFile(join(dir, "sshd.log"), "utf8").catch(() => "");
      child.kill("SIGKILL");
      throw new Error(`sshd did not start on 127.0.0.1:${port}: ${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const user = (await run("id", ["-un"])).stdout.trim();
  const url = `ssh-ng://${user}@127.0.0.1`;
  return {
    port,
    url,
    machine: `${url}?remote-program=${remoteProgram} ${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux ${clientKey} 1`,
    sshOpts: `-p ${port} -o UserKnownHostsFile=${knownHosts} -o BatchMode=yes`,
    storeRoot,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}
