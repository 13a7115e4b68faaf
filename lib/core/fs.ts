/** Small file helpers shared by every command (no heavy imports here). */
import * as fs from 'node:fs';
import { EXIT, PimError } from './exit.ts';

/** Write through a temp file and rename; with `exclusive`, never replace an existing file. */
export function writeFileAtomic(dest: string, content: string | Uint8Array, mode = 0o644, exclusive = false): void {
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
 * The first `n` bytes of a file (fewer if it is shorter). A missing file is
 * exit 66, an unreadable one 77; the message names it as `what`.
 */
export function readHead(path: string, n: number, what: string): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new PimError(code === 'ENOENT' ? EXIT.NOINPUT : EXIT.NOPERM, `cannot read ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : code}`);
  }
  try {
    const b = Buffer.alloc(n);
    return b.subarray(0, fs.readSync(fd, b, 0, n, 0));
  } finally {
    fs.closeSync(fd);
  }
}
