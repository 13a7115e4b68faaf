/**
 * Proxmox VE as a deploy target, through its HTTPS API (undici) and an API
 * token read from the environment variable the target names (token_env:
 * USER@REALM!TOKENID=SECRET, sent as `Authorization: PVEAPIToken=...`, never
 * printed). PVE's certificate is self-signed as a rule: pin its sha256
 * (`fingerprint:`, what `pvenode cert info` shows) or say `insecure: true`.
 * What PVE checks itself is checked here first (lib/deploy/pvecheck.ts, each
 * rule with the PVE source it follows), so that nothing is refused after a
 * multi-gigabyte upload.
 *
 *   0. the VM's name must be a DNS name, as PVE requires (64 with --name, else 78),
 *      before any request;
 *   1. GET /version: PVE 8.4 or newer takes a qcow2 image as storage content
 *      `import` (pve-storage 8.3.6, commit 76f695f, which pve-manager 8.4.0
 *      requires; up to 8.3 only .ova). An older PVE needs `ssh: root@NODE`: the
 *      image is copied to the node's ${TMPDIR:-/var/tmp}/pim (scp), verified
 *      there with sha256sum, then `qm disk import` and `qm set` attach it to
 *      the VM the API made without a disk, and pim's record is written last;
 *      without ssh: it is refused (69);
 *   2. the VM of the name (GET /nodes/N/qemu, then its config with its digest:
 *      pim's record is a line of its description); the new description must fit
 *      PVE's 8192 characters (65); the import storage must have content
 *      `import` and be enabled (GET /nodes/N/storage?storage=S&content=import:
 *      78), then its import content is listed; the token's privileges for each
 *      step (GET /access/permissions?path=P) must be there (77, naming what to
 *      grant where);
 *   3. the image goes up as `<name>-<sha12>.qcow2` (POST .../upload, multipart,
 *      content=import, with its sha256 for PVE to check) unless that file is
 *      there: PVE moves an upload into place only once its checksum matched.
 *      Then the upload task is followed until it stops, and must succeed; a
 *      task that ends with "WARNINGS: N" succeeded (as PVE counts it), and its
 *      warnings are logged;
 *   4. a VM of the same build is left alone (started if it is stopped);
 *      otherwise the VM is created (POST /nodes/N/qemu) or, stopped first,
 *      given the new disk (POST .../config with the digest read in 2: when the
 *      config changed meanwhile, nothing is changed and it is 75), with
 *      `import-from` pointing at the uploaded file, and started; the guest
 *      agent must answer within the health timeout. When it does not (or the
 *      start fails, or the ping is refused), an upgraded VM is rolled back
 *      (79): stopped, the keys pim set put back to the config read in 2 (the
 *      old disk, which PVE kept as unusedN, back as scsi0; a key the VM did
 *      not have deleted), the disks this deploy made, now unused, deleted,
 *      and the VM started again if it ran before; pim's record in the
 *      description names the old build again. A VM this deploy created is
 *      stopped and deleted with its disks (79);
 *   5. import files of the name beyond --keep are deleted (the VM's disk is a
 *      copy: import-from copies).
 */
import * as fs from 'node:fs';
import type { TLSSocket } from 'node:tls';
import type { buildConnector as Connector } from 'undici';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { checkAborted } from '../core/signals.ts';
import { memKiB } from './domain.ts';
import {
  agentPrivs,
  configPrivs,
  describeNeeds,
  descriptionLength,
  DESCRIPTION_MAX,
  dnsNameProblem,
  importedVolume,
  permsAt,
  privilegesFor,
  taskSucceeded,
  unmet,
  type Need,
  type Perms,
} from './pvecheck.ts';
import { sleep, type DeployOpts, type Deployed, type Outcome, type Step } from './libvirt.ts';
import { deployMeta, volumeRe, type DeployMeta, type Source } from './source.ts';
import { normFingerprint, type ProxmoxTarget } from './targets.ts';
import { progressReporter } from '../install/download.ts';
import { run, runOk } from '../core/run.ts';

/**
 * The first PVE whose storage takes a qcow2 upload as content `import` (then import-from):
 * pve-storage 8.3.6 (commit 76f695f, April 2025) added qcow2|raw|vmdk to
 * UPLOAD_IMPORT_EXT_RE_1, and pve-manager 8.4.0 is the first release to depend on it.
 * 8.3.x allows only .ova there ("filename: invalid filename or wrong extension").
 */
export const IMPORT_SINCE = [8, 4] as const;

/** pim's record in a VM's description: one line, `pim-deploy: build=ID key=K profile=P volume=V sha256=S`. */
export const metaLine = (m: DeployMeta) =>
  `pim-deploy: build=${m.build} key=${m.key} profile=${m.profile} volume=${m.volume} sha256=${m.sha256}`;

export function metaOfDescription(desc: string | undefined): DeployMeta | null {
  const line = desc?.split('\n').find((l) => l.startsWith('pim-deploy: '));
  if (!line) return null;
  const get = (k: string) => new RegExp(`(?:^|\\s)${k}=(\\S+)`).exec(line.slice(12))?.[1] ?? '';
  const m = {
    build: get('build'),
    key: get('key'),
    profile: get('profile'),
    volume: get('volume'),
    sha256: get('sha256'),
  };
  return m.build && m.volume && /^[0-9a-f]{64}$/.test(m.sha256) ? m : null;
}

/** "8.3.0" -> at least [8, 3]? */
export function versionAtLeast(v: string, want: readonly [number, number]): boolean {
  const [a = 0, b = 0] = v.split(/[.-]/).map(Number);
  return a > want[0] || (a === want[0] && b >= want[1]);
}

const DISK_KEY: Record<string, string> = { virtio: 'scsi0', scsi: 'scsi0', sata: 'sata0', ide: 'ide0' };

/**
 * The VM's settings for POST /nodes/N/qemu or .../config: the build's recorded ones with
 * the target's overrides. An existing VM (its config) keeps its MAC address, its EFI disk
 * and the user's own lines of its description.
 */
