/**
 * Direct kernel boot: checking a kernel, extracting the uncompressed PVH
 * vmlinux from a bzImage (much faster to boot under TCG), pim's own /init
 * for the guest, and the protocol on the dedicated output port.
 *
 * The guest side: pim appends a small cpio with /pim/init (busybox sh),
 * /pim/env (settings) and /pim/cmd (the --exec command) to the initramfs and
 * boots with rdinit=/pim/init. The init writes, on the second serial port
 * (ttyS1, set raw), nothing but:
 *   RS "PIM-READY-<token>" LF                  once userspace is up
 *   ...the command's output (stdout and stderr)...
 *   RS "PIM-EXIT-<token>:<status>" LF          then powers off
 * Kernel messages go to ttyS0 (the VM's log), so they never mix in. The
 * token is random per boot, so output that happens to contain the words
 * cannot end the stream.
 */
import * as fs from 'node:fs';
import { readHead, writeFileAtomic } from '../core/fs.ts';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';

export const RS = '\x1e';

/** Throws 66 for a missing kernel, 65 for a file that is no bzImage (nor an ELF vmlinux). */
export function checkKernel(path: string): 'bzimage' | 'elf' {
  const b = readHead(path, 0x210, 'kernel');
  if (b.length >= 0x206 && b.toString('latin1', 0x202, 0x206) === 'HdrS') return 'bzimage';
  if (b.length >= 4 && b.readUInt32BE(0) === 0x7f454c46) return 'elf';
  throw new PimError(EXIT.DATAERR, `${path} is not a Linux kernel (no bzImage "HdrS" header at 0x202); pass arch/x86/boot/bzImage or /boot/vmlinuz-*`);
}

/** The host's running kernel, where it can be read; else a usage error that says what to pass. */
export function hostKernel(): string {
  const { release } = process.getBuiltinModule('node:os') as typeof import('node:os');
  const p = `/boot/vmlinuz-${release()}`;
  try {
    fs.accessSync(p, fs.constants.R_OK);
    return p;
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'is not readable by you (Ubuntu makes it root-only: sudo chmod 0644 it, or copy it)';
    throw new PimError(EXIT.USAGE, `no --kernel given and the running kernel ${p} ${why}; pass --kernel PATH (a bzImage, e.g. arch/x86/boot/bzImage)`);
  }
}

/** Where the compressed payload of a bzImage sits (boot protocol >= 2.08 fields). */
export function bzPayload(head: Buffer): { offset: number; length: number } | null {
  if (head.length < 0x250 || head.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  if (head.readUInt16LE(0x206) < 0x208) return null;
  const setupSects = head[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + head.readUInt32LE(0x248);
  const length = head.readUInt32LE(0x24c);
  return length > 0 ? { offset, length } : null;
}

/** Does this ELF have the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) that QEMU needs to boot it directly? */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== 4) continue; // PT_NOTE
    const off = Number(elf.readBigUInt64LE(ph + 8));
    const size = Number(elf.readBigUInt64LE(ph + 32));
    let p = off;
    while (p + 12 <= off + size && p + 12 <= elf.length) {
      const namesz = elf.readUInt32LE(p);
      const descsz = elf.readUInt32LE(p + 4);
      const type = elf.readUInt32LE(p + 8);
      const name = elf.toString('latin1', p + 12, p + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === 18) return true;
      p += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

async function decompress(payload: Buffer): Promise<Buffer | null> {
  const head = payload.subarray(0, 6);
  if (head.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return run('xz', ['-dc', '--single-stream'], payload);
  if (payload.readUInt32LE(0) === 0xfd2fb528) return run('zstd', ['-dcq'], payload);
  if (payload[0] === 0x1f && payload[1] === 0x8b) {
    const zlib = await import('node:zlib');
    try {
      return zlib.gunzipSync(payload.subarray(0, payload.length - 4));
    } catch {
      return null;
    }
  }
  return null; // lz4, lzma, lzo, bzip2: boot the bzImage itself
}

async function run(cmd: string, args: string[], input: Buffer): Promise<Buffer | null> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => chunks.push(d));
    child.stdin!.on('error', () => {});
    child.once('error', () => resolve(null));
    child.once('close', (code) => resolve(code === 0 || chunks.length ? Buffer.concat(chunks) : null));
    child.stdin!.end(input);
  });
}

/**
 * The uncompressed vmlinux inside a bzImage, when it can boot by PVH:
 * cached in CACHE by the bzImage's content. null when the payload's
 * compression is not handled here or the kernel has no PVH entry.
 */
