/**
 * Reading files from an ext2/3/4 file system in a disk image, read-only and
 * without mounting it (the kernel's Documentation/filesystems/ext4: the
 * superblock at 1024, group descriptors after it, inode tables, extent trees
 * or block maps, linear directory entries, which an htree directory also is).
 *
 * The file system may be hostile: every block number is checked against the
 * file system's size, extent trees and symlinks have depth limits, and a read
 * has a size limit. A feature it cannot read (meta_bg, a journal device,
 * encrypted or large inline files) is an ExtError.
 */
import type { DiskReader } from './diskread.ts';

export class ExtError extends Error {}

const fail = (why: string): never => {
  throw new ExtError(why);
};

const S_IFMT = 0xf000;
const S_IFDIR = 0x4000;
const S_IFREG = 0x8000;
const S_IFLNK = 0xa000;
const EXTENTS_FL = 0x80000;
const INLINE_DATA_FL = 0x10000000;
const ENCRYPT_FL = 0x800;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;

interface Inode {
  mode: number;
  size: number;
  flags: number;
  block: Buffer;
}

/** Is there an ext2/3/4 superblock at `start` of the disk? */
export function isExt(d: DiskReader, start: number): boolean {
  return d.read(start + 1024, 1024).readUInt16LE(56) === 0xef53;
}

export class ExtFs {
  /** the file system's UUID, as blkid prints it */
  readonly uuid: string;
  #d: DiskReader;
  #start: number;
  #bs: number;
  #blocks: number;
  #ipg: number;
  #inodeSize: number;
  #descSize: number;
  #gdt: number;
  #groups: number;