export function vmParams(
  src: Source,
  t: ProxmoxTarget,
  meta: DeployMeta,
  had: Record<string, string> | null,
): Record<string, string> {
  const s = src.build.settings;
  const o = t.overrides;
  const disk = DISK_KEY[o.disk_bus ?? s.disk_bus] ?? 'scsi0';
  const uefi = s.firmware === 'uefi';
  const net = s.net === 'virtio-net' || s.net === 'virtio-net-pci' || s.net === 'virtio' ? 'virtio' : s.net;
  const mac = had?.net0?.startsWith(`${net}=`) ? /^[^=]+=([0-9A-Fa-f:]{17})/.exec(had.net0)?.[1] : undefined;
  // a description of the user's own is kept; pim's line is replaced
  const own = (had?.description ?? '')
    .split('\n')
    .filter((l) => !l.startsWith('pim-deploy: '))
    .join('\n')
    .trim();
  return {
    name: src.name,
    memory: String(Math.round(memKiB(o.mem ?? s.mem) / 1024)),
    cores: String(o.cpus ?? s.cpus),
    machine: o.machine ?? s.machine ?? 'q35',
    bios: uefi ? 'ovmf' : 'seabios',
    ...(uefi && !had?.efidisk0 ? { efidisk0: `${t.storage}:1,efitype=4m,pre-enrolled-keys=0` } : {}),
    scsihw: 'virtio-scsi-single',
    [disk]: `${t.storage}:0,import-from=${t.importStorage}:import/${src.volume}`,
    boot: `order=${disk}`,
    net0: `${mac ? `${net}=${mac}` : net},bridge=${t.bridge}`,
    agent: '1',
    ostype: 'l26',
    description: own ? `${own}\n${metaLine(meta)}` : metaLine(meta),
  };
}

interface Answer {
  status: number;
  data: unknown;
  message: string;
}

/** An HTTP error of the API, with PVE's own message (parameter errors, the body's message, or the reason phrase). */
export class PveError extends PimError {
  readonly status: number;
  readonly pveMessage: string;
  constructor(code: ConstructorParameters<typeof PimError>[0], message: string, status: number, pveMessage: string) {
    super(code, message);
    this.status = status;
    this.pveMessage = pveMessage;
  }
}

/** PVE's refusal of a config change whose digest is not the config's (qemu-server, pve-common assert_if_modified). */
const DIGEST_MISMATCH = /checksum mismatch \(file change by other user\?\)|detected modified configuration/;

/** The API: one undici Agent (the pinned certificate checked on every connection), the token on every request. */
export class Pve {
  private agent: unknown;
  private readonly auth: string;
  /** requests made, for PIM_LOG=debug */
  calls = 0;
  /** PVE's major version, once /version was read (the agent's privilege depends on it) */
  major = 8;
  /** USER@REALM!TOKENID, for messages */
  readonly tokenId: string;
  readonly t: ProxmoxTarget;
  constructor(t: ProxmoxTarget) {
    this.t = t;
    const tok = process.env[t.tokenEnv];
    if (!tok)
      throw new PimError(
        EXIT.NOPERM,
        `${t.name}: the environment variable ${t.tokenEnv} (token_env) is not set: export ${t.tokenEnv}='USER@REALM!TOKENID=SECRET', an API token of ${t.api} (Datacenter > Permissions > API Tokens)`,
      );
    if (!/^[^\s@]+@[^\s!]+![^\s=]+=\S+$/.test(tok))
      throw new PimError(
        EXIT.NOPERM,
        `${t.name}: ${t.tokenEnv} does not look like an API token (USER@REALM!TOKENID=SECRET); set it to one`,
      );
    this.auth = `PVEAPIToken=${tok}`;
    this.tokenId = tok.slice(0, tok.indexOf('='));
  }

  private async dispatcher(): Promise<unknown> {
    if (this.agent) return this.agent;
    const { Agent, buildConnector } = await import('undici');
    const pin = this.t.fingerprint;
    // no TLS session resumption: a resumed session shows no certificate to check
    const base = buildConnector({
      rejectUnauthorized: !pin && !this.t.insecure,
      timeout: 15_000,
      maxCachedSessions: 0,
    });
    const where = this.t.api;
    const connect: Connector.connector = (opts, cb) =>
      base(opts, (err, sock) => {
        if (err || !pin) return err ? cb(err, null) : cb(null, sock!);
        const got = normFingerprint((sock as TLSSocket).getPeerCertificate().fingerprint256 ?? '');
        if (got === pin) return cb(null, sock!);
        sock!.destroy();
        cb(
          Object.assign(
            new Error(`the certificate of ${where} has the sha256 fingerprint ${got}, not the pinned ${pin}`),
            { code: 'PIM_FINGERPRINT' },
          ),
          null,
        );
      });
    this.agent = new Agent({ connect, headersTimeout: 60_000, bodyTimeout: 0 });
    return this.agent;
  }

