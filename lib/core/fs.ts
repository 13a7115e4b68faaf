/**
 * Small file helpers shared by every command (no heavy imports here).
 *
 * What pim keeps for a user is private to that user: its directories are
 * 0700 and its files 0600 unless a caller says otherwise (config files a user
 * edits, scripts that must be executable). Files pim creates are created
 * with O_EXCL and O_NOFOLLOW, so a symlink planted where pim writes is
 * refused, never written through.
 */
import * as fs from 'node:fs';
import { EXIT, PimError } from './exit.ts';

const { O_CREAT, O_EXCL, O_NOFOLLOW, O_WRONLY, O_RDONLY, O_NONBLOCK, O_APPEND } = fs.constants;

/** Is there an entry at `p` (a symlink itself counts, never followed)? */
export const exists = (p: string): boolean => {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
};

/**
 * Make `dir` (and missing parents) and make it private: 0700, owned by us.
 * An existing directory of ours with group or other bits is tightened; a
 * symlink or a directory owned by someone else is refused (exit 77 / 73).
 */
export function ensurePrivateDir(dir: string): string {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new PimError(EXIT.CANTCREAT, `cannot create ${dir}: ${(e as Error).message}`);
  }
  // the directory, and those above it up to pim's own root (~/.cache/pim, ~/.local/share/pim, ...)
  const parts = dir.replace(/\/+$/, '').split('/');
  const root = parts.lastIndexOf('pim');
  for (let i = root > 0 ? root + 1 : parts.length; i <= parts.length; i++) tighten(parts.slice(0, i).join('/'));
  return dir;
}

function tighten(dir: string): void {
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new PimError(EXIT.CANTCREAT, `${dir} is not a directory; remove it and try again`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid)
    throw new PimError(EXIT.NOPERM, `${dir} is owned by uid ${st.uid}, not you (uid ${uid}); remove it`);
  if ((st.mode & 0o077) !== 0) fs.chmodSync(dir, 0o700);
}

/** Create `path` for writing; fails if anything (a file, a symlink) is already there. Returns the fd. */
export function createExclusive(path: string, mode = 0o600, append = false): number {
  try {
    return fs.openSync(path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | (append ? O_APPEND : 0), mode);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST')
      throw new PimError(
        EXIT.CANTCREAT,
        `${path} already exists (a file or a symlink someone put there); remove it and try again`,
      );
    throw new PimError(EXIT.CANTCREAT, `cannot create ${path}: ${err.message}`);
  }
}

/**
 * Open a regular file for reading without following a symlink and without
 * blocking (a FIFO with no writer would block for ever). Returns null for
 * anything that is not a regular file, or that cannot be opened.
 */
export function openRegular(path: string): number | null {
  let fd: number;
  try {
    fd = fs.openSync(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch {
    return null;
  }
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    return null;
  }
  return fd;
}

/** The text of a regular file (no symlink, no FIFO, at most `max` bytes), or null. */
export function readRegular(path: string, max = 1 << 20): string | null {
  const fd = openRegular(path);
  if (fd === null) return null;
  try {
    const buf = Buffer.alloc(Math.min(max, Math.max(0, fs.fstatSync(fd).size)));
    let n = 0;
    while (n < buf.length) {
      const r = fs.readSync(fd, buf, n, buf.length - n, null);
      if (r <= 0) break;
      n += r;
    }
    return buf.toString('utf8', 0, n);
  } catch {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Write through a temp file and rename; with `exclusive`, never replace an existing file. */
export function writeFileAtomic(dest: string, content: string | Uint8Array, mode = 0o600, exclusive = false): void {
  const tmp = `${dest}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, content, { mode, flag: 'wx' });
    if (exclusive) {
      fs.linkSync(tmp, dest); // fails with EEXIST instead of replacing
      fs.unlinkSync(tmp);
    } else fs.renameSync(tmp, dest);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* not created */
    }
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') throw new PimError(EXIT.CANTCREAT, `${dest} already exists; remove it first`);
    throw new PimError(EXIT.CANTCREAT, `cannot write ${dest}: ${err.message}`);
  }
}

/**
 * Whether two paths name the same file (device and inode, links followed),
 * however each is spelled: through a symbolic link, `..`, a bind mount, or
 * a hard link. A path that does not exist names no file: false.
 */
export function sameFile(a: string, b: string): boolean {
  const x = fs.statSync(a, { throwIfNoEntry: false, bigint: true });
  const y = fs.statSync(b, { throwIfNoEntry: false, bigint: true });
  return !!x && !!y && x.dev === y.dev && x.ino === y.ino;
}

/** The real path of `p` (links resolved), or `p` made absolute when it does not exist. */
export function realOr(p: string): string {
  const { resolve } = process.getBuiltinModule('node:path') as typeof import('node:path');
  try {
    return fs.realpathSync(p);
  } catch {
    return resolve(p);
  }
}
