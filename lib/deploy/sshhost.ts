/**
 * An SSH host as a deploy target: the build is copied into the remote user's
 * pim store (${XDG_DATA_HOME:-~/.local/share}/pim/builds/ID/, the same
 * layout as here, lib/image/registry.ts), verified with sha256sum there, and
 * registered by one rename of its finished directory, so `pim-run PROFILE` on
 * that host boots it. A build that is there and checks out is not sent
 * again. Everything runs through the system's ssh and scp, argv only; the
 * remote commands are fixed scripts whose words are quoted for the remote shell.
 *
 * Private there as here: every remote command runs under umask 077, pim's
 * directories there are 0700 (pim/ and pim/builds/ made so, or put back so)
 * and a registered build's files 0400 in a 0700 directory; no bit for
 * group or others. The copy goes into `.tmp-dep-ID-hHOST-PID` beside its
 * place (HOST: a hash of this machine's name): a failed or interrupted copy
 * removes it, and the next deploy removes what a killed run left: any of the
 * same build, any from this machine whose process is gone, and any older
 * than a day.
 */
import { isAlive } from '../core/proc.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { STORE_FILES } from '../core/paths.ts';
import { run, runOk } from '../core/run.ts';
import type { DeployOpts, Deployed, Outcome } from './libvirt.ts';
import type { Source } from './source.ts';
import type { SshTarget } from './targets.ts';
import { quoteSh } from './virsh.ts';
import { buildDir } from '../image/registry.ts';

const STORE = '"${XDG_DATA_HOME:-$HOME/.local/share}/pim/builds"';

function sshBase(t: SshTarget, scp = false): string[] {
  const a = ['-o', 'BatchMode=yes'];
  if (t.port) a.push(scp ? '-P' : '-p', String(t.port));
  if (t.identity) a.push('-i', t.identity);
  return a;
}

const ssh = (t: SshTarget, script: string, signal?: AbortSignal) =>
  run('ssh', [...sshBase(t), '-T', '--', t.host, script], { signal, hint: 'install openssh-client' });