  /** One request; `body` is a form (urlencoded) or a prepared stream with its headers. */
  async call(
    method: string,
    path: string,
    opts: {
      form?: Record<string, string>;
      stream?: { body: NodeJS.ReadableStream; headers: Record<string, string> };
      signal?: AbortSignal;
      ok404?: boolean;
    } = {},
  ): Promise<Answer> {
    const { request } = await import('undici');
    const url = `${this.t.api}/api2/json${path}`;
    const headers: Record<string, string> = { authorization: this.auth, ...opts.stream?.headers };
    let body: string | NodeJS.ReadableStream | undefined = opts.stream?.body;
    if (opts.form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(opts.form).toString();
    }
    this.calls++;
    log.debug(`${method} ${url}`);
    let res;
    try {
      res = await request(url, {
        method: method as 'GET',
        headers,
        body: body as string,
        dispatcher: (await this.dispatcher()) as never,
        signal: opts.signal,
      });
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      const err = e as Error & { code?: string; cause?: { code?: string; message?: string } };
      const code = err.code ?? err.cause?.code;
      if (code === 'PIM_FINGERPRINT' || /PIM_FINGERPRINT/.test(String(err.cause?.code)))
        throw new PimError(
          EXIT.UNAVAILABLE,
          `${this.t.name}: ${err.message}: refusing to send the token; if the certificate changed on purpose, check it on the node (pvenode cert info) and update fingerprint:`,
        );
      if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code))
        throw new PimError(
          EXIT.UNAVAILABLE,
          `${this.t.name}: the certificate of ${this.t.api} is not trusted (${code}): pin it with fingerprint: (pvenode cert info on the node shows it) or set insecure: true`,
        );
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${this.t.name}: cannot reach ${this.t.api} (${code ?? err.message}); check api: and the network`,
      );
    }
    const text = await res.body.text();
    // PVE up to 8.3 (pve-http-server 5.1) answers an error with {"data":null} (and "errors"
    // for bad parameters) and its message only in the reason phrase; from 8.4 (5.2) the
    // body also has "message"; an error before the handler is plain text from 5.2
    let got: { data?: unknown; errors?: Record<string, string>; message?: string } = {};
    try {
      got = (JSON.parse(text) ?? {}) as typeof got;
    } catch {
      /* no JSON */
    }
    const reason = (res as { statusText?: string }).statusText ?? '';
    const errors = got.errors
      ? Object.entries(got.errors)
          .map(([k, v]) => `${k}: ${String(v).trim()}`)
          .join('; ')
      : '';
    const said =
      (typeof got.message === 'string' ? got.message.trim() : '') ||
      reason.trim() ||
      (got.data === undefined ? text.trim().slice(0, 200) : '');
    const answer = {
      status: res.statusCode,
      data: got.data ?? null,
      message: errors ? `${said ? `${said} ` : ''}${errors}`.trim() : said,
    };
    if (res.statusCode === 401)
      throw new PveError(
        EXIT.NOPERM,
        `${this.t.name}: ${this.t.api} refused the token in ${this.t.tokenEnv} (401): check the token and that it is not expired`,
        401,
        answer.message,
      );
    if (res.statusCode === 403)
      throw new PveError(
        EXIT.NOPERM,
        `${this.t.name}: ${method} ${path}: permission denied (403${answer.message ? `: ${answer.message}` : ''}): grant the token ${this.tokenId} ${privilegesFor(method, path, { storage: this.t.storage, importStorage: this.t.importStorage, major: this.major })} (or to its user, when the token is not privilege-separated)`,
        403,
        answer.message,
      );
    if (res.statusCode >= 300 && !(opts.ok404 && res.statusCode === 404))
      throw new PveError(
        EXIT.UNAVAILABLE,
        `${this.t.name}: ${method} ${path}: HTTP ${res.statusCode}${answer.message ? ` ${answer.message}` : ''}`,
        res.statusCode,
        answer.message,
      );
    return answer;
  }

  async get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return (await this.call('GET', path, { signal })).data as T;
  }

  /** Follow a task until it stops; its exit status ('OK' when it worked). */
  async waitTask(upid: string, signal?: AbortSignal, timeoutS = 3600): Promise<string> {
    const deadline = Date.now() + timeoutS * 1000;
    let wait = 200;
    for (;;) {
      checkAborted(signal);
      const st = await this.get<{ status: string; exitstatus?: string }>(
        `/nodes/${enc(this.t.node)}/tasks/${enc(upid)}/status`,
        signal,
      );
      if (st.status === 'stopped') return st.exitstatus ?? 'unknown';
      if (Date.now() > deadline)
        throw new PimError(EXIT.TEMPFAIL, `${this.t.name}: task ${upid} still runs after ${timeoutS} s`);
      await sleep(wait, signal);
      wait = Math.min(wait * 2, 2000);
    }
  }

  /** Run a request that starts a task, and require the task to succeed (OK, or WARNINGS: N, logged). */
  async task(
    method: string,
    path: string,
    form: Record<string, string> | undefined,
    what: string,
    signal?: AbortSignal,
  ): Promise<void> {
    const { data } = await this.call(method, path, { form, signal });
    if (typeof data !== 'string' || !data.startsWith('UPID:')) return; // done synchronously
    const exit = await this.waitTask(data, signal);
    if (!taskSucceeded(exit)) throw new PimError(EXIT.UNAVAILABLE, `${this.t.name}: ${what} failed: ${exit}`);
    if (exit !== 'OK') await this.warnTask(data, what, exit, signal);
  }

  /** A task that succeeded with warnings: log them (its log's "WARN: " lines, read as far as PVE lets us). */
  async warnTask(upid: string, what: string, exit: string, signal?: AbortSignal): Promise<void> {
    let lines: string[] = [];
    try {
      const got = await this.get<{ n: number; t: string }[]>(
        `/nodes/${enc(this.t.node)}/tasks/${enc(upid)}/log?start=0&limit=500`,
        signal,
      );
      lines = (Array.isArray(got) ? got : [])
        .map((l) => String(l.t))
        .filter((l) => l.startsWith('WARN: '))
        .map((l) => l.slice(6));
    } catch (e) {
      if (!(e instanceof PimError)) throw e;
    }
    log.warn(`${this.t.name}: ${what}: the task ended with ${exit}${lines.length ? `: ${lines.join('; ')}` : ''}`);
  }
}

const enc = encodeURIComponent;

interface VmEntry {
  vmid: number | string;
  name?: string;
  status?: string;
}

interface ImportFile {
  volid: string;
  ctime?: number;
  size?: number;
}

/** The multipart body of an upload: the fields, then the file, streamed (hashed and counted), with its length known. */
async function multipart(
  fields: Record<string, string>,
  file: string,
  fileName: string,
  size: number,
  onBytes: (n: number) => void,
): Promise<{ body: NodeJS.ReadableStream; headers: Record<string, string> }> {
  const { randomBytes } = await import('node:crypto');
  const { Readable } = await import('node:stream');
  const b = `----pim${randomBytes(12).toString('hex')}`;
  const head =
    Object.entries(fields)
      .map(([k, v]) => `--${b}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`)
      .join('') +
    `--${b}\r\nContent-Disposition: form-data; name="filename"; filename="${fileName}"\r\nContent-Type: application/octet-stream\r\n\r\n`;
  const tail = `\r\n--${b}--\r\n`;
  async function* parts() {
    yield Buffer.from(head);
    let n = 0;
    for await (const chunk of fs.createReadStream(file, { highWaterMark: 4 << 20 })) {
      n += (chunk as Buffer).length;
      onBytes(n);
      yield chunk as Buffer;
    }
    yield Buffer.from(tail);
  }
  return {
    body: Readable.from(parts()),
    headers: {
      'content-type': `multipart/form-data; boundary=${b}`,
      'content-length': String(Buffer.byteLength(head) + size + Buffer.byteLength(tail)),
    },
  };
}

interface StorageEntry {
  storage: string;
  type?: string;
  content?: string;
  enabled?: number;
  active?: number;
}

/**
 * The import storage, before anything is sent: PVE lists it for content=import only when
 * its content has `import` and it is enabled (pve-storage Status.pm index: else 400 "No
 * such storage."), and only to a token with Datastore.Audit or Datastore.AllocateSpace on it.
 */
async function checkImportStorage(api: Pve, signal?: AbortSignal): Promise<void> {
  const t = api.t;
  const s = t.importStorage;
  const fix = `enable the content "Import" of ${s} (Datacenter > Storage > ${s} > Content; a file storage: dir, NFS, CIFS, CephFS, BTRFS, GlusterFS), or set import_storage: to one that has it (LVM-thin and ZFS have none)`;
  let list: StorageEntry[];
  try {
    list = await api.get<StorageEntry[]>(`/nodes/${enc(t.node)}/storage?storage=${enc(s)}&content=import`, signal);
  } catch (e) {
    if (e instanceof PveError && e.status === 400)
      throw new PimError(
        EXIT.CONFIG,
        `${t.name}: storage ${s} on ${t.node} is missing, disabled or has no content "import" (PVE: ${e.pveMessage}): ${fix}; nothing was sent`,
      );
    throw e;
  }
  const e = (Array.isArray(list) ? list : []).find((x) => x.storage === s);
  if (!e)
    throw new PimError(
      EXIT.NOPERM,
      `${t.name}: the token ${api.tokenId} cannot see storage ${s}: grant it Datastore.Audit or Datastore.AllocateSpace on /storage/${s}; nothing was sent`,
    );
  if (typeof e.content === 'string' && !e.content.split(',').includes('import'))
    throw new PimError(
      EXIT.CONFIG,
      `${t.name}: storage ${s} (${e.type ?? 'unknown type'}) has no content "import" (it has ${e.content || 'none'}): ${fix}; nothing was sent`,
    );
  if (e.enabled !== undefined && !Number(e.enabled))
    throw new PimError(
      EXIT.CONFIG,
      `${t.name}: storage ${s} is disabled: enable it (Datacenter > Storage > ${s}), or set import_storage: to another; nothing was sent`,
    );
  if (e.active !== undefined && !Number(e.active))
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: storage ${s} is not active on ${t.node} (unmounted or unreachable): check it on the node (pvesm status); nothing was sent`,
    );
}

