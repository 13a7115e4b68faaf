/**
 * pim-cp's work: copying files between the host and a VM, scp-style
 * (`NAME:path` on one side), over the VM's ssh config and its cached master
 * connection (lib/guest/reach.ts); or between two VMs (`A:path B:path`), a tar
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
    if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(user))
      throw new PimError(EXIT.USAGE, `bad user ${JSON.stringify(user)} in ${JSON.stringify(a)}`);
  }
  const why = nameProblem(host);
  if (why)
    throw new PimError(
      EXIT.USAGE,
      `${JSON.stringify(a)} reads as VM:path, and ${JSON.stringify(host)} is not a VM name (${why}); write a local path with ':' as ./${a}`,
    );
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
  if (dest.kind === 'remote' && !remoteSrcs.length)
    return {
      direction: 'up',
      vm: dest.vm,
      ...(dest.user ? { user: dest.user } : {}),
      sources: srcs.map((s) => s.path),
      dest: dest.path,
    };
  if (!remoteSrcs.length) throw new PimError(EXIT.USAGE, 'neither side names a VM: write one side as NAME:path');
  if (remoteSrcs.length !== srcs.length)
    throw new PimError(EXIT.USAGE, 'one side must be a VM (NAME:path) and the other the host: the sources mix both');
  const vms = new Set(remoteSrcs.map((s) => s.vm));
  if (vms.size > 1)
    throw new PimError(EXIT.USAGE, `the sources name several VMs (${[...vms].join(', ')}): copy from one at a time`);
  const users = new Set(remoteSrcs.map((s) => s.user ?? ''));
  if (users.size > 1) throw new PimError(EXIT.USAGE, 'the sources name several users: copy as one at a time');
  const user = remoteSrcs[0]!.user;
  const from = {
    vm: remoteSrcs[0]!.vm,
    ...(user ? { user } : {}),
    sources: remoteSrcs.map((s) => s.path),
    dest: dest.path,
  };
  if (dest.kind === 'remote')
    return { direction: 'across', ...from, to: { vm: dest.vm, ...(dest.user ? { user: dest.user } : {}) } };
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
  if (p.sources.length > 1 && !isDir)
    throw new PimError(EXIT.CANTCREAT, `${d} is not a directory, and several sources go into it; make it first`);
  if (!isDir && !fs.statSync(dirname(resolve(d)), { throwIfNoEntry: false })?.isDirectory()) {
    throw new PimError(EXIT.CANTCREAT, `no directory ${dirname(resolve(d))} to copy into; make it first`);
  }
}

/** A word for a POSIX shell: single-quoted. */
export const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The remote shell command that runs `script` with `args` ($1, $2, ...). */
export const remoteSh = (script: string, args: string[]) =>
  ['sh', '-c', shq(script), 'pim-cp', ...args.map(shq)].join(' ');

/** In the guest: extract a tar stream into directory $1, or (one source) as the path $1 itself ($2: its name in the archive). */
export const UNTAR_SCRIPT =
  'd=$1; b=$2; if [ -d "$d" ]; then exec tar xf - -C "$d"; fi; ' +
  '[ -n "$b" ] || { echo "pim-cp: $d: Not a directory" >&2; exit 73; }; ' +
  'p=$(dirname "$d"); [ -d "$p" ] || { echo "pim-cp: $p: No such file or directory" >&2; exit 73; }; ' +
  't=$(mktemp -d "$p/.pim-cp.XXXXXX") || exit 73; tar xf - -C "$t" && mv -f "$t/$b" "$d"; r=$?; rm -rf "$t"; exit $r';

/**
 * In the guest: a tar stream of path $1 (66 when it is not there; 64 for a
 * directory unless $2 is r), symbolic links followed (tar -h), as scp -r
 * follows them: the stream holds files and directories.
 */
export const TAR_SCRIPT =
  's=$1; [ -e "$s" ] || [ -L "$s" ] || { echo "pim-cp: $s: No such file or directory" >&2; exit 66; }; ' +
  '[ -d "$s" ] && [ "$2" != r ] && { echo "pim-cp: $s is a directory: give -r to copy it" >&2; exit 64; }; ' +
  'cd "$(dirname "$s")" && exec tar chf - "$(basename "$s")"';

