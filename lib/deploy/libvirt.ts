/**
 * Deploying a build into libvirt, local (qemu:///system) or over
 * qemu+ssh://, through virsh alone (lib/deploy/virsh.ts batches its calls):
 *
 *   1. one batch asks for the pool, its volumes, the domain (inactive XML and
 *      state) and the other domains;
 *   2. the volume `<name>-<sha12>.qcow2` is uploaded (vol-upload of the file,
 *      or through a FIFO for a progress bar) unless it is there and
 *      its sha256 checks out on the far side. An upload is marked by an empty
 *      volume `<volume>.uploading`, deleted once the far side's hash matches:
 *      a run that finds a marker (an upload killed part-way) deletes the
 *      volume and the marker first;
 *   3. a domain of the same build is left alone (started if it is stopped);
 *      another is upgraded: its inactive XML saved, the domain shut down
 *      within the timeout, the new one defined (same UUID) and started;
 *   4. the health check (the guest agent's ping, a TCP port or a serial
 *      marker) must pass within the timeout; otherwise the old definition is
 *      defined and started again, and the deploy fails with EXIT.ROLLBACK;
 *   5. old volumes of the name are deleted down to --keep, never one that a
 *      domain still uses.
 */
import * as fs from 'node:fs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { run } from '../core/run.ts';
import { efivarsOf, STORE_FILES, stateDir } from '../core/paths.ts';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';
import { checkAborted } from '../core/signals.ts';
import { disksOf, domainXml, metaOf, uuidOf, type DeployMeta } from './domain.ts';
import { deployMeta, volumeRe, type Source } from './source.ts';
import { hashFile } from '../install/iso.ts';
import { receiveThrough, sendThrough } from './stream.ts';
import type { LibvirtTarget } from './targets.ts';
import { quoteSh, sshArgv, Virsh } from './virsh.ts';
import { progressReporter } from '../install/download.ts';

export const MARKER = '.uploading';

export interface DeployOpts {
  dryRun?: boolean;
  keep: number;
  healthTimeoutS?: number;
  signal?: AbortSignal;
}

/** One step of a plan: what, and on what. */
export interface Step {
  step: 'pool' | 'clean' | 'upload' | 'domain' | 'start' | 'health' | 'gc';
  action: string;
  detail: string;
}

/** What pim-deploy did with a build on a target (lib/deploy/deploy.ts). */
export interface DeployResult {
  name: string;
  build: string;
  volume: string;
  outcome: Outcome;
}

export interface Outcome {
  plan: Step[];
  upload: 'uploaded' | 'skipped';
  domain: 'defined' | 'upgraded' | 'kept';
  started: boolean;
  removed: string[];
}

interface Vol {
  name: string;
  path: string;
}

/** What the far side holds, from one batch. */
export interface State {
  pool: { exists: boolean; active: boolean; path: string | null };
  vols: Vol[];
  domain: { xml: string; meta: DeployMeta | null; uuid: string | null; state: string } | null;
  domains: string[];
}

export async function farState(v: Virsh, t: LibvirtTarget, name: string): Promise<State> {
  const [pdx, pinfo, vlist, dx, ds, all] = await v.batch([
    ['pool-dumpxml', t.pool],
    ['pool-info', t.pool],
    ['vol-list', t.pool],
    ['dumpxml', '--inactive', name],
    ['domstate', name],
    ['list', '--all', '--name'],
  ]);
  const vols: Vol[] = [];
  if (vlist!.ok) {
    // virsh -q leaves out the table's header: NAME PATH, one a line
    for (const line of vlist!.out.split('\n')) {
      const m = /^\s*(\S+)\s+(\/.*?)\s*$/.exec(line);
      if (m) vols.push({ name: m[1]!, path: m[2]! });
    }
  }
  return {
    pool: {
      exists: pdx!.ok,
      active: pinfo!.ok && /^State:\s+running/m.test(pinfo!.out),
      path: /<path>([^<]+)<\/path>/.exec(pdx!.out)?.[1] ?? null,
    },
    vols,
    domain: dx!.ok
      ? { xml: dx!.out, meta: metaOf(dx!.out), uuid: uuidOf(dx!.out), state: ds!.ok ? ds!.out.trim() : 'unknown' }
      : null,
    domains: all!.ok
      ? all!.out
          .split('\n')
          .map((s) => s.trim())
          .filter(Boolean)
      : [],
  };
}