/** The token's privileges for each step (GET /access/permissions?path=P, which any token may ask of itself). */
async function checkPermissions(api: Pve, needs: Need[], signal?: AbortSignal): Promise<void> {
  const perms: Perms = {};
  for (const path of [...new Set(needs.map((n) => n.path))]) {
    try {
      const got = await api.get<Perms>(`/access/permissions?path=${enc(path)}`, signal);
      perms[path] = permsAt(got, path);
    } catch (e) {
      if (e instanceof PimError && e.code === EXIT.UNAVAILABLE) {
        log.debug(`${api.t.name}: cannot read the token's permissions (${e.message}); PVE checks them itself`);
        return;
      }
      throw e;
    }
  }
  const miss = unmet(needs, perms);
  if (miss.length)
    throw new PimError(
      EXIT.NOPERM,
      `${api.t.name}: the token ${api.tokenId} lacks ${describeNeeds(miss)}: grant them (Datacenter > Permissions > Add > API Token Permission; to its user too when it is privilege-separated); nothing was sent`,
    );
}

/** What a Proxmox deploy does, worked out from the node's state before anything changes. */
interface PvePlan {
  plan: Step[];
  /** the VM of that name (and vmid), if there is one */
  vm: VmEntry | null;
  config: Record<string, string> | null;
  had: DeployMeta | null;
  /** the VM runs this build already */
  same: boolean;
  running: boolean;
  /** the VM's config keys pim sets (null: the VM stays as it is) */
  params: Record<string, string> | null;
  /** before PVE 8.4: the node's copies, over SSH */
  far: { dir: string; files: ImportFile[]; verified: boolean } | null;
  importVol: string;
  upload: boolean;
  domain: Outcome['domain'];
  start: boolean;
  timeoutS: number;
  /** old import files deleted at the end */
  doomed: ImportFile[];
  /** the disk's config key (scsi0, sata0, ide0) */
  disk: string;
}

export async function deployProxmox(
  src: Source,
  t: ProxmoxTarget,
  o: DeployOpts & { name?: string },
): Promise<Outcome> {
  // PVE refuses a name that is not a DNS name (pve_verify_dns_name): say so before anything is sent
  const badName = dnsNameProblem(src.name);
  if (badName) {
    const given = o.name !== undefined;
    throw new PimError(
      given ? EXIT.USAGE : EXIT.CONFIG,
      `${t.name}: Proxmox VE takes no VM named ${JSON.stringify(src.name)} (${badName}): a VM's name is a DNS name, letters, digits and "-" in dot-separated parts that neither start nor end with "-"; ${given ? 'pick another --name' : 'deploy it with --name NAME'}`,
    );
  }
  const api = new Pve(t);
  const viaSsh = await pveVersion(api, t, o.signal);
  const p = await planProxmox(api, src, t, o, viaSsh);
  const needs = pveNeeds(api, t, p);
  if (needs.length) await checkPermissions(api, needs, o.signal);
  const outcome = (removed: string[]): Outcome => ({
    plan: p.plan,
    upload: p.upload ? 'uploaded' : 'skipped',
    domain: p.domain,
    started: p.start,
    removed,
  });
  if (o.dryRun) return outcome([]);
  if (p.upload && p.far) await copyToNode(t, src, p.far.dir, o.signal);
  else if (p.upload) await uploadImport(api, src, t, o.signal);
  const { vmid, sent } = await configureVm(api, src, t, p, o.signal);
  if (p.start) await healthOrUndo(api, src, t, p, vmid, sent, o.signal);
  const removed = await removeOld(api, t, p, o.signal);
  log.debug(`${t.name}: ${api.calls} API requests`);
  return outcome(removed);
}

