/**
 * Reading a qcow2 image's header: its magic, virtual size and backing file.
 * Enough to tell which build an overlay is backed by without running
 * qemu-img for every image (QEMU's docs/interop/qcow2.txt: big-endian
 * fields; backing_file_offset at 8, backing_file_size at 16, size at 24).
 */
import { closeSync, openSync, readSync, constants } from 'node:fs';
import { isAbsolute, resolve, dirname } from 'node:path';

export const QCOW2_MAGIC = 0x514649fb;

export interface Qcow2Header {
  version: number;
  virtualSize: number;
  /** the backing file as the header names it, made absolute against the image's directory */
  backingFile: string | null;
}

/** The header of a qcow2 file, or null when `path` is not one (or not a readable regular file). */
export function readQcow2Header(path: string): Qcow2Header | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const h = Buffer.alloc(104);
    if (readSync(fd, h, 0, h.length, 0) < 72 || h.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    const version = h.readUInt32BE(4);
    const off = Number(h.readBigUInt64BE(8));
    const len = h.readUInt32BE(16);
    const virtualSize = Number(h.readBigUInt64BE(24));
    let backingFile: string | null = null;
    if (off > 0 && len > 0 && len <= 4096) {
      const b = Buffer.alloc(len);
      if (readSync(fd, b, 0, len, off) === len) {
        const name = b.toString('utf8');
        backingFile = isAbsolute(name) ? name : resolve(dirname(path), name);
      }
    }
    return { version, virtualSize, backingFile };
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}