/** How a failed copy reads, from the messages it left: a pim error. */
export function copyError(p: CpPlan, stderr: string, status: number): PimError {
  const last = stderr.trim().split('\n').filter(Boolean).pop() ?? `status ${status}`;
  if (status === 64 && / is a directory: give -r/.test(last))
    return new PimError(EXIT.USAGE, `${p.vm}:${last.replace(/^pim-cp: /, '')}`);
  if (status === 66 || (p.direction === 'down' && /No such file or directory/.test(stderr)))
    return new PimError(EXIT.NOINPUT, `no such file or directory in ${p.vm}: ${last.replace(/^(scp|pim-cp): /, '')}`);
  if (/Permission denied/i.test(stderr)) return new PimError(EXIT.NOPERM, `permission denied: ${last}`);
  if (
    status === 73 ||
    /No such file or directory|Not a directory|Is a directory|No space left|Read-only file system/.test(stderr)
  )
    return new PimError(EXIT.CANTCREAT, `cannot write ${p.direction === 'up' ? `${p.vm}:` : ''}${p.dest}: ${last}`);
  return new PimError(EXIT.UNAVAILABLE, `the copy ${p.direction === 'up' ? 'to' : 'from'} ${p.vm} failed: ${last}`);
}

/** The ssh side of a tar stream failed: ssh's own failure (255) is 69, the guest's side reads as copyError says. */
function sshSideError(p: CpPlan, r: { code: number; stderr: string }): PimError {
  if (r.code === 255)
    return new PimError(
      EXIT.UNAVAILABLE,
      `the copy ${p.direction === 'up' ? 'to' : 'from'} ${p.vm} failed: ${r.stderr.trim() || 'ssh exited 255'}`,
    );
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

/**
 * On a terminal (stderr), a tar stream's progress: a live line with the
 * bytes so far and the rate (lib/cli/status.ts), then one line that stays
 * with the total, the time and the rate, as scp's meter leaves its last
 * line. A Transform counts the bytes as they pass (no 'data' listener, which
 * would start the stream before its reader is there). Off a terminal: null,
 * and the stream goes straight through.
 */
export async function tarMeter(what: string): Promise<{
  wrap: (s: import('node:stream').Readable) => import('node:stream').Readable;
  end: (ok: boolean) => void;
} | null> {
  if (!process.stderr.isTTY || process.env.TERM === 'dumb') return null;
  const { Transform } = process.getBuiltinModule('node:stream') as typeof import('node:stream');
  const { StatusLine } = await import('../cli/status.ts');
  const { humanBytes } = await import('../cli/output.ts');
  const line = new StatusLine();
  const t0 = Date.now();
  let n = 0;
  let last = 0;
  const rate = () => `${humanBytes(Math.round(n / Math.max(0.001, (Date.now() - t0) / 1000)))}/s`;
  line.show(`copying ${what}`);
  return {
    wrap: (s) => {
      const m = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          n += chunk.length;
          const now = Date.now();
          if (now - last >= 200) {
            last = now;
            line.update(`${humanBytes(n)}, ${rate()}`);
          }
          cb(null, chunk);
        },
      });
      s.on('error', () => undefined); // the source's own status says what went wrong
      return s.pipe(m);
    },
    end: (ok) => {
      const took = line.elapsed();
      line.end();
      if (ok) process.stderr.write(`pim-cp: ${what}: ${humanBytes(n)} in ${took}, ${rate()}\n`);
    },
  };
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
  const argv = [
    '-O',
    '-p',
    ...(isatty(1) ? [] : ['-q']),
    ...(c.recursive ? ['-r'] : []),
    ...c.sshOpts,
    '--',
    ...(p.direction === 'up' ? [...p.sources, target(p.dest)] : [...p.sources.map(target), p.dest]),
  ];
  const { needSshClient } = await import('./reach.ts');
  const child = spawn(await needSshClient('scp'), argv, { stdio: ['ignore', 'inherit', 'pipe'] });
  const r = await finish(child, 'scp');
  if (r.code === 0) return 'ok';
  if (/\bscp: (command )?not found/.test(r.stderr)) return 'no-scp';
  throw copyError(p, r.stderr, r.code);
}