/** The node's PVE version (api.major set); true when images go over SSH (before 8.4; 69 without ssh: in the target). */
async function pveVersion(api: Pve, t: ProxmoxTarget, signal?: AbortSignal): Promise<boolean> {
  const ver = await api.get<{ version: string }>('/version', signal);
  api.major = Number(ver.version.split('.')[0]) || 8;
  const viaSsh = !versionAtLeast(ver.version, IMPORT_SINCE);
  if (viaSsh && !t.ssh)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: ${t.api} runs Proxmox VE ${ver.version}, older than 8.4 (its storage takes no qcow2 image as content "import"): set ssh: root@${t.node} in the target to copy the image over SSH and import it with qm disk import, or upgrade PVE to 8.4`,
    );
  return viaSsh;
}

/** The VM there, its config and pim's record in it, the images there, and the steps a deploy of `src` takes. */
async function planProxmox(api: Pve, src: Source, t: ProxmoxTarget, o: DeployOpts, viaSsh: boolean): Promise<PvePlan> {
  const node = `/nodes/${enc(t.node)}`;
  const vms = await api.get<VmEntry[]>(`${node}/qemu`, o.signal);
  const vm = vms.find((x) => x.name === src.name && (t.vmid === null || Number(x.vmid) === t.vmid)) ?? null;
  if (!vm && t.vmid !== null && vms.some((x) => Number(x.vmid) === t.vmid))
    throw new PimError(
      EXIT.CANTCREAT,
      `${t.name}: VM ${t.vmid} on ${t.node} is not named ${src.name}: pick another vmid: or --name`,
    );
  const config = vm ? await api.get<Record<string, string>>(`${node}/qemu/${vm.vmid}/config`, o.signal) : null;
  const had = metaOfDescription(config?.description);
  const same = had !== null && had.sha256 === src.sha256;
  const meta = deployMeta(src);
  const params = same ? null : vmParams(src, t, meta, config);
  // qemu-server's description is at most 8192 characters: the user's own text plus pim's line
  if (params && descriptionLength(params.description!) > DESCRIPTION_MAX)
    throw new PimError(
      EXIT.DATAERR,
      `${t.name}: VM ${vm ? `${vm.vmid} (${src.name})` : src.name}'s description with pim's record would be ${descriptionLength(params.description!)} characters, over PVE's ${DESCRIPTION_MAX}: shorten its description (its Notes) by ${descriptionLength(params.description!) - DESCRIPTION_MAX}; nothing was sent`,
    );
  if (!viaSsh && !same) await checkImportStorage(api, o.signal);
  // the images there: the storage's import content, or (before 8.4) the node's copies, over SSH
  const far = viaSsh ? await nodeCopies(t, src, o.signal) : null;
  const files = far
    ? far.files
    : await api.get<ImportFile[]>(`${node}/storage/${enc(t.importStorage)}/content?content=import`, o.signal);
  const importVol = far ? `${far.dir}/${src.volume}` : `${t.importStorage}:import/${src.volume}`;
  const upload = !same && !(far ? far.verified : files.some((f) => f.volid === importVol));
  const running = vm?.status === 'running';
  const plan: Step[] = [
    {
      step: 'upload',
      action: upload ? 'upload' : 'skip',
      detail: `${importVol} (${src.size} bytes, sha256 ${src.sha256.slice(0, 12)})`,
    },
  ];
  const domain: Outcome['domain'] = !vm ? 'defined' : same ? 'kept' : 'upgraded';
  plan.push({
    step: 'domain',
    action: domain === 'defined' ? 'define' : domain === 'kept' ? 'keep' : 'upgrade',
    detail: vm
      ? `${src.name} (vmid ${vm.vmid}, ${had?.build ?? 'not deployed by pim'}, ${vm.status ?? 'unknown'})`
      : `${src.name} (vmid ${t.vmid ?? 'next free'})`,
  });
  const start = !(same && running);
  const timeoutS = o.healthTimeoutS ?? t.healthTimeoutS;
  if (start)
    plan.push(
      { step: 'start', action: 'start', detail: src.name },
      { step: 'health', action: 'agent', detail: `${timeoutS} s` },
    );
  const owned = volumeRe(src.name);
  const old = files
    .filter((f) => f.volid !== importVol && owned.test(baseName(f.volid)))
    .sort((a, b) => (b.ctime ?? 0) - (a.ctime ?? 0));
  const doomed = old.slice(Math.max(0, o.keep - 1));
  if (doomed.length) plan.push({ step: 'gc', action: 'delete', detail: doomed.map((f) => f.volid).join(' ') });
  const disk = params ? Object.keys(params).find((k) => /^(scsi|sata|ide)0$/.test(k))! : 'scsi0';
  return {
    plan,
    vm,
    config,
    had,
    same,
    running,
    params,
    far,
    importVol,
    upload,
    domain,
    start,
    timeoutS,
    doomed,
    disk,
  };
}

/** The token's privileges for each step this deploy takes, checked before the upload. */
function pveNeeds(api: Pve, t: ProxmoxTarget, p: PvePlan): Need[] {
  const { vm, far, params, disk, upload, start, running, doomed } = p;
  const vmPath = vm ? `/vms/${vm.vmid}` : t.vmid !== null ? `/vms/${t.vmid}` : '/vms';
  const needs: Need[] = [];
  if (upload && !far)
    needs.push({ path: `/storage/${t.importStorage}`, privs: ['Datastore.AllocateTemplate'], step: 'the upload' });
  if (params) {
    // over SSH, qm (as root) attaches the disk; the API sets the rest
    const keys = Object.keys(params).filter((k) => !far || (k !== disk && k !== 'boot'));
    if (!far || keys.includes('efidisk0'))
      needs.push({ path: `/storage/${t.storage}`, privs: ['Datastore.AllocateSpace'], step: 'the new disk' });
    if (!vm) needs.push({ path: vmPath, privs: ['VM.Allocate'], step: 'creating the VM' });
    for (const p of configPrivs(keys))
      needs.push({ path: vmPath, privs: [p], step: vm ? 'the new config' : 'creating the VM' });
  }
  if (start || (params && vm && (running || vm.status === 'paused')))
    needs.push({ path: vmPath, privs: ['VM.PowerMgmt'], step: params && vm ? 'shutdown and start' : 'the start' });
  if (start) needs.push({ path: vmPath, privs: agentPrivs(api.major), step: 'the agent ping' });
  if (doomed.length && !far)
    needs.push({
      path: `/storage/${t.importStorage}`,
      privs: ['Datastore.Allocate'],
      step: 'deleting old import files',
    });
  return needs;
}

