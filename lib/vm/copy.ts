/**
 * pim-cp's work: copying files between the host and a VM, scp-style
 * (`NAME:path` on one side), over the VM's ssh config and its cached master
 * connection (lib/vm/reach.ts); or between two VMs (`A:path B:path`), a tar
 * stream from one guest's ssh into the other's, through pim's process (the
 * guests need not reach each other).
 *
 * The copy is OpenSSH's `scp -O` (the legacy protocol: it runs `scp` in the
 * guest, which needs no SFTP server, and dropbear has none) with -p, so
 * modes and times are kept. A guest without an scp binary is found by scp's
 * own complaint ("scp: not found"), remembered for the VM's life
 * (NAME.ssh/via-tar), and served by a tar stream over ssh instead: `tar c` on
 * one side, `tar x` on the other (busybox tar is enough), the modes in the
 * archive. PIM_CP_VIA=scp|tar chooses.
 *
 * Exit codes: a missing local source is 66 before anything runs; a missing
 * remote source is 66 too, told by the guest's "No such file or directory"
 * for it (scp's message, or the tar script's own test -e); a destination
 * that cannot be made is 73, a refused one 77, a connection that fails 69.
 */
import * as fs from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { nameProblem } from '../core/names.ts';

export type CpArg = { kind: 'local'; path: string } | { kind: 'remote'; vm: string; user?: string; path: string };

/**
 * One SRC or DEST word, as scp reads it: a ':' before any '/' makes it remote
 * (`NAME:path`, `USER@NAME:path`; an empty path is the login's home);
 * `./x:y` and `/x:y` are local. A remote word whose NAME is not a VM name is
 * a usage error that says how to write a local path with ':'.
 */
export function parseCpArg(a: string): CpArg {
  if (a === '') throw new PimError(EXIT.USAGE, 'an empty path');
  const colon = a.indexOf(':');
  const slash = a.indexOf('/');
  if (colon <= 0 || (slash >= 0 && slash < colon)) return { kind: 'local', path: a };
  let host = a.slice(0, colon);
  const path = a.slice(colon + 1);
  let user: string | undefined;
  const at = host.lastIndexOf('@');
  if (at >= 0) {
    user = host.slice(0, at);
    host = host.slice(at + 1);
    if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(user)) throw new PimError(EXIT.USAGE, `bad user ${JSON.stringify(user)} in ${JSON.stringify(a)}`);
  }
  const why = nameProblem(host);
  if (why) throw new PimError(EXIT.USAGE, `${JSON.stringify(a)} reads as VM:path, and ${JSON.stringify(host)} is not a VM name (${why}); write a local path with ':' as ./${a}`);
  return { kind: 'remote', vm: host, ...(user ? { user } : {}), path };
}

export interface CpPlan {
  /** up: host to VM; down: VM to host; across: VM (vm) to VM (to) */
  direction: 'up' | 'down' | 'across';
  vm: string;
  user?: string;
  /** across: the VM the files go to, and its user */
  to?: { vm: string; user?: string };
  /** local paths (up) or remote paths (down) */
  sources: string[];
  /** the remote path (up) or the local path (down) */
  dest: string;
}

/** SRC... DEST as a copy: one side remote, or both (VM to VM); one VM a side (64 otherwise). */
export function planCopy(words: string[]): CpPlan {
  if (words.length < 2) throw new PimError(EXIT.USAGE, 'pim-cp SRC... DEST: give a source and a destination');
  const args = words.map(parseCpArg);
  const dest = args[args.length - 1]!;
  const srcs = args.slice(0, -1);
  const remoteSrcs = srcs.filter((s) => s.kind === 'remote') as Array<Extract<CpArg, { kind: 'remote' }>>;
  if (dest.kind === 'remote' && !remoteSrcs.length) return { direction: 'up', vm: dest.vm, ...(dest.user ? { user: dest.user } : {}), sources: srcs.map((s) => s.path), dest: dest.path };
  if (!remoteSrcs.length) throw new PimError(EXIT.USAGE, 'neither side names a VM: write one side as NAME:path');
  if (remoteSrcs.length !== srcs.length) throw new PimError(EXIT.USAGE, 'one side must be a VM (NAME:path) and the other the host: the sources mix both');
  const vms = new Set(remoteSrcs.map((s) => s.vm));
  if (vms.size > 1) throw new PimError(EXIT.USAGE, `the sources name several VMs (${[...vms].join(', ')}): copy from one at a time`);
  const users = new Set(remoteSrcs.map((s) => s.user ?? ''));
  if (users.size > 1) throw new PimError(EXIT.USAGE, 'the sources name several users: copy as one at a time');
  const user = remoteSrcs[0]!.user;
  const from = { vm: remoteSrcs[0]!.vm, ...(user ? { user } : {}), sources: remoteSrcs.map((s) => s.path), dest: dest.path };
  if (dest.kind === 'remote') return { direction: 'across', ...from, to: { vm: dest.vm, ...(dest.user ? { user: dest.user } : {}) } };
  return { direction: 'down', ...from };
}

