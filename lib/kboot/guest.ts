/**
 * The guest side of pim-kboot: what pim puts in the initramfs, and what it
 * reads back from the guest.
 *
 * pim appends two small archives to the initramfs and boots with
 * rdinit=/pim/init. The base (cached, the same for every boot): /pim/init
 * (lib/kboot/init.sh, which documents the protocol on the output port) and
 * /pim/bin, a static busybox from the host with its applet links, or else
 * only /pim/bin/sh -> /bin/sh (the initramfs's own shell). The boot's own:
 * /pim/env (settings) and /pim/cmd (the --exec command).
 */
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import initSh from './init.sh?raw';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';
import { pathDirs } from '../core/which.ts';
import { cpioNewc, type CpioEntry } from '../archive/cpio.ts';
import { cacheHit } from '../archive/initramfs.ts';
import type { Share } from '../qemu/share.ts';
import { runOk } from '../core/run.ts';

/** The record separator that starts every marker on the output port. */
export const RS = '\x1e';

/** pim's /init, as it is put in the guest. */
export const INIT_SCRIPT: string = initSh;

/** Quote a string for sh: single quotes, with ' as '\''. */
export const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export interface GuestSettings {
  token: string;
  /** exec: run /pim/cmd; shell: a root shell on the console; handoff: exec the initramfs's own /init */
  mode: 'exec' | 'shell' | 'handoff';
  /** output port: /dev/ttyS1 (headless) or /dev/console (--console) */
  out: string;
  fs: '9p' | 'virtiofs';
  shares: Share[];
  /** tag of the root share, if any */
  root?: string;
}

/** /pim/env: the settings as sh assignments, each value quoted. */
export function guestEnv(g: GuestSettings): string {
  return [
    `PIM_TOKEN=${shq(g.token)}`,
    `PIM_MODE=${shq(g.mode)}`,
    `PIM_OUT=${shq(g.out)}`,
    `PIM_FS=${shq(g.fs)}`,
    `PIM_SHARES=${shq(g.shares.map((s) => s.tag).join(' '))}`,
    `PIM_ROOT=${shq(g.root ?? '')}`,
    '',
  ].join('\n');
}

/** This boot's archive: /pim/env and /pim/cmd (made in memory, no child process). */
export function bootArchive(g: GuestSettings, cmd: string): Buffer {
  return cpioNewc([
    { type: 'dir', path: 'pim' },
    { type: 'file', path: 'pim/env', data: guestEnv(g), mode: 0o600 },
    { type: 'file', path: 'pim/cmd', data: cmd, mode: 0o600 },
  ]);
}

/** Parses the output port's stream: hands command output on, finds the ready, fail and exit markers. */
export class OutputScanner {
  private buf = '';
  ready = false;
  status: number | null = null;
  failure: string | null = null;
  private readonly marks: string[];
  readonly token: string;
  private readonly onOutput: (s: string) => void;
  constructor(token: string, onOutput: (s: string) => void) {
    this.token = token;
    this.onOutput = onOutput;
    this.marks = [`${RS}PIM-READY-${token}\n`, `${RS}PIM-EXIT-${token}:`, `${RS}PIM-FAIL-${token}:`];
  }
  /** Feed a chunk (latin1-decoded, so bytes pass through unchanged). */
  push(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      if (this.status !== null || this.failure !== null) {
        this.buf = '';
        return;
      }
      const i = this.buf.indexOf(RS);
      if (i < 0) {
        this.flush(this.buf.length);
        return;
      }
      this.flush(i);
      // this.buf now starts with RS
      const rest = this.buf;
      const m = this.marks.find((mk) => rest.startsWith(mk) || mk.startsWith(rest));
      if (!m) {
        this.flush(1);
        continue;
      }
      if (rest.length < m.length) return; // wait for more
      const nl = rest.indexOf('\n', m.length);
      if (m === this.marks[0]) {
        this.ready = true;
        this.buf = rest.slice(m.length);
        continue;
      }
      if (nl < 0) return;
      const val = rest.slice(m.length, nl);
      if (m === this.marks[1]) this.status = Number(val);
      else this.failure = val;
    }
  }
  private flush(n: number): void {
    if (n <= 0) return;
    this.onOutput(this.buf.slice(0, n));
    this.buf = this.buf.slice(n);
  }
}