/** The sha256 of a volume on the far side: read locally, over the URI's ssh, else downloaded through virsh. */
export async function farHash(v: Virsh, t: LibvirtTarget, vol: Vol, signal?: AbortSignal): Promise<string> {
  const u = v.parsed;
  if (u.transport === 'local') {
    try {
      return await hashFile(vol.path, 'sha256');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EACCES') throw e;
    }
  } else if (u.transport === 'ssh') {
    const r = await run('ssh', [...sshArgv(u), 'sha256sum', '--', quoteSh(vol.path)], {
      signal,
      hint: 'install openssh-client',
    });
    const sha = /^([0-9a-f]{64})\s/.exec(r.stdout)?.[1];
    if (r.code === 0 && sha) return sha;
    log.debug(`ssh sha256sum of ${vol.path}: ${r.stderr.trim()}; downloading it instead`);
  }
  return receiveThrough(
    (fifo) => v.must([['vol-download', '--pool', t.pool, vol.name, fifo]], `cannot read back ${vol.name}`),
    signal,
  );
}

/** Read a small file of the far side (a serial log), or null. */
async function farRead(v: Virsh, path: string): Promise<string | null> {
  const u = v.parsed;
  if (u.transport === 'local') {
    try {
      return fs.readFileSync(path, 'utf8');
    } catch {
      return null;
    }
  }
  if (u.transport !== 'ssh') return null;
  const r = await run('ssh', [...sshArgv(u), 'cat', '--', quoteSh(path)]);
  return r.code === 0 ? r.stdout : null;
}

/** Wait `ms`, or less when `signal` aborts. */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