export async function deploySsh(src: Source, t: SshTarget, o: DeployOpts): Promise<Outcome> {
  const id = src.build.id;
  const file = src.build.disk.file;
  const q = quoteSh;
  const probe = await ssh(
    t,
    `umask 077; d=${STORE}/${q(id)}; test -f "$d/${STORE_FILES.buildRecord}" && sha256sum -- "$d/"${q(file)}; mkdir -p ${STORE} && chmod 700 ${STORE} "$(dirname ${STORE})" && echo "store ${STORE}" && for f in ${STORE}/.tmp-dep-*; do [ -e "$f" ] && echo "tmp \${f##*/}"; done; true`,
    o.signal,
  );
  if (probe.code === 255)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: cannot reach ${t.host} over ssh: ${probe.stderr.trim().split('\n').pop()}`,
    );
  const store = /^store (.+)$/m.exec(probe.stdout)?.[1];
  if (probe.code !== 0 || !store)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: ${t.host}: cannot make the pim store: ${probe.stderr.trim().split('\n').pop()}`,
    );
  const there = new RegExp(`^${src.sha256}\\s`, 'm').test(probe.stdout);
  const plan: Outcome['plan'] = [
    {
      step: 'upload',
      action: there ? 'skip' : 'upload',
      detail: `${id} to ${t.host}:${store}/${id} (${src.size} bytes)`,
    },
  ];
  if (o.dryRun || there)
    return { plan, upload: there ? 'skipped' : 'uploaded', domain: 'kept', started: false, removed: [] };
  const me = hostTag();
  const tmp = `${store}/.tmp-dep-${id}-${me}-${process.pid}`;
  // what a killed run left goes first: copies of this build, this machine's whose process is gone, any older than a day
  const stale = [...probe.stdout.matchAll(/^tmp (\.tmp-dep-(.*)-(h[0-9a-f]{8})-(\d+))$/gm)]
    .filter(([, , sid, host, pid]) => sid === id || (host === me && !isAlive(Number(pid))))
    .map(([, name]) => `./${q(name!)}`);
  await runOk(
    'ssh',
    [
      ...sshBase(t),
      '-T',
      '--',
      t.host,
      `umask 077; cd ${q(store)} && rm -rf ${stale.join(' ')} ./.tmp-dep-${q(id)}-* && find . -maxdepth 1 -name '.tmp-dep-*' -mmin +1440 -exec rm -rf {} + ; mkdir -m 700 ${q(tmp)}`,
    ],
    { what: `${t.name}: cannot make ${tmp}`, code: EXIT.UNAVAILABLE },
  );
  const files = [src.path, ...(src.efivars ? [src.efivars] : [])];
  files.push(`${buildDir(id)}/${STORE_FILES.buildRecord}`);
  const dest = t.host.includes('@') || !t.host.includes(':') ? `${t.host}:${tmp}/` : `[${t.host}]:${tmp}/`;
  let fin: Awaited<ReturnType<typeof ssh>>;
  try {
    await runOk('scp', [...sshBase(t, true), '-q', '-S', 'ssh', '--', ...files, dest], {
      what: `${t.name}: cannot copy ${id} to ${t.host}`,
      code: EXIT.UNAVAILABLE,
      signal: o.signal,
    });
    // verified there, then made read-only (for its owner only) and put in place by one rename
    fin = await ssh(
      t,
      `umask 077; cd ${q(tmp)} && s=$(sha256sum -- ${q(file)}) && case $s in ${src.sha256}*) ;; *) echo "mismatch $s"; exit 65;; esac && : >${STORE_FILES.buildLog} && chmod 400 * && chmod 700 . && cd / && mv -T ${q(tmp)} ${STORE}/${q(id)}`,
      o.signal,
    );
  } catch (e) {
    await removeRemote(t, tmp);
    throw e;
  }
  if (fin.code !== 0) await removeRemote(t, tmp);
  if (fin.code === 65)
    throw new PimError(
      EXIT.DATAERR,
      `${t.name}: ${id}: sha256 mismatch on ${t.host} (${fin.stdout.trim()}); nothing was registered`,
    );
  if (fin.code !== 0)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: cannot register ${id} on ${t.host}: ${fin.stderr.trim().split('\n').pop()}`,
    );
  return { plan, upload: 'uploaded', domain: 'defined', started: false, removed: [] };
}

/** This machine, in the names of its copies on a remote host: h and 8 hex digits of its name's sha256. */
function hostTag(): string {
  const { createHash } = process.getBuiltinModule('node:crypto') as typeof import('node:crypto');
  const { hostname } = process.getBuiltinModule('node:os') as typeof import('node:os');
  return 'h' + createHash('sha256').update(hostname()).digest('hex').slice(0, 8);
}

/** Remove a half-made copy on the remote host (no signal: it runs also after an interrupt); a failure to is said, not thrown. */
async function removeRemote(t: SshTarget, tmp: string): Promise<void> {
  const r = await ssh(t, `rm -rf ${quoteSh(tmp)}`).catch((e: Error) => ({ code: 255, stderr: e.message }));
  if (r.code !== 0)
    process.stderr.write(
      `pim-deploy: ${t.name}: could not remove ${tmp} on ${t.host} (the next deploy of the build does): ${r.stderr.trim().split('\n').pop()}\n`,
    );
}

/** The builds in the remote user's pim store. */
export async function listSsh(t: SshTarget): Promise<Deployed[]> {
  const r = await ssh(
    t,
    `for f in ${STORE}/*/${STORE_FILES.buildRecord}; do [ -f "$f" ] && tr -d '\\n' <"$f" && echo; done; true`,
  );
  if (r.code !== 0)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${t.name}: cannot list the builds on ${t.host}: ${r.stderr.trim().split('\n').pop()}`,
    );
  const out: Deployed[] = [];
  for (const line of r.stdout.split('\n')) {
    try {
      const b = JSON.parse(line) as { id: string; profile: string; key: string; disk: { file: string } };
      out.push({
        name: b.id,
        build: b.id,
        profile: b.profile,
        volume: b.disk.file,
        state: 'registered',
        key: b.key.slice(0, 12),
      });
    } catch {
      /* not a record */
    }
  }
  return out;
}
