/**
 * The kernel pim-kboot boots: what was given (a bzImage, or an ELF vmlinux
 * QEMU can boot by PVH), the host's own, and the uncompressed PVH vmlinux
 * inside a bzImage, which boots much faster under TCG because the guest does
 * not decompress itself.
 *
 * The vmlinux is extracted once and cached in the kboot cache by the
 * bzImage's content (vmlinux-<sha256>, 0600). Only a whole kernel is cached:
 * the decompressor must exit 0, and its output must be an x86-64 ELF whose
 * program headers and segments lie within it and which has the PVH entry
 * note; the file is written atomically. A cache hit is checked the same way
 * (a few small reads), so a damaged entry is replaced, never booted.
 * `vmlinux-<sha256>.none` remembers a bzImage that has no PVH vmlinux
 * (compression not handled here, no PVH note): it is booted as it is.
 */
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';
import { log } from '../core/log.ts';
import { checkAborted } from '../core/signals.ts';
import { cacheHit } from '../archive/initramfs.ts';
import { inputHead } from './input.ts';
import { run } from '../core/run.ts';

export type KernelKind = 'bzimage' | 'elf';

/** Bytes to check, from memory or from a file (read piece by piece). */
export interface Bytes {
  size: number;
  read(offset: number, length: number): Buffer;
}

export const bufferBytes = (b: Buffer): Bytes => ({ size: b.length, read: (o, l) => b.subarray(o, o + l) });

function withFileBytes<T>(path: string, f: (b: Bytes) => T): T {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const size = fs.fstatSync(fd).size;
    return f({
      size,
      read(o, l) {
        const b = Buffer.alloc(Math.max(0, Math.min(l, size - o)));
        return b.subarray(0, fs.readSync(fd, b, 0, b.length, o));
      },
    });
  } finally {
    fs.closeSync(fd);
  }
}

const PT_LOAD = 1;
const PT_NOTE = 4;
const EM_X86_64 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** Does this run of ELF notes hold the PVH entry (name "Xen", type 18)? */
function notesHavePvh(notes: Buffer): boolean {
  let p = 0;
  while (p + 12 <= notes.length) {
    const namesz = notes.readUInt32LE(p);
    const descsz = notes.readUInt32LE(p + 4);
    const type = notes.readUInt32LE(p + 8);
    const name = notes.toString('latin1', p + 12, Math.min(notes.length, p + 12 + Math.max(0, namesz - 1)));
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
    p += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
  }
  return false;
}

/**
 * Why these bytes are no kernel QEMU boots by PVH, or null when they are one:
 * a 64-bit x86 ELF, its program headers and PT_LOAD/PT_NOTE segments within
 * it, with the PVH note. `whole` is false when the bytes look cut short or are
 * no ELF at all (never to be remembered), true for a whole file that is simply
 * not such a kernel.
 */
export function elfProblem(b: Bytes): { why: string; whole: boolean } | null {
  if (b.size < 64) return { why: 'it is shorter than an ELF header', whole: false };
  const h = b.read(0, 64);
  if (h.readUInt32BE(0) !== 0x7f454c46) return { why: 'it has no ELF magic', whole: false };
  if (h[4] !== 2 || h[5] !== 1 || h.readUInt16LE(0x12) !== EM_X86_64)
    return { why: 'it is not a 64-bit x86 ELF', whole: true };
  const phoff = Number(h.readBigUInt64LE(0x20));
  const phentsize = h.readUInt16LE(0x36);
  const phnum = h.readUInt16LE(0x38);
  if (phentsize < 56 || phnum === 0) return { why: 'it has no program headers', whole: true };
  if (phoff + phnum * phentsize > b.size)
    return { why: `its program headers end past its ${b.size} bytes: it is cut short`, whole: false };
  const ph = b.read(phoff, phnum * phentsize);
  let pvh = false;
  for (let i = 0; i < phnum; i++) {
    const type = ph.readUInt32LE(i * phentsize);
    const off = Number(ph.readBigUInt64LE(i * phentsize + 8));
    const filesz = Number(ph.readBigUInt64LE(i * phentsize + 32));
    if ((type === PT_LOAD || type === PT_NOTE) && off + filesz > b.size) {
      return {
        why: `its segment ${i} ends at byte ${off + filesz}, past its ${b.size} bytes: it is cut short`,
        whole: false,
      };
    }
    if (type === PT_NOTE && !pvh) pvh = notesHavePvh(b.read(off, Math.min(filesz, 1 << 20)));
  }
  if (!pvh)
    return {
      why: 'it has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY: a kernel built without CONFIG_PVH, or no kernel at all)',
      whole: true,
    };
  return null;
}