/** The local side, checked before anything runs: sources exist (66), directories only with -r (64), the destination's directory exists (73). */
export function checkLocal(p: CpPlan, recursive: boolean): void {
  if (p.direction === 'across') return;
  if (p.direction === 'up') {
    for (const s of p.sources) {
      let st: fs.Stats;
      try {
        st = fs.statSync(s);
      } catch {
        throw new PimError(EXIT.NOINPUT, `no such file or directory: ${s}`);
      }
      if (st.isDirectory() && !recursive) throw new PimError(EXIT.USAGE, `${s} is a directory: give -r to copy it`);
    }
    return;
  }
  const d = p.dest;
  const isDir = fs.statSync(d, { throwIfNoEntry: false })?.isDirectory() ?? false;
  if (p.sources.length > 1 && !isDir) throw new PimError(EXIT.CANTCREAT, `${d} is not a directory, and several sources go into it; make it first`);
  if (!isDir && !fs.statSync(dirname(resolve(d)), { throwIfNoEntry: false })?.isDirectory()) {
    throw new PimError(EXIT.CANTCREAT, `no directory ${dirname(resolve(d))} to copy into; make it first`);
  }
}

/** A word for a POSIX shell: single-quoted. */
export const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The remote shell command that runs `script` with `args` ($1, $2, ...). */
export const remoteSh = (script: string, args: string[]) => ['sh', '-c', shq(script), 'pim-cp', ...args.map(shq)].join(' ');

/** In the guest: extract a tar stream into directory $1, or (one source) as the path $1 itself ($2: its name in the archive). */
export const UNTAR_SCRIPT =
  'd=$1; b=$2; if [ -d "$d" ]; then exec tar xf - -C "$d"; fi; ' +
  '[ -n "$b" ] || { echo "pim-cp: $d: Not a directory" >&2; exit 73; }; ' +
  'p=$(dirname "$d"); [ -d "$p" ] || { echo "pim-cp: $p: No such file or directory" >&2; exit 73; }; ' +
  't=$(mktemp -d "$p/.pim-cp.XXXXXX") || exit 73; tar xf - -C "$t" && mv -f "$t/$b" "$d"; r=$?; rm -rf "$t"; exit $r';

/** In the guest: a tar stream of path $1 (66 when it is not there; 64 for a directory unless $2 is r). */
export const TAR_SCRIPT =
  's=$1; [ -e "$s" ] || [ -L "$s" ] || { echo "pim-cp: $s: No such file or directory" >&2; exit 66; }; ' +
  '[ -d "$s" ] && [ "$2" != r ] && { echo "pim-cp: $s is a directory: give -r to copy it" >&2; exit 64; }; ' +
  'cd "$(dirname "$s")" && exec tar cf - "$(basename "$s")"';

