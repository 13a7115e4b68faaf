/**
 * The files a user names for pim-kboot (--kernel, --initrd), opened the way
 * input should be: never blocking, never with a stack trace.
 *
 * Each is opened with O_NONBLOCK and fstat'd. A regular file is used as it
 * is. A directory or a device is refused (66), saying what to pass. A pipe
 * (`--initrd <(find . | cpio -o -H newc)`, `--kernel <(zcat vmlinuz.gz)`) is
 * read once into a private file in the cache, because pim reads a kernel
 * more than once (its header, its payload) and QEMU wants a path; a pipe
 * that holds nothing and has no writer (a FIFO nobody writes to) is refused
 * at once (66), and one whose writer goes quiet for longer than the bound is
 * given up on (75).
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { createExclusive, ensurePrivateDir } from '../core/fs.ts';
import { initrdKind } from '../archive/initramfs.ts';

export type InputWhat = 'kernel' | 'initrd';

const HINT: Record<InputWhat, string> = {
  kernel: 'pass the kernel file itself (a bzImage such as arch/x86/boot/bzImage, or /boot/vmlinuz-*)',
  initrd: 'pass an archive file (cpio, compressed or not), or pack a directory with --initramfs-from DIR',
};

/** Open `path` for reading without blocking: a regular file or a pipe; anything else is exit 66 (77 when not readable). */
export function openInput(path: string, what: InputWhat): { fd: number; kind: 'file' | 'pipe' } {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM')
      throw new PimError(
        EXIT.NOPERM,
        `cannot read ${what} ${path}: permission denied; make it readable by you or copy it`,
      );
    throw new PimError(
      EXIT.NOINPUT,
      `cannot read ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : code}; ${HINT[what]}`,
    );
  }
  const st = fs.fstatSync(fd);
  if (st.isFile()) return { fd, kind: 'file' };
  if (st.isFIFO()) return { fd, kind: 'pipe' };
  fs.closeSync(fd);
  const is = st.isDirectory()
    ? 'a directory'
    : st.isCharacterDevice() || st.isBlockDevice()
      ? 'a device'
      : st.isSocket()
        ? 'a socket'
        : 'not a regular file';
  throw new PimError(EXIT.NOINPUT, `${what} ${path} is ${is}; ${HINT[what]}`);
}

/** The first `n` bytes of the regular file `path` (fewer when it is shorter); errors as openInput's, and 66 for a pipe. */
export function inputHead(path: string, n: number, what: InputWhat, shown = path): Buffer {
  const { fd, kind } = openInput(path, what);
  try {
    if (kind !== 'file') throw new PimError(EXIT.NOINPUT, `${what} ${shown} is a pipe here; ${HINT[what]}`);
    const b = Buffer.alloc(n);
    return b.subarray(0, fs.readSync(fd, b, 0, n, 0));
  } finally {
    fs.closeSync(fd);
  }
}

/** Throws 66 for a missing initrd (or a directory), 65 for one that is no archive the kernel reads. Returns its kind. */
export function checkInitrd(path: string, shown = path): string {
  const head = inputHead(path, 8, 'initrd', shown);
  const kind = head.length >= 6 ? initrdKind(head) : null;
  if (!kind)
    throw new PimError(
      EXIT.DATAERR,
      `${shown} is not an initramfs (no cpio header and no known compression); pass a cpio archive, or a directory with --initramfs-from`,
    );
  return kind;
}

export interface InputOpts {
  /** where a pipe's content is kept (a private dir: the kboot cache) */
  cache: string;
  /** give up on a pipe whose writer sends nothing for this long (exit 75) */
  idleMs: number;
  /** refuse a pipe that sends more than this (exit 65) */
  maxBytes?: number;
  signal?: AbortSignal;
}

/** An input as a regular file: `path` itself, or (`temp` set) a private copy of what came through a pipe, for the caller to remove. */
export interface ResolvedInput {
  path: string;
  /** what the user named (for messages) */
  shown: string;
  temp: string | null;
}