/** The image into the import storage through the API (a progress bar on a terminal), verified there by its sha256. */
async function uploadImport(api: Pve, src: Source, t: ProxmoxTarget, signal?: AbortSignal): Promise<void> {
  const node = `/nodes/${enc(t.node)}`;
  const bar = process.stderr.isTTY ? progressReporter(`${t.name}: ${src.volume}`) : null;
  let upid: unknown;
  try {
    const body = await multipart(
      { content: 'import', 'checksum-algorithm': 'sha256', checksum: src.sha256 },
      src.path,
      src.volume,
      src.size,
      (n) => bar?.update({ done: n, total: src.size }),
    );
    upid = (await api.call('POST', `${node}/storage/${enc(t.importStorage)}/upload`, { stream: body, signal })).data;
  } finally {
    bar?.end();
  }
  if (typeof upid === 'string') {
    const exit = await api.waitTask(upid, signal);
    if (!taskSucceeded(exit)) {
      const bad = /checksum/i.test(exit);
      throw new PimError(
        bad ? EXIT.DATAERR : EXIT.UNAVAILABLE,
        `${t.name}: uploading ${src.volume} to ${t.importStorage} failed: ${exit}${bad ? '; nothing was created: run pim-deploy again' : ''}`,
      );
    }
    if (exit !== 'OK') await api.warnTask(upid, `uploading ${src.volume}`, exit, signal);
  }
}

/** The VM created, or its config changed (shut down first, under the config's digest); over SSH, the disk imported with qm. */
async function configureVm(
  api: Pve,
  src: Source,
  t: ProxmoxTarget,
  p: PvePlan,
  signal?: AbortSignal,
): Promise<{ vmid: number; sent: string[] }> {
  const node = `/nodes/${enc(t.node)}`;
  const { vm, params, far, disk, importVol } = p;
  let vmid = vm ? Number(vm.vmid) : t.vmid;
  // the keys pim sets, which a rollback puts back as `config` had them
  let sent: string[] = [];
  if (params) {
    sent = Object.keys(params);
    // before 8.4 the disk is imported over SSH, and pim's record goes last, once the VM has it
    const later = far ? { [disk]: params[disk]!, boot: params.boot!, description: params.description! } : null;
    if (later) for (const k of Object.keys(later)) delete params[k];
    if (!vm) {
      vmid ??= Number(await api.get<string>('/cluster/nextid', signal));
      await api.task(
        'POST',
        `${node}/qemu`,
        { vmid: String(vmid), ...params },
        `creating VM ${vmid} (${src.name})`,
        signal,
      );
    } else {
      await updateVm(api, src, t, p, vmid!, params, signal);
    }
    if (later && far) {
      const vol = await qmImport(t, vmid!, importVol, signal);
      await nodeRun(
        t,
        ['qm', 'set', String(vmid), `--${disk}`, vol, '--boot', later.boot],
        `attaching ${vol} to VM ${vmid}`,
        signal,
      );
      await api.task(
        'POST',
        `${node}/qemu/${vmid}/config`,
        { description: later.description },
        `recording ${src.build.id} in VM ${vmid}'s description`,
        signal,
      );
    }
  }
  return { vmid: vmid!, sent };
}

/** A VM that is there gets the new config: its digest checked, the VM shut down, the config set (75 when it changed meanwhile). */
async function updateVm(
  api: Pve,
  src: Source,
  t: ProxmoxTarget,
  p: PvePlan,
  vmid: number,
  params: Record<string, string>,
  signal?: AbortSignal,
): Promise<void> {
  const node = `/nodes/${enc(t.node)}`;
  const { running, config } = p;
  const vm = p.vm!;
  const wasUp = running || vm.status === 'paused';
  const changed = (how: string, restarted: boolean) =>
    new PimError(
      EXIT.TEMPFAIL,
      `${t.name}: ${src.name} (vmid ${vmid})'s config changed since pim read it before the upload (${how}): pim changed nothing${restarted ? ' and started it again' : ''}; look at the change (qm config ${vmid}), then run pim-deploy again`,
    );
  // optimistic locking: the config read before the upload must still be the one there,
  // checked before the shutdown and again by PVE with the change (digest)
  const digest = config?.digest;
  if (digest) {
    const now = await api.get<Record<string, string>>(`${node}/qemu/${vmid}/config`, signal);
    if (now.digest !== digest)
      throw changed(`its digest is now ${String(now.digest).slice(0, 12)}, was ${digest.slice(0, 12)}`, false);
  }
  if (wasUp)
    await api.task(
      'POST',
      `${node}/qemu/${vmid}/status/shutdown`,
      { timeout: String(t.shutdownTimeoutS), forceStop: '1' },
      `shutting ${src.name} (vmid ${vmid}) down`,
      signal,
    );
  try {
    await api.task(
      'POST',
      `${node}/qemu/${vmid}/config`,
      { ...params, ...(digest ? { digest } : {}) },
      `giving ${src.name} (vmid ${vmid}) the new disk`,
      signal,
    );
  } catch (e) {
    if (!(e instanceof PveError && DIGEST_MISMATCH.test(e.pveMessage))) throw e;
    if (wasUp)
      await api.task(
        'POST',
        `${node}/qemu/${vmid}/status/start`,
        {},
        `starting ${src.name} (vmid ${vmid}) again`,
        signal,
      );
    throw changed(`PVE: ${e.pveMessage}`, wasUp);
  }
}