/** Copy with a tar stream over ssh, one source at a time. */
export async function viaTar(c: CopyCtx): Promise<void> {
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const p = c.plan;
  const ssh = (cmd: string, out: 'pipe' | 'ignore') =>
    spawn('ssh', [...c.sshOpts, '--', p.vm, cmd], {
      stdio: [out === 'ignore' ? 'pipe' : 'ignore', out === 'ignore' ? 'ignore' : 'pipe', 'pipe'],
    });
  for (const s of p.sources) {
    if (p.direction === 'up') {
      const abs = resolve(s);
      const tar = spawn('tar', ['cf', '-', '-C', dirname(abs), basename(abs)], { stdio: ['ignore', 'pipe', 'pipe'] });
      const one = p.sources.length === 1;
      const remote = ssh(remoteSh(UNTAR_SCRIPT, [p.dest === '' ? '.' : p.dest, one ? basename(abs) : '']), 'ignore');
      const meter = await tarMeter(`${s} -> ${p.vm}:${p.dest}`);
      (meter ? meter.wrap(tar.stdout!) : tar.stdout!).pipe(remote.stdin!);
      const [a, b] = await Promise.all([finish(tar, 'tar'), finish(remote, 'ssh')]);
      meter?.end(a.code === 0 && b.code === 0);
      if (a.code !== 0)
        throw new PimError(EXIT.NOINPUT, `tar could not read ${s}: ${a.stderr.trim().split('\n').pop()}`);
      if (b.code !== 0) throw sshSideError(p, b);
    } else {
      const top = topName(p.vm, s);
      const remote = ssh(remoteSh(TAR_SCRIPT, [s, c.recursive ? 'r' : '']), 'pipe');
      const meter = await tarMeter(`${p.vm}:${s} -> ${p.dest}`);
      const stream = meter ? meter.wrap(remote.stdout!) : remote.stdout!;
      const got = untarChecked(stream, top, resolve(p.dest), `${p.vm}:${s}`, () => remote.kill(), c.recursive);
      const [a, b] = await Promise.all([finish(remote, 'ssh'), got]);
      meter?.end(a.code === 0 && !b.error);
      if (b.refused) throw b.error; // whatever ssh said after pim stopped it
      if (a.code !== 0) throw sshSideError(p, a);
      if (b.error) throw b.error;
    }
  }
}

/**
 * The one name a guest's tar stream of `src` may hold, and all its members
 * under it: the last part of the path (as `tar c -C dirname basename` names
 * it). A source that ends in `.` or `..`, or `/`, is refused (64): name the
 * directory.
 */
export function topName(vm: string, src: string): string {
  const { posix } = process.getBuiltinModule('node:path') as typeof import('node:path');
  const top = posix.basename(src.replace(/\/+$/, ''));
  if (!top || top === '.' || top === '..')
    throw new PimError(
      EXIT.USAGE,
      `${vm}:${src} names no file or directory by its name; name it (like ${vm}:/home/user)`,
    );
  return top;
}

/**
 * Why a member of a guest's tar stream is refused, or null: the guest is
 * the untrusted side. Only files, directories and hard links to a member
 * before them; every name (and a hard link's target) relative, without `.`,
 * `..` or empty parts, and under `top`. Symbolic links are refused: the
 * stream pim asks for (tar -h) has none, as scp -r copies what a link
 * points to; a link in the stream could only point pim's writes or a later
 * reader outside the destination. Devices and FIFOs are refused too.
 */
export function memberProblem(
  path: string,
  type: string,
  linkpath: string | undefined,
  top: string,
  recursive = true,
): string | null {
  const bad = (n: string) => {
    const parts = n.replace(/\/+$/, '').split('/');
    if (n.startsWith('/')) return 'an absolute name';
    if (parts.some((x) => x === '..')) return 'a name with ".."';
    if (parts.some((x) => x === '' || x === '.') || n.includes('\0')) return 'a name with an empty or "." part';
    if (parts[0] !== top) return `a name outside ${top}, which was asked for`;
    return null;
  };
  const shown = JSON.stringify(path);
  const why = bad(path);
  if (why) return `${shown}: ${why}`;
  if (!recursive && (type === 'Directory' || path.replace(/\/+$/, '') !== top))
    return `${shown}: a directory, or in one, and -r was not given`;
  if (type === 'SymbolicLink')
    return `${shown} is a symbolic link (to ${JSON.stringify(linkpath ?? '')}): a copy from a guest holds no links (scp -r copies what a link points to)`;
  if (type === 'Link') {
    const lw = bad(linkpath ?? '');
    return lw ? `${shown} is a hard link to ${JSON.stringify(linkpath ?? '')}, ${lw}` : null;
  }
  if (type === 'File' || type === 'OldFile' || type === 'ContiguousFile' || type === 'Directory') return null;
  return `${shown} is a ${type}: a copy holds only files and directories`;
}

/**
 * A tar stream from a guest into `dest`, checked member by member with
 * node-tar (its own checks too: no `..`, no absolute names, nothing
 * written through a symbolic link): every member must pass memberProblem,
 * or the copy stops (`abort` ends the stream's source) and is refused (65).
 * The members go into a new directory beside their place, and only a
 * complete stream is moved into it: into `dest` when it is a directory
 * (a tree merged into the one there, a link there replaced, never
 * followed), else as `dest` itself. Modes are kept, less setuid, setgid
 * and sticky; nothing is chowned. The result: the error, if any, and
 * whether a member was refused (then the source's own status is moot).
 */
