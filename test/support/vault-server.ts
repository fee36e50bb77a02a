/**
 * A Vault API server on loopback, HTTP or HTTPS (with a CA made by the
 * test), speaking the parts of Vault's HTTP API homelab-deploy uses, with
 * Vault's own request and response bodies, so the product's node-vault
 * client talks to it unchanged. The shapes follow Vault's API docs:
 *
 * - https://developer.hashicorp.com/vault/api-docs — `{"errors":[...]}` for
 *   every status >= 400, and what 400/403/404/5xx mean
 * - https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle
 *   — `POST /v1/auth/approle/login` with `{"role_id","secret_id"}`, answered
 *   with `auth.client_token`, `accessor`, `policies`, `lease_duration`, `renewable`
 * - https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version
 *   — `GET /v1/<mount>/data/<path>` with `X-Vault-Token`, answered with
 *   `data.data` and `data.metadata`
 * - https://developer.hashicorp.com/vault/api-docs/auth/token#revoke-a-token-self
 *   — `POST /v1/auth/token/revoke-self`, 204
 *
 * Wrong AppRole credentials give 400 "invalid role or secret ID" as Vault
 * does; a token without a policy for the path gives 403 "permission
 * denied"; a path the policy allows but that holds nothing gives 404 with
 * `{"errors":[]}`. Tests steer it: rotate a secret, inject 5xx answers or
 * delays for the next requests, stop and start it on the same port, and
 * read what was asked and which tokens were issued and revoked.
 */
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort } from "./ports.js";

const run = promisify(execFile);

export interface AppRoleCredentials {
  name: string;
  roleId: string;
  secretId: string;
  roleIdFile: string;
  secretIdFile: string;
}

interface AppRole extends AppRoleCredentials {
  /** Vault policy paths this role may read; a trailing `*` matches any suffix, as in Vault's ACLs. */
  readable: string[];
}

interface SecretVersion {
  data: Record<string, unknown>;
  version: number;
  createdTime: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  status: number;
}

export interface Certificates {
  /** The CA that signed the server's certificate. */
  caFile: string;
  /** A CA that did not: trusting only this one must fail verification. */
  otherCaFile: string;
}