/** A kernel panic in the serial log: the panic line and the lines before it, or null. */
export function findPanic(log: string, context = 15): string[] | null {
  const lines = log.split(/\r?\n/);
  const i = lines.findIndex((l) => /Kernel panic - not syncing/.test(l));
  if (i < 0) return null;
  return lines.slice(Math.max(0, i - context), i + 6).filter((l) => l.trim());
}

/** Is the file at `p` a 64-bit ELF executable without an interpreter (PT_INTERP), i.e. static? Reads its head only. */
function isStaticElf(p: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    if (!fs.fstatSync(fd).isFile()) return false;
    const b = Buffer.alloc(4096);
    const n = fs.readSync(fd, b, 0, b.length, 0);
    if (n < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
    const phoff = Number(b.readBigUInt64LE(0x20));
    const phentsize = b.readUInt16LE(0x36);
    const phnum = b.readUInt16LE(0x38);
    const len = phnum * phentsize;
    if (phentsize < 56 || len > 1 << 20) return false;
    let ph = b.subarray(phoff, phoff + len);
    if (phoff + len > n) {
      ph = Buffer.alloc(len);
      if (fs.readSync(fd, ph, 0, len, phoff) < len) return false;
    }
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false; // PT_INTERP
    return true;
  } catch {
    return false;
  } finally {
    fs.closeSync(fd);
  }
}

/** A static busybox on the host (PIM_BUSYBOX, then each busybox on PATH, then /bin/busybox). null when there is none. */
export function staticBusybox(): string | null {
  const cands = process.env.PIM_BUSYBOX
    ? [process.env.PIM_BUSYBOX]
    : [...pathDirs().map((d) => join(d, 'busybox')), '/bin/busybox'];
  return cands.find(isStaticElf) ?? null;
}

/**
 * What older pims left in the cache, tidied once a new base is written (the
 * first boot after an upgrade): their base trees (base-<key>/, 0755) removed,
 * files readable by others made 0600.
 */
function tidyOldCache(cache: string): void {
  for (const e of fs.readdirSync(cache, { withFileTypes: true })) {
    const p = join(cache, e.name);
    if (e.isDirectory() && /^base-[0-9a-f]+(\.\d+\.tmp)?$/.test(e.name)) fs.rmSync(p, { recursive: true, force: true });
    else if (e.isFile()) cacheHit(p);
  }
}

/** Bumped when the base archive's layout changes, so old cache entries are not reused. */
const BASE_VERSION = 2;

/**
 * The archive that does not change between boots: /pim/init and /pim/bin.
 * Written once to CACHE/base-<key>.cpio (0600, atomically), keyed by the init
 * script and the busybox's path, size and mtime: a hit costs one stat.
 */
export async function pimBaseArchive(cache: string, busybox: string | null): Promise<string> {
  const h = createHash('sha256').update(`pim-base ${BASE_VERSION}\0${INIT_SCRIPT}\0`);
  const st = busybox ? fs.statSync(busybox) : null;
  h.update(busybox ? `${busybox}\0${st!.size}\0${st!.mtimeMs}` : 'no busybox');
  const path = join(ensurePrivateDir(cache), `base-${h.digest('hex').slice(0, 16)}.cpio`);
  if (cacheHit(path)) return path;
  tidyOldCache(cache);
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'pim' },
    { type: 'dir', path: 'pim/bin' },
    { type: 'file', path: 'pim/init', data: INIT_SCRIPT, mode: 0o755 },
  ];
  if (busybox) {
    const list = await runOk(busybox, ['--list'], {
      what: `${busybox} --list (the host's static busybox; PIM_BUSYBOX names another)`,
      timeoutMs: 10_000,
    });
    entries.push({ type: 'file', path: 'pim/bin/busybox', data: fs.readFileSync(busybox), mode: 0o755 });
    for (const a of list.stdout.split('\n')) {
      if (/^[\w.[-]+$/.test(a) && a !== 'busybox')
        entries.push({ type: 'symlink', path: `pim/bin/${a}`, target: 'busybox' });
    }
    if (!entries.some((e) => e.path === 'pim/bin/sh'))
      entries.push({ type: 'symlink', path: 'pim/bin/sh', target: 'busybox' });
  } else {
    // init.sh starts with #!/pim/bin/sh: the initramfs's own shell
    entries.push({ type: 'symlink', path: 'pim/bin/sh', target: '/bin/sh' });
  }
  writeFileAtomic(path, cpioNewc(entries));
  return path;
}