export async function untarChecked(
  stream: import('node:stream').Readable,
  top: string,
  dest: string,
  what: string,
  abort: () => void,
  recursive = true,
): Promise<{ error: PimError | null; refused: boolean }> {
  const r = await untarInto(stream, top, dest, what, abort, recursive);
  return { error: r.error, refused: r.refused !== null };
}

async function untarInto(
  stream: import('node:stream').Readable,
  top: string,
  dest: string,
  what: string,
  abort: () => void,
  recursive: boolean,
): Promise<{ error: PimError | null; refused: string | null }> {
  const tar = await import('tar');
  const intoDir = fs.statSync(dest, { throwIfNoEntry: false })?.isDirectory() ?? false;
  let tmp: string;
  try {
    tmp = fs.mkdtempSync(join(intoDir ? dest : dirname(dest), '.pim-cp.'));
  } catch (e) {
    stream.resume();
    abort();
    return {
      error: new PimError(
        EXIT.CANTCREAT,
        `cannot write into ${intoDir ? dest : dirname(dest)}: ${(e as Error).message}`,
      ),
      refused: null,
    };
  }
  let refused: string | null = null;
  try {
    await new Promise<void>((res, rej) => {
      const unpack = tar.x({
        cwd: tmp,
        strict: true,
        preserveOwner: false,
        filter: (path, entry) => {
          if (refused) return false;
          const e = entry as unknown as { type: string; linkpath?: string; mode?: number };
          refused = memberProblem(path, e.type, e.linkpath, top, recursive);
          if (refused) {
            abort();
            return false;
          }
          if (typeof e.mode === 'number') e.mode &= 0o777;
          return true;
        },
      });
      unpack.on('error', (err: Error) => {
        abort(); // it reads no more: stop the source, which would block on a full pipe
        stream.resume();
        if (refused) res();
        else rej(err);
      });
      unpack.on('close', () => res());
      stream.on('error', () => undefined);
      stream.pipe(unpack as unknown as NodeJS.WritableStream);
    });
    if (refused)
      return {
        error: new PimError(EXIT.DATAERR, `the tar stream of ${what} was refused, nothing copied: ${refused}`),
        refused,
      };
    const got = join(tmp, top);
    if (!fs.lstatSync(got, { throwIfNoEntry: false }))
      return { error: new PimError(EXIT.DATAERR, `the tar stream of ${what} did not hold ${top}`), refused: null };
    placeTree(got, intoDir ? join(dest, top) : dest);
    return { error: null, refused: null };
  } catch (e) {
    if (e instanceof PimError) return { error: e, refused: null };
    const m = (e as Error).message;
    const tarCode = (e as { tarCode?: string }).tarCode;
    // node-tar's own refusals (strict: each warning is an error) are the stream's fault
    if (tarCode && tarCode !== 'TAR_BAD_ARCHIVE')
      return {
        error: new PimError(EXIT.DATAERR, `the tar stream of ${what} was refused, nothing copied: ${m}`),
        refused: m,
      };
    if (tarCode)
      return {
        error: new PimError(EXIT.DATAERR, `the tar stream of ${what} is damaged, nothing copied: ${m}`),
        refused: null,
      };
    return { error: new PimError(EXIT.CANTCREAT, `cannot write ${dest}: ${m}`), refused: null };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Move an extracted member `from` to `to`: a file (or a tree where nothing
 * is) by one rename, which replaces a file or a symbolic link at `to`
 * without following it; a tree into a directory there, merged entry by
 * entry the same way (as tar x and scp -r merge). A tree meeting a file,
 * or a file meeting a directory, is 73.
 */
function placeTree(from: string, to: string): void {
  const src = fs.lstatSync(from);
  const there = fs.lstatSync(to, { throwIfNoEntry: false });
  if (!src.isDirectory() || !there || there.isSymbolicLink()) {
    if (there?.isSymbolicLink()) fs.unlinkSync(to);
    else if (there?.isDirectory()) throw new PimError(EXIT.CANTCREAT, `cannot write ${to}: Is a directory`);
    fs.renameSync(from, to);
    return;
  }
  if (!there.isDirectory()) throw new PimError(EXIT.CANTCREAT, `cannot write ${to}: Not a directory`);
  for (const n of fs.readdirSync(from)) placeTree(join(from, n), join(to, n));
  fs.chmodSync(to, src.mode & 0o777);
  fs.utimesSync(to, src.atime, src.mtime);
}

/**
 * From one VM to another: for each source, `tar c` in the first guest (over
 * its ssh config, `from`) into `tar x` in the second (`to`), through this
 * process, which reads the first guest's stream with node-tar and passes on
 * only members that memberProblem lets through, written again by node-tar:
 * the first guest cannot make the second write outside the destination. A
 * refused member stops both sides (65). A missing source is 66, a directory
 * without -r 64, a destination that cannot be written 73, as for the host.
 */
export async function copyAcross(p: CpPlan, recursive: boolean, from: string[], to: string[]): Promise<void> {
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const tar = await import('tar');
  const dst = p.to!;
  const asDown: CpPlan = { ...p, direction: 'down' };
  const asUp: CpPlan = { ...p, direction: 'up', vm: dst.vm };
  for (const s of p.sources) {
    const top = topName(p.vm, s);
    const src = spawn('ssh', [...from, '--', p.vm, remoteSh(TAR_SCRIPT, [s, recursive ? 'r' : ''])], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const sink = spawn(
      'ssh',
      [...to, '--', dst.vm, remoteSh(UNTAR_SCRIPT, [p.dest === '' ? '.' : p.dest, p.sources.length === 1 ? top : ''])],
      { stdio: ['pipe', 'ignore', 'pipe'] },
    );
    let refused: string | null = null;
    const stop = () => {
      src.kill();
      sink.kill();
    };
    const pack = new tar.Pack({ portable: true });
    const parser = new tar.Parser({
      strict: true,
      filter: (path, entry) => {
        if (refused) return false;
        const e = entry as unknown as { type: string; linkpath?: string; mode?: number };
        refused = memberProblem(path, e.type, e.linkpath, top, recursive);
        if (refused) stop();
        else if (typeof e.mode === 'number') e.mode &= 0o777;
        return !refused;
      },
      onReadEntry: (entry) => void pack.add(entry),
    });
    let damaged: string | null = null;
    parser.on('error', (e: Error) => {
      // a damaged stream (or none: a source that failed says why) is not a refusal
      if ((e as { tarCode?: string }).tarCode === 'TAR_BAD_ARCHIVE') damaged ??= e.message;
      else refused ??= e.message;
      stop();
    });
    parser.on('end', () => void pack.end());
    pack.on('error', () => stop());
    (pack as unknown as NodeJS.ReadableStream).pipe(sink.stdin!);
    src.stdout!.on('error', () => undefined);
    const meter = await tarMeter(`${p.vm}:${s} -> ${dst.vm}:${p.dest}`);
    (meter ? meter.wrap(src.stdout!) : src.stdout!).pipe(parser as unknown as NodeJS.WritableStream);
    sink.stdin!.on('error', () => undefined); // the sink gone early: its own status says why
    const [a, b] = await Promise.all([finish(src, 'ssh'), finish(sink, 'ssh')]);
    meter?.end(!refused && !damaged && a.code === 0 && b.code === 0);
    if (refused)
      throw new PimError(EXIT.DATAERR, `the tar stream of ${p.vm}:${s} was refused, stopped on both sides: ${refused}`);
    if (a.code !== 0) throw sshSideError(asDown, a);
    if (damaged)
      throw new PimError(EXIT.DATAERR, `the tar stream of ${p.vm}:${s} is damaged, stopped on both sides: ${damaged}`);
    if (b.code !== 0) throw sshSideError(asUp, b);
  }
}

/** The copy: scp -O, or tar when the guest has no scp (remembered) or PIM_CP_VIA=tar. */
export async function copy(c: CopyCtx): Promise<void> {
  const marker = join(c.dir, 'via-tar');
  const want = process.env.PIM_CP_VIA;
  if (want && want !== 'scp' && want !== 'tar')
    throw new PimError(EXIT.USAGE, `PIM_CP_VIA must be scp or tar, not ${JSON.stringify(want)}`);
  const useTar = want === 'tar' || (want !== 'scp' && fs.existsSync(marker));
  if (!useTar && (await viaScp(c)) === 'ok') return;
  if (!useTar) {
    process.stderr.write(`pim-cp: ${c.plan.vm} has no scp: copying with tar over ssh (also from now on)\n`);
    const { writeFileAtomic } = await import('../core/fs.ts');
    writeFileAtomic(marker, 'the guest has no scp: pim-cp copies with tar\n', 0o600);
  }
  await viaTar(c);
}