export interface VaultServer {
  url: string;
  port: number;
  dir: string;
  tls?: Certificates;
  requests: RequestRecord[];
  /** Every client token handed out, in order. */
  issuedTokens: string[];
  revokedTokens: string[];
  /** Creates an AppRole and writes its role-id and secret-id files, as the provisioning does. */
  addAppRole(name: string, readable?: string[]): Promise<AppRoleCredentials>;
  /** Writes a new version of a KV v2 secret (like `vault kv put`). */
  putSecret(mount: string, path: string, data: Record<string, unknown>): number;
  /** The next `count` requests get `status` with these errors instead of an answer. */
  failNext(count: number, status?: number, errors?: string[]): void;
  /** The next `count` requests are never answered: the client has to give up on them (their status stays 0). */
  hangNext(count: number): void;
  /** Runs `action` once, right after the first answer to a request that `matches`. */
  afterAnswer(matches: (request: RequestRecord) => boolean, action: () => void): void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface VaultServerOptions {
  tls?: boolean;
  /** Reserve the port but do not listen yet: Vault "comes up" when the test calls start(). */
  down?: boolean;
}

type Fault = { kind: "status"; status: number; errors: string[] } | { kind: "hang" };

/** The KV v2 mount every fresh Vault dev server has. */
const DEFAULT_MOUNT = "secret";

export async function startVaultServer(options: VaultServerOptions = {}): Promise<VaultServer> {
  const dir = await mkdtemp(join(tmpdir(), "hd-vault-"));
  const tls = options.tls ? await makeCertificates(dir) : undefined;
  const roles = new Map<string, AppRole>();
  const tokens = new Map<string, AppRole>();
  const secrets = new Map<string, SecretVersion[]>([]);
  const faults: Fault[] = [];
  const requests: RequestRecord[] = [];
  const issuedTokens: string[] = [];
  const revokedTokens: string[] = [];

  const afterAnswers: Array<{ matches: (request: RequestRecord) => boolean; action: () => void }> = [];
  const send = (res: ServerResponse, record: RequestRecord, status: number, body?: unknown) => {
    record.status = status;
    res.once("finish", () => {
      const hook = afterAnswers.find((h) => h.matches(record));
      if (!hook) return;
      afterAnswers.splice(afterAnswers.indexOf(hook), 1);
      hook.action();
    });
    if (body === undefined) {
      res.writeHead(status).end();
      return;
    }
    res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
  };
  const fail = (res: ServerResponse, record: RequestRecord, status: number, errors: string[]) => send(res, record, status, { errors });
  const envelope = (fields: { data?: unknown; auth?: unknown }) => ({
    request_id: randomUUID(),
    lease_id: "",
    renewable: false,
    lease_duration: 0,
    data: fields.data ?? null,
    wrap_info: null,
    warnings: null,
    auth: fields.auth ?? null,
  });

  const login = (body: unknown, res: ServerResponse, record: RequestRecord) => {
    const { role_id: roleId, secret_id: secretId } = (body ?? {}) as { role_id?: unknown; secret_id?: unknown };
    if (typeof roleId !== "string" || roleId === "") return fail(res, record, 400, ["missing role_id"]);
    const role = [...roles.values()].find((r) => r.roleId === roleId);
    if (!role || secretId !== role.secretId) return fail(res, record, 400, ["invalid role or secret ID"]);
    const token = `hvs.${randomBytes(18).toString("base64url")}`;
    tokens.set(token, role);
    issuedTokens.push(token);
    const policies = ["default", role.name];
    send(
      res,
      record,
      200,
      envelope({
        auth: {
          client_token: token,
          accessor: randomUUID(),
          policies,
          token_policies: policies,
          metadata: { role_name: role.name },
          lease_duration: 1200,
          renewable: true,
          entity_id: randomUUID(),
          token_type: "service",
          orphan: true,
          mfa_requirement: null,
          num_uses: 0,
        },
      }),
    );
  };

  const readSecret = (req: IncomingMessage, apiPath: string, res: ServerResponse, record: RequestRecord) => {
    const role = tokens.get(String(req.headers["x-vault-token"] ?? ""));
    if (!role || !role.readable.some((pattern) => policyMatches(pattern, apiPath))) return fail(res, record, 403, ["permission denied"]);
    const latest = secrets.get(apiPath)?.at(-1);
    if (!latest) return fail(res, record, 404, []);
    send(
      res,
      record,
      200,
      envelope({
        data: {
          data: latest.data,
          metadata: { created_time: latest.createdTime, custom_metadata: null, deletion_time: "", destroyed: false, version: latest.version },
        },
      }),
    );
  };

  const revokeSelf = (req: IncomingMessage, res: ServerResponse, record: RequestRecord) => {
    const token = String(req.headers["x-vault-token"] ?? "");
    if (!tokens.delete(token)) return fail(res, record, 403, ["permission denied"]);
    revokedTokens.push(token);
    send(res, record, 204);
  };

  const route = (req: IncomingMessage, body: unknown, res: ServerResponse, record: RequestRecord) => {
    const path = record.path.replace(/\?.*$/, "");
    if (path === "/v1/auth/approle/login" && req.method === "POST") return login(body, res, record);
    if (path === "/v1/auth/token/revoke-self" && (req.method === "POST" || req.method === "PUT")) return revokeSelf(req, res, record);
    const kv = /^\/v1\/([^/]+)\/data\/(.+)$/.exec(path);
    if (kv && req.method === "GET") return readSecret(req, `${kv[1]}/data/${kv[2]}`, res, record);
    fail(res, record, 404, [`no handler for route "${path.replace(/^\/v1\//, "")}". route entry not found.`]);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const record: RequestRecord = { method: req.method ?? "", path: req.url ?? "", status: 0 };
    requests.push(record);
    const text = await readBody(req);
    const fault = faults.shift();
    // Hung: held until the client hangs up (or the server stops), then never answered.
    if (fault?.kind === "hang") await new Promise((resolve) => res.once("close", resolve));
    if (res.destroyed) return;
    if (fault?.kind === "status") return fail(res, record, fault.status, fault.errors);
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      return fail(res, record, 400, ["failed to parse JSON input"]);
    }
    route(req, body, res, record);
  };