/** Does this ELF have the PVH entry note QEMU needs to boot it directly (and is it whole)? */
export const hasPvhNote = (elf: Buffer): boolean => elfProblem(bufferBytes(elf)) === null;

/** Where the compressed payload of a bzImage sits (boot protocol >= 2.08 fields). */
export function bzPayload(head: Buffer): { offset: number; length: number } | null {
  if (head.length < 0x250 || head.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  if (head.readUInt16LE(0x206) < 0x208) return null;
  const setupSects = head[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + head.readUInt32LE(0x248);
  const length = head.readUInt32LE(0x24c);
  return length > 0 ? { offset, length } : null;
}

/**
 * What the kernel file is. Throws 66 for a missing one (or a directory, a
 * device: lib/kboot/input.ts), 65 for one that is no bzImage, a bzImage cut
 * short, or an ELF QEMU cannot boot (no PVH note: `--kernel /bin/true`).
 * `shown` names it in messages (a pipe's copy is shown as the pipe).
 */
export function checkKernel(path: string, shown = path): KernelKind {
  const b = inputHead(path, 0x250, 'kernel', shown);
  if (b.length >= 0x206 && b.toString('latin1', 0x202, 0x206) === 'HdrS') {
    const pl = bzPayload(b);
    const size = fs.statSync(path).size;
    if (pl && pl.offset + pl.length > size) {
      throw new PimError(
        EXIT.DATAERR,
        `kernel ${shown} is cut short: its header puts the payload's end at byte ${pl.offset + pl.length}, the file has ${size}; copy or build it again`,
      );
    }
    return 'bzimage';
  }
  if (b.length >= 4 && b.readUInt32BE(0) === 0x7f454c46) {
    const p = withFileBytes(path, elfProblem);
    if (p)
      throw new PimError(
        EXIT.DATAERR,
        `${shown} is an ELF file but no kernel QEMU can boot: ${p.why}; pass a bzImage (arch/x86/boot/bzImage, /boot/vmlinuz-*) or a vmlinux built with CONFIG_PVH=y`,
      );
    return 'elf';
  }
  throw new PimError(
    EXIT.DATAERR,
    `${shown} is not a Linux kernel (no bzImage "HdrS" header at 0x202, no ELF header); pass arch/x86/boot/bzImage or /boot/vmlinuz-*`,
  );
}

/** The host's running kernel, where it can be read; else a usage error that says what to pass. */
export function hostKernel(): string {
  const { release } = process.getBuiltinModule('node:os') as typeof import('node:os');
  const p = `/boot/vmlinuz-${release()}`;
  try {
    fs.accessSync(p, fs.constants.R_OK);
    return p;
  } catch (e) {
    // missing input (66) or a file you cannot read (77), as for --kernel PATH
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
    const why = missing
      ? 'does not exist'
      : 'is not readable by you (Ubuntu makes it root-only: sudo chmod 0644 it, or copy it)';
    throw new PimError(
      missing ? EXIT.NOINPUT : EXIT.NOPERM,
      `no --kernel given and the running kernel ${p} ${why}; pass --kernel PATH (a bzImage, e.g. arch/x86/boot/bzImage)`,
    );
  }
}

type Decompressed = { kind: 'elf'; elf: Buffer } | { kind: 'failed'; why: string } | { kind: 'unsupported' };

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/**
 * Run a decompressor (lib/core/run.ts) on the payload: its output only when it
 * exits 0. (A failure after much output is slow to report, ~15 s for 65 MB:
 * execa builds an error message from the whole output even with reject off.)
 */
async function decompressWith(
  cmd: string,
  args: string[],
  pkg: string,
  payload: Buffer,
  signal?: AbortSignal,
): Promise<Decompressed> {
  let r: Awaited<ReturnType<typeof run>>;
  try {
    r = await run(cmd, args, { input: payload, binary: true, signal, timeoutMs: 120_000 });
  } catch (e) {
    if (e instanceof PimError) return { kind: 'failed', why: `${cmd} is not installed (apt-get install ${pkg})` };
    throw e;
  }
  if (r.code !== 0) {
    const last = r.stderr.trim().split('\n').pop();
    return {
      kind: 'failed',
      why: `${cmd} exited with status ${r.code}${r.timedOut ? ' (timed out)' : ''}${last ? `: ${last}` : ''}`,
    };
  }
  return { kind: 'elf', elf: Buffer.from(r.stdoutBytes.buffer, r.stdoutBytes.byteOffset, r.stdoutBytes.byteLength) };
}

async function decompress(payload: Buffer, signal?: AbortSignal): Promise<Decompressed> {
  if (payload.length >= 6 && payload.subarray(0, 6).equals(XZ_MAGIC))
    return decompressWith('xz', ['-dc', '--single-stream'], 'xz-utils', payload, signal);
  if (payload.length >= 4 && payload.readUInt32LE(0) === 0xfd2fb528)
    return decompressWith('zstd', ['-dcq'], 'zstd', payload, signal);
  if (payload[0] === 0x1f && payload[1] === 0x8b) {
    const { gunzipSync } = await import('node:zlib');
    // the payload is one gzip member; some kernels append the size (4 bytes) after it
    for (const p of [payload, payload.subarray(0, payload.length - 4)]) {
      try {
        return { kind: 'elf', elf: gunzipSync(p) };
      } catch {
        /* the other one */
      }
    }
    return { kind: 'failed', why: 'gzip: the payload does not decompress' };
  }
  return { kind: 'unsupported' }; // lz4, lzma, lzo, bzip2: boot the bzImage itself
}

/** A cached vmlinux that still checks out; a damaged one is removed. */
function cachedKernel(path: string): boolean {
  if (!cacheHit(path)) return false;
  let p: ReturnType<typeof elfProblem>;
  try {
    p = withFileBytes(path, elfProblem);
  } catch (e) {
    p = { why: (e as Error).message, whole: false };
  }
  if (!p) return true;
  log.debug(`cached ${path} is damaged (${p.why}): extracting again`);
  fs.rmSync(path, { force: true });
  return false;
}

/** Remember in the cache (best effort: a cache that cannot be written only costs time). */
function remember(path: string, content: Buffer | string): boolean {
  try {
    writeFileAtomic(path, content);
    return true;
  } catch (e) {
    log.warn(`${(e as Error).message}: not cached`);
    return false;
  }
}

/**
 * The uncompressed vmlinux inside a bzImage, when it can boot by PVH: from
 * the cache, or extracted and cached. null when the bzImage is to be booted
 * as it is (compression not handled here, no PVH entry, or the extraction
 * failed: then nothing is cached and a warning says why).
 */
export async function pvhKernel(
  bzImage: string,
  cache: string,
  opts: { signal?: AbortSignal; shown?: string } = {},
): Promise<string | null> {
  const shown = opts.shown ?? bzImage;
  const data = fs.readFileSync(bzImage);
  const key = createHash('sha256').update(data).digest('hex').slice(0, 32);
  const out = join(cache, `vmlinux-${key}`);
  const none = `${out}.none`;
  if (cachedKernel(out)) return out;
  if (cacheHit(none)) return null;
  ensurePrivateDir(cache);
  const pl = bzPayload(data);
  if (!pl) {
    remember(none, '');
    return null;
  }
  if (pl.offset + pl.length > data.length)
    throw new PimError(
      EXIT.DATAERR,
      `kernel ${shown} is cut short: its payload ends past the end of the file; copy or build it again`,
    );
  const got = await decompress(data.subarray(pl.offset, pl.offset + pl.length), opts.signal);
  checkAborted(opts.signal);
  if (got.kind === 'unsupported') {
    log.debug(`${shown}: payload compression not handled here; booting the bzImage itself`);
    remember(none, '');
    return null;
  }
  if (got.kind === 'failed') {
    log.warn(`cannot extract the vmlinux from ${shown} (${got.why}); booting the bzImage itself, nothing cached`);
    return null;
  }
  const p = elfProblem(bufferBytes(got.elf));
  if (p?.whole) {
    log.debug(`${shown}: the vmlinux inside cannot boot by PVH (${p.why}); booting the bzImage itself`);
    remember(none, '');
    return null;
  }
  if (p) {
    log.warn(`the vmlinux extracted from ${shown} is damaged (${p.why}); booting the bzImage itself, nothing cached`);
    return null;
  }
  return remember(out, got.elf) ? out : null;
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