/** How a failed copy reads, from the messages it left: a pim error. */
export function copyError(p: CpPlan, stderr: string, status: number): PimError {
  const last = stderr.trim().split('\n').filter(Boolean).pop() ?? `status ${status}`;
  if (status === 64 && / is a directory: give -r/.test(last)) return new PimError(EXIT.USAGE, `${p.vm}:${last.replace(/^pim-cp: /, '')}`);
  if (status === 66 || (p.direction === 'down' && /No such file or directory/.test(stderr))) return new PimError(EXIT.NOINPUT, `no such file or directory in ${p.vm}: ${last.replace(/^(scp|pim-cp): /, '')}`);
  if (/Permission denied/i.test(stderr)) return new PimError(EXIT.NOPERM, `permission denied: ${last}`);
  if (status === 73 || /No such file or directory|Not a directory|Is a directory|No space left|Read-only file system/.test(stderr)) return new PimError(EXIT.CANTCREAT, `cannot write ${p.direction === 'up' ? `${p.vm}:` : ''}${p.dest}: ${last}`);
  return new PimError(EXIT.UNAVAILABLE, `the copy ${p.direction === 'up' ? 'to' : 'from'} ${p.vm} failed: ${last}`);
}

/** The ssh side of a tar stream failed: ssh's own failure (255) is 69, the guest's side reads as copyError says. */
function sshSideError(p: CpPlan, r: { code: number; stderr: string }): PimError {
  if (r.code === 255) return new PimError(EXIT.UNAVAILABLE, `the copy ${p.direction === 'up' ? 'to' : 'from'} ${p.vm} failed: ${r.stderr.trim() || 'ssh exited 255'}`);
  return copyError(p, r.stderr, r.code);
}

type Spawned = import('node:child_process').ChildProcess;

/** A child's status and its stderr (kept for pim-cp's one-line message, not passed on). */
function finish(child: Spawned, label: string): Promise<{ code: number; stderr: string }> {
  return new Promise((res) => {
    let err = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (err.length < 65536) err += d.toString('utf8');
    });
    child.once('error', (e) => res({ code: 255, stderr: `cannot run ${label}: ${e.message}` }));
    child.once('close', (c, sig) => res({ code: c ?? (sig ? 128 : 255), stderr: err }));
  });
}

export interface CopyCtx {
  plan: CpPlan;
  recursive: boolean;
  /** ssh -F CONFIG and the overrides, as for ssh (scp takes the same) */
  sshOpts: string[];
  /** NAME.ssh/: where via-tar is remembered */
  dir: string;
}

/** Copy with scp -O; returns 'no-scp' when the guest has no scp binary. */
export async function viaScp(c: CopyCtx): Promise<'ok' | 'no-scp'> {
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const p = c.plan;
  const target = (path: string) => `${p.vm}:${path}`;
  // on a terminal, scp's own progress meter (bytes, rate, time left; scp draws it on stdout only when that is a terminal)
  const { isatty } = process.getBuiltinModule('node:tty') as typeof import('node:tty');
  const argv = ['-O', '-p', ...(isatty(1) ? [] : ['-q']), ...(c.recursive ? ['-r'] : []), ...c.sshOpts, '--', ...(p.direction === 'up' ? [...p.sources, target(p.dest)] : [...p.sources.map(target), p.dest])];
  const child = spawn('scp', argv, { stdio: ['ignore', 'inherit', 'pipe'] });
  const r = await finish(child, 'scp');
  if (r.code === 0) return 'ok';
  if (/\bscp: (command )?not found/.test(r.stderr)) return 'no-scp';
  throw copyError(p, r.stderr, r.code);
}