  let server: Server | undefined;
  let port = await freePort();
  const vault: VaultServer = {
    url: `${tls ? "https" : "http"}://${tls ? "localhost" : "127.0.0.1"}:${port}`,
    port,
    dir,
    ...(tls ? { tls } : {}),
    requests,
    issuedTokens,
    revokedTokens,
    async addAppRole(name, readable = [`${DEFAULT_MOUNT}/data/shared/homelab-deploy/*`]) {
      const role: AppRole = {
        name,
        roleId: randomUUID(),
        secretId: randomUUID(),
        roleIdFile: join(dir, `${name}.role-id`),
        secretIdFile: join(dir, `${name}.secret-id`),
        readable,
      };
      // With trailing newlines, as `vault read -field=role_id … > file` writes them.
      await writeFile(role.roleIdFile, `${role.roleId}\n`, { mode: 0o600 });
      await writeFile(role.secretIdFile, `${role.secretId}\n`, { mode: 0o600 });
      roles.set(name, role);
      return role;
    },
    putSecret(mount, path, data) {
      const key = `${mount}/data/${path}`;
      const versions = secrets.get(key) ?? [];
      versions.push({ data, version: versions.length + 1, createdTime: new Date().toISOString() });
      secrets.set(key, versions);
      return versions.length;
    },
    failNext(count, status = 500, errors = ["internal error"]) {
      for (let i = 0; i < count; i++) faults.push({ kind: "status", status, errors });
    },
    hangNext(count) {
      for (let i = 0; i < count; i++) faults.push({ kind: "hang" });
    },
    afterAnswer(matches, action) {
      afterAnswers.push({ matches, action });
    },
    async start() {
      const listener = tls
        ? createHttpsServer({ key: await readFile(join(dir, "server.key")), cert: await readFile(join(dir, "server.pem")) }, (req, res) => void handle(req, res))
        : createHttpServer((req, res) => void handle(req, res));
      await new Promise<void>((resolve, reject) => {
        listener.once("error", reject);
        listener.listen(port, "127.0.0.1", () => resolve());
      });
      server = listener;
      port = (listener.address() as { port: number }).port;
    },
    async stop() {
      const running = server;
      server = undefined;
      if (!running) return;
      running.closeAllConnections();
      await new Promise((resolve) => running.close(resolve));
    },
  };
  if (!options.down) await vault.start();
  return vault;
}

function policyMatches(pattern: string, path: string): boolean {
  return pattern.endsWith("*") ? path.startsWith(pattern.slice(0, -1)) : pattern === path;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => (text += chunk));
    req.on("end", () => resolve(text));
    req.on("error", reject);
  });
}

/** A CA, a server certificate it signed for localhost/127.0.0.1, and an unrelated CA; EC keys keep it fast. */
async function makeCertificates(dir: string): Promise<Certificates> {
  const openssl = (...args: string[]) => run("openssl", args, { cwd: dir });
  const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const makeCa = (name: string, cn: string) =>
    openssl("req", "-x509", ...newKey, "-keyout", `${name}.key`, "-out", `${name}.pem`, "-days", "2", "-subj", `/CN=${cn}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  await Promise.all([makeCa("ca", "homelab-deploy test CA"), makeCa("other-ca", "some other CA")]);
  await openssl("req", ...newKey, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  await writeFile(
    join(dir, "server.ext"),
    ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1", ""].join("\n"),
  );
  await openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext");
  return { caFile: join(dir, "ca.pem"), otherCaFile: join(dir, "other-ca.pem") };
}