export async function pvhKernel(bzImage: string, cache: string): Promise<string | null> {
  const data = fs.readFileSync(bzImage);
  const key = createHash('sha256').update(data).digest('hex').slice(0, 32);
  const out = join(cache, `vmlinux-${key}`);
  const none = `${out}.none`;
  if (fs.existsSync(out)) return out;
  if (fs.existsSync(none)) return null;
  fs.mkdirSync(cache, { recursive: true });
  const pl = bzPayload(data);
  const elf = pl ? await decompress(data.subarray(pl.offset, pl.offset + pl.length)) : null;
  if (!elf || !hasPvhNote(elf)) {
    fs.writeFileSync(none, '');
    return null;
  }
  writeFileAtomic(out, elf);
  return out;
}

/** A --share argument: DIR[:TAG]. The tag defaults to the directory's base name, cleaned. */
export interface Share {
  dir: string;
  tag: string;
}

export function parseShare(spec: string, used: Set<string>): Share {
  const { resolve, basename } = process.getBuiltinModule('node:path') as typeof import('node:path');
  let dir = spec;
  let tag: string | undefined;
  const colon = spec.lastIndexOf(':');
  if (colon > 0 && /^[A-Za-z0-9_.-]+$/.test(spec.slice(colon + 1))) {
    dir = spec.slice(0, colon);
    tag = spec.slice(colon + 1);
  }
  dir = resolve(dir);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new PimError(EXIT.NOINPUT, `share ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new PimError(EXIT.NOINPUT, `share ${dir} is not a directory`);
  if (!tag) {
    const base = basename(dir).replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 31) || 'root';
    tag = base;
    for (let i = 2; used.has(tag); i++) tag = `${base}${i}`;
  }
  if (tag.length > 31) throw new PimError(EXIT.USAGE, `share tag ${tag} is longer than 31 characters`);
  if (used.has(tag)) throw new PimError(EXIT.USAGE, `share tag ${tag} is used twice; give each --share its own DIR:TAG`);
  used.add(tag);
  return { dir, tag };
}

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

/**
 * pim's /init (busybox sh). It only needs a shell; /pim/bin holds a static
 * busybox when the host has one, so it also works in an initramfs without
 * userland. Kernel modules for virtio/9p/virtiofs are loaded with modprobe
 * when the initramfs has them in /lib/modules (built-in drivers need none).
 */
export function initScript(shell: string): string {
  return `#!${shell}
export PATH=/pim/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=\${TERM:-vt100}
umask 022
mkdir -p /dev /proc /sys /tmp /run /mnt /root
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
. /pim/env
out=$PIM_OUT
[ "$out" = /dev/ttyS1 ] && stty -F /dev/ttyS1 raw -echo 2>/dev/null
rs=$(printf '\\036')
fail() { echo "pim-init: $*" >/dev/console; printf '%sPIM-FAIL-%s:%s\\n' "$rs" "$PIM_TOKEN" "$*" >"$out"; poweroff -f; }
if [ -n "$PIM_SHARES$PIM_ROOT" ]; then
    if [ "$PIM_FS" = virtiofs ]; then mods="virtio_pci virtiofs"; else mods="virtio_pci 9pnet_virtio 9p"; fi
    for m in $mods; do modprobe "$m" 2>/dev/null; done
fi
mnt() { # TAG DIR
    mkdir -p "$2"
    if [ "$PIM_FS" = virtiofs ]; then mount -t virtiofs "$1" "$2"
    else mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none "$1" "$2"; fi
}
chr=
if [ -n "$PIM_ROOT" ]; then
    mnt "$PIM_ROOT" /newroot || fail "cannot mount root share $PIM_ROOT (no 9p/virtiofs in this kernel or initramfs?)"
    for d in dev proc sys; do mkdir -p /newroot/$d; mount -o bind /$d /newroot/$d 2>/dev/null; done
    mount -t tmpfs tmpfs /newroot/tmp 2>/dev/null
    chr=/newroot
fi
for t in $PIM_SHARES; do
    mnt "$t" "$chr/mnt/$t" || fail "cannot mount share $t (no 9p/virtiofs in this kernel or initramfs?)"
done
mount -t tmpfs tmpfs /tmp 2>/dev/null
# on the console (--console) the markers are erased from the screen as soon as they are written
if [ "$out" = /dev/ttyS1 ]; then end='\\n'; else end='\\r\\033[2K'; fi
printf "%sPIM-READY-%s$end" "$rs" "$PIM_TOKEN" >"$out"
case $PIM_MODE in
exec)
    if [ -n "$chr" ]; then chroot "$chr" /bin/sh -c "cd /; $(cat /pim/cmd)" >"$out" 2>&1 </dev/null
    else (cd /; sh -c "$(cat /pim/cmd)") >"$out" 2>&1 </dev/null; fi
    st=$?
    printf "%sPIM-EXIT-%s:%d$end" "$rs" "$PIM_TOKEN" "$st" >"$out"
    sync
    poweroff -f ;;
handoff)
    # the initramfs's (or root share's) own init, when it has one; else the shell below
    if [ -n "$chr" ] && [ -x "$chr/sbin/init" ]; then
        for d in dev proc sys; do umount /newroot/$d 2>/dev/null; done
        umount /proc /sys 2>/dev/null
        exec switch_root /newroot /sbin/init
    elif [ -z "$chr" ] && [ -x /init ]; then
        umount /proc /sys 2>/dev/null
        exec /init "$@"
    fi ;;