/** `path` as a regular file pim and QEMU can read (see the top of this file). */
export async function resolveInput(path: string, what: InputWhat, o: InputOpts): Promise<ResolvedInput> {
  const { fd, kind } = openInput(path, what);
  if (kind === 'file') {
    fs.closeSync(fd);
    return { path, shown: path, temp: null };
  }
  const { randomBytes } = await import('node:crypto');
  const temp = join(ensurePrivateDir(o.cache), `pipe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await copyPipe(fd, temp, path, what, o);
  } catch (e) {
    fs.rmSync(temp, { force: true });
    throw e;
  }
  return { path: temp, shown: path, temp };
}

/** Copy what comes through the pipe `fd` (non-blocking, ours to close) into a new 0600 file `dest`. */
async function copyPipe(fd: number, dest: string, path: string, what: InputWhat, o: InputOpts): Promise<void> {
  const first = firstRead(fd, path, what);
  // from here the socket owns fd: destroying it closes it
  const net = await import('node:net');
  const sock = new net.Socket({ fd, readable: true, writable: false });
  sock.pause();
  let out: number;
  try {
    out = createExclusive(dest, 0o600);
  } catch (e) {
    sock.destroy();
    throw e;
  }
  const max = o.maxBytes ?? 2 ** 31;
  let total = 0;
  const write = (b: Buffer) => {
    total += b.length;
    if (total > max)
      throw new PimError(
        EXIT.DATAERR,
        `more than ${max} bytes came through ${what} pipe ${path}; save it to a file and pass that`,
      );
    let off = 0;
    while (off < b.length) off += fs.writeSync(out, b, off);
  };
  try {
    write(first);
    await drain(sock, write, o, `${what} pipe ${path}`);
  } finally {
    sock.destroy();
    fs.closeSync(out);
  }
}

/**
 * The pipe's first bytes, read at once: empty when its writer has sent
 * nothing yet. A pipe that reads as end-of-file has no writer and nothing in
 * it: nothing will ever come (66, fd closed).
 */
function firstRead(fd: number, path: string, what: InputWhat): Buffer {
  const b = Buffer.alloc(1 << 16);
  let n: number;
  try {
    n = fs.readSync(fd, b, 0, b.length, null);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return b.subarray(0, 0);
    fs.closeSync(fd);
    throw new PimError(EXIT.NOINPUT, `cannot read ${what} ${path}: ${(e as Error).message}`);
  }
  if (n === 0) {
    fs.closeSync(fd);
    throw new PimError(
      EXIT.NOINPUT,
      `${what} ${path} is a pipe or FIFO with nothing in it and no one writing to it; ${HINT[what]}`,
    );
  }
  return b.subarray(0, n);
}

/** Hand everything `sock` reads to `write` until its end: readiness-driven, no polling; a silence of idleMs is 75, the signal ends it too. */
function drain(
  sock: import('node:net').Socket,
  write: (b: Buffer) => void,
  o: InputOpts,
  label: string,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(
        () =>
          end(
            new PimError(
              EXIT.TEMPFAIL,
              `nothing came through ${label} for ${o.idleMs / 1000} s; stopped waiting (--timeout sets the bound)`,
            ),
          ),
        o.idleMs,
      );
    };
    const onAbort = () => end(o.signal!.reason as Error);
    const end = (err?: Error) => {
      clearTimeout(idle);
      o.signal?.removeEventListener('abort', onAbort);
      sock.removeAllListeners('data');
      if (err) reject(err);
      else resolve();
    };
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (o.signal?.aborted) return onAbort();
    arm();
    sock.on('data', (d: Buffer) => {
      try {
        write(d);
        arm();
      } catch (e) {
        end(e as Error);
      }
    });
    sock.once('end', () => end());
    sock.once('error', (e) => end(new PimError(EXIT.NOINPUT, `cannot read ${label}: ${e.message}`)));
    sock.resume();
  });
}