/** Copy with a tar stream over ssh, one source at a time. */
export async function viaTar(c: CopyCtx): Promise<void> {
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const p = c.plan;
  const ssh = (cmd: string, out: 'pipe' | 'ignore') => spawn('ssh', [...c.sshOpts, '--', p.vm, cmd], { stdio: [out === 'ignore' ? 'pipe' : 'ignore', out === 'ignore' ? 'ignore' : 'pipe', 'pipe'] });
  for (const s of p.sources) {
    if (p.direction === 'up') {
      const abs = resolve(s);
      const tar = spawn('tar', ['cf', '-', '-C', dirname(abs), basename(abs)], { stdio: ['ignore', 'pipe', 'pipe'] });
      const one = p.sources.length === 1;
      const remote = ssh(remoteSh(UNTAR_SCRIPT, [p.dest === '' ? '.' : p.dest, one ? basename(abs) : '']), 'ignore');
      tar.stdout!.pipe(remote.stdin!);
      const [a, b] = await Promise.all([finish(tar, 'tar'), finish(remote, 'ssh')]);
      if (a.code !== 0) throw new PimError(EXIT.NOINPUT, `tar could not read ${s}: ${a.stderr.trim().split('\n').pop()}`);
      if (b.code !== 0) throw sshSideError(p, b);
    } else {
      const dest = resolve(p.dest);
      const intoDir = fs.statSync(dest, { throwIfNoEntry: false })?.isDirectory() ?? false;
      const where = intoDir ? dest : fs.mkdtempSync(join(dirname(dest), '.pim-cp.'));
      try {
        const remote = ssh(remoteSh(TAR_SCRIPT, [s, c.recursive ? 'r' : '']), 'pipe');
        const tar = spawn('tar', ['xpf', '-', '-C', where], { stdio: ['pipe', 'ignore', 'pipe'] });
        remote.stdout!.pipe(tar.stdin!);
        const [a, b] = await Promise.all([finish(remote, 'ssh'), finish(tar, 'tar')]);
        if (a.code !== 0) throw sshSideError(p, a);
        if (b.code !== 0) throw new PimError(EXIT.CANTCREAT, `tar could not write into ${where}: ${b.stderr.trim().split('\n').pop()}`);
        if (!intoDir) {
          const got = fs.readdirSync(where);
          if (got.length !== 1) throw new PimError(EXIT.DATAERR, `the tar stream from ${p.vm} held ${got.length} entries, not one`);
          fs.renameSync(join(where, got[0]!), dest);
        }
      } finally {
        if (!intoDir) fs.rmSync(where, { recursive: true, force: true });
      }
    }
  }
}

/**
 * From one VM to another: for each source, `tar c` in the first guest (over
 * its ssh config, `from`) piped into `tar x` in the second (`to`), through
 * this process. A missing source is 66, a directory without -r 64, a
 * destination that cannot be written 73, as for the host.
 */
export async function copyAcross(p: CpPlan, recursive: boolean, from: string[], to: string[]): Promise<void> {
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const dst = p.to!;
  const asDown: CpPlan = { ...p, direction: 'down' };
  const asUp: CpPlan = { ...p, direction: 'up', vm: dst.vm };
  const { posix } = process.getBuiltinModule('node:path') as typeof import('node:path');
  for (const s of p.sources) {
    const src = spawn('ssh', [...from, '--', p.vm, remoteSh(TAR_SCRIPT, [s, recursive ? 'r' : ''])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const sink = spawn('ssh', [...to, '--', dst.vm, remoteSh(UNTAR_SCRIPT, [p.dest === '' ? '.' : p.dest, p.sources.length === 1 ? posix.basename(s) : ''])], { stdio: ['pipe', 'ignore', 'pipe'] });
    src.stdout!.pipe(sink.stdin!);
    sink.stdin!.on('error', () => undefined); // the sink gone early: its own status says why
    const [a, b] = await Promise.all([finish(src, 'ssh'), finish(sink, 'ssh')]);
    if (a.code !== 0) throw sshSideError(asDown, a);
    if (b.code !== 0) throw sshSideError(asUp, b);
  }
}

/** The copy: scp -O, or tar when the guest has no scp (remembered) or PIM_CP_VIA=tar. */
export async function copy(c: CopyCtx): Promise<void> {
  const marker = join(c.dir, 'via-tar');
  const want = process.env.PIM_CP_VIA;
  if (want && want !== 'scp' && want !== 'tar') throw new PimError(EXIT.USAGE, `PIM_CP_VIA must be scp or tar, not ${JSON.stringify(want)}`);
  const useTar = want === 'tar' || (want !== 'scp' && fs.existsSync(marker));
  if (!useTar && (await viaScp(c)) === 'ok') return;
  if (!useTar) {
    process.stderr.write(`pim-cp: ${c.plan.vm} has no scp: copying with tar over ssh (also from now on)\n`);
    const { writeFileAtomic } = await import('../core/fs.ts');
    writeFileAtomic(marker, 'the guest has no scp: pim-cp copies with tar\n', 0o600);
  }
  await viaTar(c);
}