/** Wait until the domain's health check passes; false when it has not within the timeout. */
export async function healthy(
  v: Virsh,
  t: LibvirtTarget,
  name: string,
  timeoutS: number,
  serialLog: string | null,
  signal?: AbortSignal,
): Promise<boolean> {
  const deadline = Date.now() + timeoutS * 1000;
  const h = t.health;
  while (Date.now() < deadline) {
    checkAborted(signal);
    if (h.kind === 'agent') {
      const [r] = await v.batch([['qemu-agent-command', name, '{"execute":"guest-ping"}', '--timeout', '2']], {
        signal,
      });
      if (r!.ok && r!.out.includes('"return"')) return true;
    } else if (h.kind === 'serial') {
      if (serialLog && (await farRead(v, serialLog))?.includes(h.marker)) return true;
    } else {
      const [r] = await v.batch([['domifaddr', name, '--source', 'agent']], { signal });
      const addr = r!.ok
        ? [...r!.out.matchAll(/ipv4\s+(\d+\.\d+\.\d+\.\d+)\//g)].map((m) => m[1]!).find((a) => !a.startsWith('127.'))
        : undefined;
      if (addr && (await tcpOpen(addr, h.port))) return true;
    }
    await sleep(1000, signal);
  }
  return false;
}

async function tcpOpen(host: string, port: number): Promise<boolean> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.createConnection({ host, port, timeout: 2000 });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

/** Shut the domain down within `timeoutS` (ACPI), else destroy it. */
async function shutDown(v: Virsh, name: string, timeoutS: number, signal?: AbortSignal): Promise<void> {
  const [r] = await v.batch([['shutdown', name]], { signal });
  const deadline = Date.now() + timeoutS * 1000;
  if (r!.ok) {
    while (Date.now() < deadline) {
      await sleep(500, signal);
      checkAborted(signal);
      const [s] = await v.batch([['domstate', name]], { signal });
      if (s!.ok && /shut off/.test(s!.out)) return;
    }
    log.warn(`${name} did not shut down within ${timeoutS} s; stopping it hard (virsh destroy)`);
  }
  const [d] = await v.batch(
    [
      ['destroy', name],
      ['domstate', name],
    ],
    { signal },
  );
  if (!d!.ok && !/not running/.test(d!.err)) throw new PimError(EXIT.SOFTWARE, `cannot stop ${name}: ${d!.err}`);
}

/** A private temp file for an XML that virsh reads (define FILE). */
function xmlFile(dir: string, base: string, xml: string): string {
  const p = join(dir, base);
  writeFileSync(p, xml, { mode: 0o600, flag: 'wx' });
  return p;
}

/** What a libvirt deploy does, worked out from the far side's state before anything changes. */
interface LibvirtPlan {
  plan: Step[];
  st: State;
  poolPath: string;
  /** markers of uploads killed part-way */
  stale: Vol[];
  staleVols: Set<string>;
  /** the build's volume, when the far side has it */
  there: Vol | undefined;
  upload: boolean;
  /** the domain runs this build already (nothing to upload) */
  same: boolean;
  running: boolean;
  domainAction: Outcome['domain'];
  start: boolean;
}

export async function deployLibvirt(src: Source, t: LibvirtTarget, o: DeployOpts): Promise<Outcome> {
  const v = new Virsh(t.uri);
  const p = await planLibvirt(v, src, t, o);
  const { plan, st, upload, same, running } = p;
  if (o.dryRun) {
    const owned = volumeRe(src.name);
    const old = st.vols.filter((x) => owned.test(x.name) && x.name !== src.volume && !p.staleVols.has(x.name));
    if (old.length > o.keep - 1)
      plan.push({
        step: 'gc',
        action: 'check',
        detail: `${old.length} older volume(s) of ${src.name}; keep ${o.keep}`,
      });
    return { plan, upload: upload ? 'uploaded' : 'skipped', domain: p.domainAction, started: p.start, removed: [] };
  }
  const tmp = mkdtempSync(join(tmpdir(), 'pim-deploy-'));
  try {
    // 1. the pool, and what a killed upload left
    await prepareFar(v, src, t, p, o.signal);
    // 2. the upload, verified on the far side before anything is defined
    if (upload) await uploadVolume(v, t, src, o.signal);
    // 3. the domain
    if (same) {
      if (!running) await startKept(v, src, t, o);
      return { plan, upload: 'skipped', domain: 'kept', started: !running, removed: await gc(v, t, src, st, o) };
    }
    await replaceDomain(v, src, t, p, tmp, o);
    return {
      plan,
      upload: upload ? 'uploaded' : 'skipped',
      domain: st.domain ? 'upgraded' : 'defined',
      started: true,
      removed: await gc(v, t, src, st, o),
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The far side's state, and the steps a deploy of `src` takes from it. */
async function planLibvirt(v: Virsh, src: Source, t: LibvirtTarget, o: DeployOpts): Promise<LibvirtPlan> {
  const name = src.name;
  const st = await farState(v, t, name);
  const plan: Step[] = [];
  const poolPath = st.pool.path ?? t.poolPath;
  if (!st.pool.exists)
    plan.push({ step: 'pool', action: 'create', detail: `${t.pool} (a directory pool at ${t.poolPath})` });
  else if (!st.pool.active) plan.push({ step: 'pool', action: 'start', detail: t.pool });

  // an upload killed part-way: its marker and its volume go first
  const owned = volumeRe(name);
  const stale = st.vols.filter((x) => x.name.endsWith(MARKER) && owned.test(x.name.slice(0, -MARKER.length)));
  const staleVols = new Set(stale.map((x) => x.name.slice(0, -MARKER.length)));
  for (const s of stale)
    plan.push({
      step: 'clean',
      action: 'delete',
      detail: `${s.name.slice(0, -MARKER.length)} (an upload that did not finish)`,
    });

  const there = st.vols.find((x) => x.name === src.volume && !staleVols.has(x.name));
  let upload = !there;
  if (there) {
    const far = await farHash(v, t, there, o.signal);
    if (far !== src.sha256) {
      log.warn(
        `${t.name}: ${src.volume} is there but its sha256 is ${far.slice(0, 12)}…, not ${src.sha256.slice(0, 12)}…: uploading it again`,
      );
      plan.push({ step: 'clean', action: 'delete', detail: `${src.volume} (sha256 mismatch)` });
      upload = true;
    }
  }
  plan.push({
    step: 'upload',
    action: upload ? 'upload' : 'skip',
    detail: `${src.volume} (${src.size} bytes, sha256 ${src.sha256.slice(0, 12)})`,
  });

  const d = st.domain;
  const same = Boolean(d?.meta && d.meta.sha256 === src.sha256 && d.meta.volume === src.volume) && !upload;
  const running = d?.state === 'running';
  const domainAction: Outcome['domain'] = !d ? 'defined' : same ? 'kept' : 'upgraded';
  plan.push({
    step: 'domain',
    action: domainAction === 'defined' ? 'define' : domainAction === 'kept' ? 'keep' : 'upgrade',
    detail: d ? `${name} (${d.meta?.build ?? 'not deployed by pim'}, ${d.state})` : name,
  });
  const start = !(same && running);
  if (start)
    plan.push(
      { step: 'start', action: 'start', detail: name },
      { step: 'health', action: t.health.kind, detail: `${o.healthTimeoutS ?? t.healthTimeoutS} s` },
    );
  return { plan, st, poolPath, stale, staleVols, there, upload, same, running, domainAction, start };
}

/** Step 1: the pool made or started, a killed upload's volume and marker deleted, a volume of the wrong hash too. */
async function prepareFar(v: Virsh, src: Source, t: LibvirtTarget, p: LibvirtPlan, signal?: AbortSignal) {
  const prep: string[][] = [];
  if (!p.st.pool.exists)
    prep.push(
      ['pool-define-as', t.pool, 'dir', '--target', t.poolPath],
      ['pool-build', t.pool],
      ['pool-start', t.pool],
      ['pool-autostart', t.pool],
    );
  else if (!p.st.pool.active) prep.push(['pool-start', t.pool]);
  for (const s of p.stale)
    prep.push(
      ['vol-delete', '--pool', t.pool, s.name.slice(0, -MARKER.length)],
      ['vol-delete', '--pool', t.pool, s.name],
    );
  if (p.upload && p.there) prep.push(['vol-delete', '--pool', t.pool, src.volume]);
  if (!prep.length) return;
  const res = await v.batch(prep, { signal });
  const bad = res.findIndex(
    (r, i) =>
      !r.ok &&
      !(prep[i]![0] === 'vol-delete' && /not found|no storage vol/i.test(r.err)) &&
      !(prep[i]![0] === 'pool-build' && /exists/i.test(r.err)),
  );
  if (bad >= 0)
    throw new PimError(
      /pool/.test(prep[bad]![0]!) ? EXIT.CANTCREAT : EXIT.SOFTWARE,
      `${t.name}: ${prep[bad]![0]} ${t.pool}: ${res[bad]!.err}`,
    );
}

/** The serial log libvirt writes for a serial health check, else null. */
const serialLogOf = (t: LibvirtTarget, name: string) =>
  t.health.kind === 'serial' ? `/var/log/libvirt/qemu/${name}-serial.log` : null;

/** A stopped domain of the same build: started, and its health checked (a failure is a rollback: nothing else changed). */
async function startKept(v: Virsh, src: Source, t: LibvirtTarget, o: DeployOpts): Promise<void> {
  const name = src.name;
  await v.must([['start', name]], `${t.name}: cannot start ${name}`, EXIT.SOFTWARE, { signal: o.signal });
  if (!(await healthy(v, t, name, o.healthTimeoutS ?? t.healthTimeoutS, serialLogOf(t, name), o.signal)))
    throw new PimError(
      EXIT.ROLLBACK,
      `${t.name}: ${name} did not pass its health check (${t.health.kind}) within ${o.healthTimeoutS ?? t.healthTimeoutS} s`,
    );
}

/**
 * Steps 3 and 4 for a new build: the old definition saved and the domain shut down,
 * the new one defined and started; no health within the timeout puts the old one back (79).
 */
async function replaceDomain(
  v: Virsh,
  src: Source,
  t: LibvirtTarget,
  p: LibvirtPlan,
  tmp: string,
  o: DeployOpts,
): Promise<void> {
  const name = src.name;
  const d = p.st.domain;
  const uefiVars = src.efivars ? efivarsOf(src.volume) : null;
  const serialLog = serialLogOf(t, name);
  const xml = domainXml({
    name,
    uuid: d?.uuid ?? null,
    target: t,
    build: src.build,
    volume: src.volume,
    nvram: uefiVars ? join(p.poolPath, uefiVars) : null,
    meta: deployMeta(src),
    serialLog,
  });
  let oldFile: string | null = null;
  if (d) {
    // keep the old definition where the user can find it, then stop the domain
    const dir = ensurePrivateDir(join(stateDir(), 'deploy', t.name));
    writeFileAtomic(join(dir, name + STORE_FILES.prevXml), d.xml);
    oldFile = xmlFile(tmp, 'old.xml', d.xml);
    if (p.running || d.state === 'paused') await shutDown(v, name, t.shutdownTimeoutS, o.signal);
  }
  const newFile = xmlFile(tmp, 'new.xml', xml);
  const [def, sta] = await v.batch(
    [
      ['define', newFile],
      ['start', name],
    ],
    { signal: o.signal },
  );
  const timeoutS = o.healthTimeoutS ?? t.healthTimeoutS;
  const ok = def!.ok && sta!.ok && (await healthy(v, t, name, timeoutS, serialLog, o.signal));
  if (ok) return;
  const why = (
    !def!.ok
      ? `define failed: ${def!.err}`
      : !sta!.ok
        ? `start failed: ${sta!.err}`
        : `no ${t.health.kind} health within ${timeoutS} s`
  ).replace(/\n/g, '; ');
  if (oldFile) await restoreDomain(v, src, t, p, oldFile, why, o.signal);
  await v.batch(
    [
      ['destroy', name],
      ['undefine', name],
    ],
    { signal: o.signal },
  );
  throw new PimError(
    EXIT.ROLLBACK,
    `${t.name}: ${name} on build ${src.build.id}: ${why}; the new domain was removed again`,
  );
}

/** Put the previous definition back (started again if it ran) and fail: 79, or 70 when even that failed. */
async function restoreDomain(
  v: Virsh,
  src: Source,
  t: LibvirtTarget,
  p: LibvirtPlan,
  oldFile: string,
  why: string,
  signal?: AbortSignal,
): Promise<never> {
  const name = src.name;
  const prev = p.st.domain!.meta?.build ?? 'not a pim build';
  log.warn(`${t.name}: ${name} on ${src.build.id}: ${why}; restoring the previous definition (${prev})`);
  const back = await v.batch([['destroy', name], ['define', oldFile], ...(p.running ? [['start', name]] : [])], {
    signal,
  });
  const bad = back.slice(1).find((r) => !r.ok);
  if (bad)
    throw new PimError(
      EXIT.SOFTWARE,
      `${t.name}: ${name}: ${why}, and restoring the previous definition failed: ${bad.err}; it is saved in ${join(stateDir(), 'deploy', t.name, name + STORE_FILES.prevXml)}`,
    );
  throw new PimError(
    EXIT.ROLLBACK,
    `${t.name}: ${name} on build ${src.build.id}: ${why}; the previous definition (${prev}) is back${p.running ? ' and running' : ''}`,
  );
}

/**
 * Upload `src` as its volume: marker, create, upload, verify on the far side, marker gone.
 * On a terminal the bytes go through a FIFO, hashed and counted as they stream, for the
 * progress bar; elsewhere virsh is given the file itself, hashed alongside (it is in the
 * page cache then): a FIFO between two processes cost about 15% of the throughput
 * over qemu+ssh:// here (bench/deploy.sh).
 */
async function uploadVolume(v: Virsh, t: LibvirtTarget, src: Source, signal?: AbortSignal): Promise<void> {
  const marker = src.volume + MARKER;
  // a bar on a terminal only: elsewhere the result line says it all
  const bar = process.stderr.isTTY ? progressReporter(`${t.name}: ${src.volume}`) : null;
  const send = (file: string) =>
    v.must(
      [
        ['vol-create-as', t.pool, marker, '0', '--format', 'raw'],
        ['vol-create-as', t.pool, src.volume, String(src.size), '--format', 'raw'],
        ['vol-upload', '--pool', t.pool, src.volume, file],
        ...(src.efivars
          ? [
              [
                'vol-create-as',
                t.pool,
                efivarsOf(src.volume),
                String(fs.statSync(src.efivars).size),
                '--format',
                'raw',
              ],
              ['vol-upload', '--pool', t.pool, efivarsOf(src.volume), src.efivars],
            ]
          : []),
      ],
      `${t.name}: cannot upload ${src.volume}`,
      EXIT.UNAVAILABLE,
      { signal },
    );
  let sent: string;
  const t0 = performance.now();
  try {
    if (bar) sent = await sendThrough(src.path, send, (n) => bar.update({ done: n, total: src.size }), signal);
    else [sent] = await Promise.all([hashFile(src.path, 'sha256'), send(src.path)]);
  } finally {
    bar?.end();
  }
  log.debug(`uploaded ${src.size} bytes in ${((performance.now() - t0) / 1000).toFixed(3)} s`);
  const [info] = await v.batch([['vol-path', '--pool', t.pool, src.volume]], { signal });
  const path = info!.out.trim();
  const far = await farHash(v, t, { name: src.volume, path }, signal);
  if (sent !== src.sha256 || far !== src.sha256) {
    await v.batch([
      ['vol-delete', '--pool', t.pool, src.volume],
      ['vol-delete', '--pool', t.pool, marker],
    ]);
    const which =
      sent !== src.sha256
        ? `the bytes sent hash to ${sent.slice(0, 12)}… (the build changed while it was read?)`
        : `the far side's copy hashes to ${far.slice(0, 12)}…`;
    throw new PimError(
      EXIT.DATAERR,
      `${t.name}: ${src.volume}: sha256 mismatch: ${which}, not ${src.sha256.slice(0, 12)}…; the volume was deleted and nothing was defined`,
    );
  }
  await v.must([['vol-delete', '--pool', t.pool, marker]], `${t.name}: cannot remove the upload marker ${marker}`);
}

/** Delete old volumes of the name down to `keep` (the current one counts), never one a domain uses. */
async function gc(v: Virsh, t: LibvirtTarget, src: Source, st: State, o: DeployOpts): Promise<string[]> {
  const owned = volumeRe(src.name);
  const old = st.vols.filter((x) => owned.test(x.name) && x.name !== src.volume);
  if (old.length <= o.keep - 1) return [];
  const doms = [...new Set([...st.domains, src.name])];
  const res = await v.batch(
    [...doms.map((n) => ['dumpxml', n]), ...old.map((x) => ['vol-dumpxml', '--pool', t.pool, x.name])],
    { signal: o.signal },
  );
  const used = new Set<string>();
  for (const r of res.slice(0, doms.length)) {
    if (!r.ok) continue;
    const { volumes, files } = disksOf(r.out);
    for (const vol of volumes) if (vol.startsWith(`${t.pool}/`)) used.add(vol.slice(t.pool.length + 1));
    for (const f of files) for (const x of old) if (x.path === f || efivarsOf(x.path) === f) used.add(x.name);
  }
  const mtime = (i: number) => Number(/<mtime>([\d.]+)<\/mtime>/.exec(res[doms.length + i]!.out)?.[1] ?? 0);
  const ranked = old.map((x, i) => ({ x, m: mtime(i) })).sort((a, b) => b.m - a.m);
  const doomed = ranked
    .slice(Math.max(0, o.keep - 1))
    .filter((r) => !used.has(r.x.name))
    .map((r) => r.x.name);
  for (const r of ranked.slice(Math.max(0, o.keep - 1)))
    if (used.has(r.x.name)) log.info(`${t.name}: ${r.x.name} is still in use by a domain; kept`);
  if (!doomed.length) return [];
  const names = st.vols.map((x) => x.name);
  const cmds = doomed.flatMap((n) => [
    ['vol-delete', '--pool', t.pool, n],
    ...(names.includes(efivarsOf(n)) ? [['vol-delete', '--pool', t.pool, efivarsOf(n)]] : []),
  ]);
  const del = await v.batch(cmds, { signal: o.signal });
  return doomed.filter((n) => del[cmds.findIndex((c) => c[3] === n)]!.ok);
}

export type Deployed = {
  name: string;
  build: string;
  profile: string;
  volume: string;
  state: string;
  key: string;
};

/** What pim deployed on the target: the domains whose metadata names a pim build. */
export async function listLibvirt(t: LibvirtTarget): Promise<Deployed[]> {
  const v = new Virsh(t.uri);
  const [all] = await v.must([['list', '--all', '--name']], `${t.name}: cannot list domains`, EXIT.UNAVAILABLE);
  const names = all!.out
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean);
  const res = await v.batch(
    names.flatMap((n) => [
      ['dumpxml', '--inactive', n],
      ['domstate', n],
    ]),
  );
  const out: Deployed[] = [];
  names.forEach((n, i) => {
    const meta = res[2 * i]!.ok ? metaOf(res[2 * i]!.out) : null;
    if (meta)
      out.push({
        name: n,
        build: meta.build,
        profile: meta.profile,
        volume: meta.volume,
        state: res[2 * i + 1]!.out.trim() || 'unknown',
        key: meta.key.slice(0, 12),
      });
  });
  return out.sort((a, b) => a.name.localeCompare(b.name));
}