/** Start the VM and wait for its agent; without it: 69 when only a start was asked, else the VM rolled back or deleted (79). */
async function healthOrUndo(
  api: Pve,
  src: Source,
  t: ProxmoxTarget,
  p: PvePlan,
  vmid: number,
  sent: string[],
  signal?: AbortSignal,
): Promise<void> {
  const node = `/nodes/${enc(t.node)}`;
  const { same, vm, config, running, had, timeoutS } = p;
  const why = await startHealthy(api, vmid, timeoutS, signal);
  if (why && same)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: ${src.name} (vmid ${vmid}) on build ${src.build.id}: ${why}; pim only started it, nothing else changed`,
    );
  if (why && vm && config)
    await rollBack(api, src, vmid, config, sent, running || vm.status === 'paused', had, why, signal);
  if (why) {
    log.warn(
      `${t.name}: ${src.name} (vmid ${vmid}) on build ${src.build.id}: ${why}; deleting the VM this deploy created`,
    );
    try {
      await api.task('POST', `${node}/qemu/${vmid}/status/stop`, {}, `stopping ${src.name} (vmid ${vmid})`, signal);
      await api.task('DELETE', `${node}/qemu/${vmid}`, undefined, `deleting VM ${vmid}`, signal);
    } catch (e) {
      if (!(e instanceof PimError)) throw e;
      throw new PimError(
        EXIT.SOFTWARE,
        `${t.name}: ${src.name} (vmid ${vmid}) on build ${src.build.id}: ${why}, and deleting the VM this deploy created failed: ${e.message.replace(`${t.name}: `, '')}`,
      );
    }
    throw new PimError(
      EXIT.ROLLBACK,
      `${t.name}: ${src.name} (vmid ${vmid}) on build ${src.build.id}: ${why}; the new VM was deleted again, with its disk`,
    );
  }
}

/** Old import files of the name, down to --keep: their names. */
async function removeOld(api: Pve, t: ProxmoxTarget, p: PvePlan, signal?: AbortSignal): Promise<string[]> {
  const node = `/nodes/${enc(t.node)}`;
  const { far, doomed } = p;
  const removed: string[] = [];
  if (far && doomed.length)
    await nodeRun(t, ['rm', '-f', '--', ...doomed.map((f) => f.volid)], 'deleting old copies', signal);
  else
    for (const f of doomed) {
      await api.task(
        'DELETE',
        `${node}/storage/${enc(t.importStorage)}/content/${enc(f.volid)}`,
        undefined,
        `deleting ${f.volid}`,
        signal,
      );
      removed.push(f.volid);
    }
  return removed;
}

const baseName = (volid: string) => volid.slice(volid.lastIndexOf('/') + 1);

/** Start the VM and wait for its guest agent: null when it answered, else why not. */
async function startHealthy(api: Pve, vmid: number, timeoutS: number, signal?: AbortSignal): Promise<string | null> {
  const node = `/nodes/${enc(api.t.node)}`;
  // any failure of the start or of the health check is a reason to roll back, a refused ping too
  try {
    await api.task('POST', `${node}/qemu/${vmid}/status/start`, {}, 'the start', signal);
  } catch (e) {
    if (e instanceof PimError) return e.message.replace(`${api.t.name}: `, '');
    throw e;
  }
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    let r: Answer | null = null;
    try {
      r = await api.call('POST', `${node}/qemu/${vmid}/agent/ping`, { signal });
    } catch (e) {
      if (!(e instanceof PimError)) throw e;
      // 403: the token may not ping the agent; waiting will not change that
      if (e.code !== EXIT.UNAVAILABLE)
        return `the health check was refused: ${e.message.replace(`${api.t.name}: `, '')}`;
    }
    if (r) return null;
    if (Date.now() >= deadline) return `its guest agent did not answer within ${timeoutS} s`;
    await sleep(1000, signal);
  }
}

const DRIVE = /^(ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d+$/;

/** The volume ids a config refers to: its disks and its unused disks. */
export function volumesOf(config: Record<string, unknown>): Set<string> {
  return new Set(
    Object.entries(config)
      .filter(([k]) => DRIVE.test(k))
      .map(([, v]) => String(v).split(',')[0]!),
  );
}

/**
 * The form that puts back what pim set: each key as `old` had it, or in `delete` when it
 * had none. Setting scsi0 to the old disk (kept by PVE as unusedN) attaches it again, and
 * PVE drops that unusedN; the new disk it replaces becomes unused.
 */
export function restoreForm(old: Record<string, unknown>, sent: string[]): Record<string, string> {
  const form: Record<string, string> = {};
  const del: string[] = [];
  for (const k of sent) {
    const v = old[k];
    if (v === undefined || v === null || v === '') del.push(k);
    else form[k] = String(v);
  }
  if (del.length) form.delete = del.join(',');
  return form;
}

/**
 * An upgrade whose guest is not healthy: stop it, put the old config back (its disk, settings
 * and description, so pim's record names the old build), delete the disks the deploy made
 * (unused by then), start it again if it ran, and fail with EXIT.ROLLBACK.
 */
async function rollBack(
  api: Pve,
  src: Source,
  vmid: number,
  old: Record<string, string>,
  sent: string[],
  wasRunning: boolean,
  had: DeployMeta | null,
  why: string,
  signal?: AbortSignal,
): Promise<never> {
  const t = api.t;
  const cfg = `/nodes/${enc(t.node)}/qemu/${vmid}`;
  const prev = had?.build ?? 'not a pim build';
  const what = `${t.name}: ${src.name} (vmid ${vmid}) on build ${src.build.id}: ${why}`;
  log.warn(`${what}; restoring the previous config (${prev})`);
  const kept = volumesOf(old);
  const extra: string[] = [];
  try {
    await api.task('POST', `${cfg}/status/stop`, {}, `stopping ${src.name} (vmid ${vmid})`, signal);
    await api.task('POST', `${cfg}/config`, restoreForm(old, sent), `restoring ${src.name}'s config`, signal);
    const now = await api.get<Record<string, string>>(`${cfg}/config`, signal);
    const gone = Object.keys(now).filter((k) => /^unused\d+$/.test(k) && !kept.has(String(now[k])));
    extra.push(...gone.map((k) => String(now[k])));
    if (gone.length)
      await api.task(
        'POST',
        `${cfg}/config`,
        { delete: gone.join(',') },
        `deleting the new disk ${extra.join(' ')}`,
        signal,
      );
    if (wasRunning)
      await api.task('POST', `${cfg}/status/start`, {}, `starting ${src.name} (vmid ${vmid}) again`, signal);
  } catch (e) {
    if (!(e instanceof PimError)) throw e;
    throw new PimError(
      EXIT.SOFTWARE,
      `${what}, and restoring the previous config (${prev}) failed: ${e.message.replace(`${t.name}: `, '')}; its old disk is ${String(old.scsi0 ?? '').split(',')[0] || 'in the config read before'} (qm config ${vmid} shows it as unusedN)`,
    );
  }
  const disk = sent.find((k) => /^(scsi|sata|ide)0$/.test(k)) ?? 'scsi0';
  const oldDisk = old[disk] ? `, its old disk ${String(old[disk]).split(',')[0]} as ${disk}` : '';
  throw new PimError(
    EXIT.ROLLBACK,
    `${what}; the previous config (${prev}) is back${wasRunning ? ' and running' : ''}${oldDisk}${extra.length ? `, the new disk ${extra.join(' ')} deleted` : ''}`,
  );
}