  constructor(d: DiskReader, start: number) {
    this.#d = d;
    this.#start = start;
    const sb = d.read(start + 1024, 1024);
    if (sb.readUInt16LE(56) !== 0xef53) fail('no ext2/3/4 superblock');
    const log = sb.readUInt32LE(24);
    if (log > 6) fail(`a block size of 2^${10 + log}`);
    this.#bs = 1024 << log;
    const incompat = sb.readUInt32LE(96);
    if (incompat & (INCOMPAT_JOURNAL_DEV | INCOMPAT_META_BG))
      fail(`ext incompatible features 0x${incompat.toString(16)}`);
    const big = (incompat & INCOMPAT_64BIT) !== 0;
    this.#blocks = sb.readUInt32LE(4) + (big ? sb.readUInt32LE(336) * 2 ** 32 : 0);
    if (this.#blocks * this.#bs > d.size - start) fail('a file system larger than its disk');
    this.#ipg = sb.readUInt32LE(40);
    const bpg = sb.readUInt32LE(32);
    if (this.#ipg === 0 || bpg === 0) fail('no inodes or blocks per group');
    this.#inodeSize = sb.readUInt32LE(76) >= 1 ? sb.readUInt16LE(88) : 128;
    if (this.#inodeSize < 128 || this.#inodeSize > this.#bs) fail(`an inode of ${this.#inodeSize} bytes`);
    this.#descSize = big ? sb.readUInt16LE(254) : 32;
    if (this.#descSize < 32 || this.#descSize > 1024) fail(`a group descriptor of ${this.#descSize} bytes`);
    this.#gdt = (sb.readUInt32LE(20) + 1) * this.#bs;
    this.#groups = Math.ceil((this.#blocks - sb.readUInt32LE(20)) / bpg);
    const u = sb.subarray(104, 120).toString('hex');
    this.uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-${u.slice(12, 16)}-${u.slice(16, 20)}-${u.slice(20)}`;
  }

  /** The disk offset of `count` blocks from block `n`, which must lie inside the file system. */
  #offsetOf(n: number, count = 1): number {
    if (!Number.isSafeInteger(n) || n <= 0 || n + count > this.#blocks) fail(`block ${n} is outside the file system`);
    return this.#start + n * this.#bs;
  }

  #blockAt(n: number, count = 1): Buffer {
    return this.#d.read(this.#offsetOf(n, count), count * this.#bs);
  }

  #inode(n: number): Inode {
    if (n < 1) fail(`inode ${n}`);
    const group = Math.floor((n - 1) / this.#ipg);
    if (group >= this.#groups) fail(`inode ${n} is outside the file system`);
    const gd = this.#d.read(this.#start + this.#gdt + group * this.#descSize, this.#descSize);
    const table = gd.readUInt32LE(8) + (this.#descSize >= 64 ? gd.readUInt32LE(40) * 2 ** 32 : 0);
    const at = table * this.#bs + ((n - 1) % this.#ipg) * this.#inodeSize;
    if (table <= 0 || at + this.#inodeSize > this.#blocks * this.#bs)
      fail(`inode ${n}'s table is outside the file system`);
    const raw = this.#d.read(this.#start + at, this.#inodeSize);
    const flags = raw.readUInt32LE(32);
    if (flags & ENCRYPT_FL) fail(`inode ${n} is encrypted`);
    return {
      mode: raw.readUInt16LE(0),
      size: raw.readUInt32LE(4) + raw.readUInt32LE(108) * 2 ** 32,
      flags,
      block: Buffer.from(raw.subarray(40, 100)),
    };
  }

  /** The runs of a file: [logical block, physical block (0: a hole), length]. */
  #runs(ino: Inode): Array<[number, number, number]> {
    const runs: Array<[number, number, number]> = [];
    if (ino.flags & EXTENTS_FL) this.#extents(ino.block, runs, 0);
    else this.#blockMap(ino, runs);
    return runs;
  }

  #extents(node: Buffer, runs: Array<[number, number, number]>, level: number): void {
    if (level > 5 || node.readUInt16LE(0) !== 0xf30a) fail('a broken extent tree');
    const entries = node.readUInt16LE(2);
    const depth = node.readUInt16LE(6);
    if (12 + entries * 12 > node.length || runs.length > 1 << 20) fail('a broken extent tree');
    for (let i = 0; i < entries; i++) {
      const e = node.subarray(12 + i * 12, 24 + i * 12);
      if (depth === 0) {
        let len = e.readUInt16LE(4);
        // an uninitialized extent (length over 32768) reads as zeros
        const uninit = len > 32768;
        if (uninit) len -= 32768;
        runs.push([e.readUInt32LE(0), uninit ? 0 : e.readUInt16LE(6) * 2 ** 32 + e.readUInt32LE(8), len]);
      } else this.#extents(this.#blockAt(e.readUInt32LE(4) + e.readUInt16LE(8) * 2 ** 32), runs, level + 1);
    }
  }

  /** ext2/3's block map: 12 direct blocks, then single, double and triple indirect ones. */
  #blockMap(ino: Inode, runs: Array<[number, number, number]>): void {
    const want = Math.ceil(ino.size / this.#bs);
    let next = 0;
    const add = (b: number) => {
      if (next < want) runs.push([next, b, 1]);
      next++;
    };
    const walk = (b: number, level: number) => {
      if (next >= want) return;
      if (b === 0) {
        next += (this.#bs / 4) ** (level + 1);
        return;
      }
      const t = this.#blockAt(b);
      for (let i = 0; i < this.#bs / 4 && next < want; i++) {
        const c = t.readUInt32LE(i * 4);
        if (level === 0) add(c);
        else walk(c, level - 1);
      }
    };
    for (let i = 0; i < 12; i++) add(ino.block.readUInt32LE(i * 4));
    for (let level = 0; level < 3; level++) walk(ino.block.readUInt32LE((12 + level) * 4), level);
  }

  /** A file's bytes (at most `max`). */
  #data(ino: Inode, max: number, what: string): Buffer {
    if (ino.size > max) fail(`${what} is ${ino.size} bytes, over ${max}`);
    if (ino.flags & INLINE_DATA_FL) {
      if (ino.size > 60) fail(`${what} keeps its data inline, past the inode`);
      return Buffer.from(ino.block.subarray(0, ino.size));
    }
    const out = Buffer.alloc(ino.size);
    const blocks = Math.ceil(ino.size / this.#bs);
    for (const [logical, physical, len] of this.#runs(ino)) {
      if (physical === 0 || logical >= blocks) continue;
      // a run in pieces of at most 16 MiB
      const step = Math.max(1, Math.floor((16 << 20) / this.#bs));
      for (let k = 0; k < len && logical + k < blocks; k += step) {
        const n = Math.min(step, len - k, blocks - logical - k);
        // the last block of the file: only what the file holds of it
        const at = (logical + k) * this.#bs;
        this.#d.readInto(out, at, this.#offsetOf(physical + k, n), Math.min(n * this.#bs, out.length - at));
      }
    }
    return out;
  }

  #entries(ino: Inode): Map<string, number> {
    const data = this.#data(ino, 64 << 20, 'a directory');
    const out = new Map<string, number>();
    let pos = 0;
    while (pos + 8 <= data.length) {
      const n = data.readUInt32LE(pos);
      const rec = data.readUInt16LE(pos + 4);
      const len = data[pos + 6]!;
      if (rec < 8 || pos + rec > data.length || 8 + len > rec) fail('a broken directory entry');
      if (n !== 0 && len > 0) out.set(data.toString('utf8', pos + 8, pos + 8 + len), n);
      pos += rec;
    }
    return out;
  }

  #target(ino: Inode): string {
    // a fast symlink keeps its target in the inode's block array
    if (ino.size < 60 && !(ino.flags & EXTENTS_FL)) return ino.block.toString('utf8', 0, ino.size);
    return this.#data(ino, 4096, 'a symlink').toString('utf8');
  }

  /** The inode at `path` (absolute, in this file system), symlinks followed. */
  #lookup(path: string): Inode {
    let parts = path.split('/').filter((p) => p && p !== '.');
    const stack: number[] = [2];
    let hops = 0;
    while (parts.length) {
      const name = parts.shift()!;
      if (name === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = this.#inode(stack.at(-1)!);
      if ((dir.mode & S_IFMT) !== S_IFDIR) fail(`${path}: not a directory on the way`);
      const n = this.#entries(dir).get(name);
      if (n === undefined) fail(`${path}: no such file`);
      const ino = this.#inode(n!);
      if ((ino.mode & S_IFMT) === S_IFLNK) {
        if (++hops > 16) fail(`${path}: too many symlinks`);
        const t = this.#target(ino);
        if (t.startsWith('/')) stack.splice(1);
        parts = [...t.split('/').filter((p) => p && p !== '.'), ...parts];
        continue;
      }
      stack.push(n!);
    }
    return this.#inode(stack.at(-1)!);
  }

  /** The regular file at `path`, whole (at most `max` bytes); null when there is none. */
  readFile(path: string, max: number): Buffer | null {
    let ino: Inode;
    try {
      ino = this.#lookup(path);
    } catch (e) {
      if (e instanceof ExtError && /no such file|not a directory/.test(e.message)) return null;
      throw e;
    }
    if ((ino.mode & S_IFMT) !== S_IFREG) return null;
    return this.#data(ino, max, path);
  }
}