esac
# shell: a root shell on the console, again and again. The ACPI power button
# (pim-stop) powers off when the kernel has the button driver (built in or a module).
hostname pim 2>/dev/null
if { modprobe button; modprobe evdev; } 2>/dev/null && [ -d /sys/module/button ]; then
    # busybox sh answers "command -v sh" with a bare "sh": name the shell by path
    acpish=/bin/sh; [ -x /pim/bin/sh ] && acpish=/pim/bin/sh
    mkdir -p /etc/acpi/PWRF && printf '#!%s\\npoweroff -f\\n' "$acpish" >/etc/acpi/PWRF/00000080 && chmod +x /etc/acpi/PWRF/00000080
    acpid -l /tmp/acpid.log 2>/dev/null
fi
while :; do
    if [ -n "$chr" ]; then setsid -c chroot "$chr" /bin/sh -l </dev/console >/dev/console 2>&1
    else setsid -c sh -l </dev/console >/dev/console 2>&1; fi
done
`;
}

/** Parses the output port's stream: hands command output on, finds the ready, fail and exit markers. */
export class OutputScanner {
  private buf = '';
  ready = false;
  status: number | null = null;
  failure: string | null = null;
  private readonly marks: string[];
  constructor(
    readonly token: string,
    private readonly onOutput: (s: string) => void,
  ) {
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

/** The host TSC in kHz (microvm under TCG needs tsc_early_khz to calibrate), from /proc/cpuinfo. */
export function hostTscKhz(): number | null {
  try {
    const m = /cpu MHz\s*:\s*([\d.]+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? Math.round(Number(m[1]) * 1000) : null;
  } catch {
    return null;
  }
}

/** A static busybox on the host (PIM_BUSYBOX, then PATH): ELF without an interpreter. null when there is none. */
export function staticBusybox(): string | null {
  const cands = process.env.PIM_BUSYBOX ? [process.env.PIM_BUSYBOX] : [...(process.env.PATH ?? '').split(':').filter(Boolean).map((d) => join(d, 'busybox')), '/bin/busybox'];
  for (const p of cands) {
    try {
      const b = fs.readFileSync(p);
      if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) continue;
      const phoff = Number(b.readBigUInt64LE(0x20));
      const phentsize = b.readUInt16LE(0x36);
      let interp = false;
      for (let i = 0; i < b.readUInt16LE(0x38); i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) interp = true;
      if (!interp) return p;
    } catch {
      /* next */
    }
  }
  return null;
}

/**
 * The part of pim's cpio that does not change between boots: /pim/init and,
 * when the host has a static busybox, /pim/bin/busybox with its applet links.
 * Built once as a tree in CACHE and packed through the initramfs cache.
 */
export async function pimBaseArchive(cache: string, busybox: string | null): Promise<string> {
  const { cachedPack } = await import('../archive/initramfs.ts');
  const script = initScript(busybox ? '/pim/bin/sh' : '/bin/sh');
  const h = createHash('sha256').update(script);
  let st: fs.Stats | null = null;
  if (busybox) {
    st = fs.statSync(busybox);
    h.update(`${busybox}\0${st.size}\0${st.mtimeMs}`);
  }
  const dir = join(cache, `base-${h.digest('hex').slice(0, 16)}`);
  if (!fs.existsSync(join(dir, 'pim', 'init'))) {
    const tmp = `${dir}.${process.pid}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(join(tmp, 'pim', 'bin'), { recursive: true });
    if (busybox) {
      fs.copyFileSync(busybox, join(tmp, 'pim', 'bin', 'busybox'));
      fs.chmodSync(join(tmp, 'pim', 'bin', 'busybox'), 0o755);
      const { execFileSync } = await import('node:child_process');
      const applets = execFileSync(busybox, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => /^[\w.[-]+$/.test(a) && a !== 'busybox');
      for (const a of applets) fs.symlinkSync('busybox', join(tmp, 'pim', 'bin', a));
    }
    fs.writeFileSync(join(tmp, 'pim', 'init'), script, { mode: 0o755 });
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
  }
  return (await cachedPack(dir, 'none')).path;
}