/** PVE before 8.4: the node is reached over SSH (ssh:), argv words quoted for its shell. */
async function nodeRun(t: ProxmoxTarget, argv: string[], what: string, signal?: AbortSignal): Promise<string> {
  const { quoteSh } = await import('./virsh.ts');
  const r = await run('ssh', ['-o', 'BatchMode=yes', '-T', '--', t.ssh!, argv.map(quoteSh).join(' ')], {
    signal,
    hint: 'install openssh-client',
  });
  if (r.code === 255)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: cannot reach ${t.ssh} over ssh: ${r.stderr.trim().split('\n').pop()}`,
    );
  if (r.code !== 0)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: ${what} on ${t.ssh} failed: ${r.stderr.trim().split('\n').pop() ?? `exit status ${r.code}`}`,
    );
  return r.stdout;
}

/** The node's copies (in ${TMPDIR:-/var/tmp}/pim), and whether the build's is there and checks out. */
async function nodeCopies(
  t: ProxmoxTarget,
  src: Source,
  signal?: AbortSignal,
): Promise<{ dir: string; files: ImportFile[]; verified: boolean }> {
  const out = await nodeRun(
    t,
    [
      'sh',
      '-c',
      'd="${TMPDIR:-/var/tmp}/pim"; mkdir -p "$d" && cd "$d" && echo "dir $PWD" && for f in *; do [ -f "$f" ] && echo "file $(stat -c %Y -- "$f") $f"; done; [ -f "$1" ] && sha256sum -- "$1"; true',
      'sh',
      src.volume,
    ],
    'listing the copies',
    signal,
  );
  const dir = /^dir (\/.*)$/m.exec(out)?.[1];
  if (!dir) throw new PimError(EXIT.UNAVAILABLE, `${t.name}: cannot make the copies' directory on ${t.ssh}`);
  const files = [...out.matchAll(/^file (\d+) (.+)$/gm)].map((m) => ({ volid: `${dir}/${m[2]}`, ctime: Number(m[1]) }));
  return { dir, files, verified: new RegExp(`^${src.sha256}\\s`, 'm').test(out) };
}

/** Copy the image to the node (scp), verified there with sha256sum before it takes its name. */
async function copyToNode(t: ProxmoxTarget, src: Source, dir: string, signal?: AbortSignal): Promise<void> {
  const part = `${dir}/.${src.volume}.part`;
  await runOk('scp', ['-o', 'BatchMode=yes', '-q', '-S', 'ssh', '--', src.path, `${t.ssh}:${part}`], {
    what: `${t.name}: cannot copy ${src.volume} to ${t.ssh}`,
    code: EXIT.UNAVAILABLE,
    signal,
  });
  const out = await nodeRun(
    t,
    [
      'sh',
      '-c',
      'if sha256sum -- "$1" | grep -q "^$2 "; then mv -f -- "$1" "$3"; echo ok; else rm -f -- "$1"; echo mismatch; fi',
      'sh',
      part,
      src.sha256,
      `${dir}/${src.volume}`,
    ],
    `verifying ${src.volume}`,
    signal,
  );
  if (!/^ok$/m.test(out))
    throw new PimError(
      EXIT.DATAERR,
      `${t.name}: ${src.volume}: sha256 mismatch on ${t.ssh} after the copy; it was deleted and nothing was created: run pim-deploy again`,
    );
}

/** qm disk import: the volume it made (it is left as unusedN until qm set attaches it), said in either form qemu-server prints. */
async function qmImport(t: ProxmoxTarget, vmid: number, file: string, signal?: AbortSignal): Promise<string> {
  const out = await nodeRun(
    t,
    ['qm', 'disk', 'import', String(vmid), file, t.storage],
    `qm disk import of ${baseName(file)}`,
    signal,
  );
  const vol = importedVolume(out);
  if (!vol)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: qm disk import on ${t.ssh} did not say which disk it made: ${out.trim().split('\n').pop()}`,
    );
  return vol;
}

/** The VMs of the node whose description holds pim's record. */
export async function listProxmox(t: ProxmoxTarget): Promise<Deployed[]> {
  const api = new Pve(t);
  const node = `/nodes/${enc(t.node)}`;
  const vms = await api.get<VmEntry[]>(`${node}/qemu`);
  const out: Deployed[] = [];
  for (const vm of vms) {
    const c = await api.get<Record<string, string>>(`${node}/qemu/${vm.vmid}/config`);
    const m = metaOfDescription(c.description);
    if (m)
      out.push({
        name: vm.name ?? String(vm.vmid),
        build: m.build,
        profile: m.profile,
        volume: m.volume,
        state: vm.status ?? 'unknown',
        key: m.key.slice(0, 12),
      });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}
