/**
 * Reading a disk image's bytes without QEMU: a raw file, or a qcow2 image and
 * its backing chain (QEMU's docs/interop/qcow2.txt: big-endian fields; the L1
 * table names L2 tables, whose entries name each cluster: at an offset in the
 * file, compressed (raw deflate), all zeros, or unallocated, which reads
 * through to the backing file). And the partitions on a disk (MBR, GPT).
 *
 * Everything here is read from an image that may be hostile: every offset and
 * length is bounded, a read past the end is zeros, and a feature this reader
 * does not know (encryption, an external data file, zstd, subclusters) is an
 * error, never a guess.
 */
import fs from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import zlib from 'node:zlib';
import { QCOW2_MAGIC } from './qcow2.ts';

export interface DiskReader {
  /** the disk's virtual size in bytes */
  readonly size: number;
  /** `len` bytes at `off` of the virtual disk (zeros past its end) */
  read(off: number, len: number): Buffer;
  /** the same, into `buf` at `at` (which must hold zeros: a hole is not written) */
  readInto(buf: Buffer, at: number, off: number, len: number): void;
  close(): void;
}

/** Why a disk could not be read: its words name the image and what it holds. */
export class DiskReadError extends Error {}

const fail = (why: string): never => {
  throw new DiskReadError(why);
};

/** The largest read asked of a reader at once (a caller reads a file in pieces). */
const MAX_READ = 64 << 20;

/** Open `path` (qcow2 or raw: its magic says which, as pim's own chains are) for reading. */
export function openDisk(path: string, depth = 0): DiskReader {
  if (depth > 8) fail(`${path}: a backing chain deeper than 8`);
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) fail(`${path} is not a regular file`);
    const magic = Buffer.alloc(4);
    fs.readSync(fd, magic, 0, 4, 0);
    return magic.readUInt32BE(0) === QCOW2_MAGIC ? new Qcow2Reader(path, fd, depth) : rawReader(fd, st.size);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** `len` bytes of the file at `off` into `b` at `at`; where the file ends, `b` is left as it is. */
function readFd(fd: number, b: Buffer, at: number, off: number, len: number): void {
  let got = 0;
  while (got < len) {
    const n = fs.readSync(fd, b, at + got, len - got, off + got);
    if (n === 0) break;
    got += n;
  }
}

/** `len` bytes of the file at `off`, zeros where the file ends. */
function readAt(fd: number, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  readFd(fd, b, 0, off, len);
  return b;
}

function checkRead(buf: Buffer, at: number, off: number, len: number): void {
  if (len > MAX_READ || off < 0 || at < 0 || at + len > buf.length) fail(`a read of ${len} bytes at ${off}`);
}

function rawReader(fd: number, size: number): DiskReader {
  const readInto = (buf: Buffer, at: number, off: number, len: number) => {
    checkRead(buf, at, off, len);
    readFd(fd, buf, at, off, len);
  };
  return {
    size,
    read: (off, len) => {
      const b = Buffer.alloc(Math.max(0, len));
      readInto(b, 0, off, len);
      return b;
    },
    readInto,
    close: () => fs.closeSync(fd),
  };
}

/** bits 9-55 of an L1 or L2 entry: a host offset */
const OFFSET_MASK = 0x00fffffffffffe00n;

class Qcow2Reader implements DiskReader {
  readonly size: number;
  #fd: number;
  #clusterBits: number;
  #cluster: number;
  #l1: Buffer;
  #l2cache = new Map<number, Buffer>();
  #backing: DiskReader | null = null;
  #fileSize: number;

  constructor(path: string, fd: number, depth: number) {
    this.#fd = fd;
    this.#fileSize = fs.fstatSync(fd).size;
    const h = readAt(fd, 0, 112);
    const version = h.readUInt32BE(4);
    if (version !== 2 && version !== 3) fail(`${path}: qcow2 version ${version}`);
    const bits = h.readUInt32BE(20);
    if (bits < 9 || bits > 21) fail(`${path}: a cluster of 2^${bits} bytes`);
    this.#clusterBits = bits;
    this.#cluster = 2 ** bits;
    this.size = Number(h.readBigUInt64BE(24));
    if (h.readUInt32BE(32) !== 0) fail(`${path} is encrypted`);
    // version 3: any incompatible feature but "dirty" (bit 0: refcounts only) is one this reader does not know
    if (version === 3 && (h.readBigUInt64BE(72) & ~1n) !== 0n)
      fail(`${path}: qcow2 incompatible features 0x${h.readBigUInt64BE(72).toString(16)}`);
    const l1Size = h.readUInt32BE(36);
    const l1Off = Number(h.readBigUInt64BE(40));
    const needed = Math.ceil(this.size / this.#cluster / (this.#cluster / 8));
    if (l1Size < needed || l1Size > 1 << 22) fail(`${path}: an L1 table of ${l1Size} entries`);
    this.#l1 = readAt(fd, l1Off, l1Size * 8);
    const bOff = Number(h.readBigUInt64BE(8));
    const bLen = h.readUInt32BE(16);
    if (bOff > 0 && bLen > 0) {
      if (bLen > 1023) fail(`${path}: a backing file name of ${bLen} bytes`);
      const name = readAt(fd, bOff, bLen).toString('utf8');
      this.#backing = openDisk(isAbsolute(name) ? name : resolve(dirname(path), name), depth + 1);
    }
  }

  read(off: number, len: number): Buffer {
    const out = Buffer.alloc(Math.max(0, len));
    this.readInto(out, 0, off, len);
    return out;
  }

  readInto(out: Buffer, start: number, off: number, len: number): void {
    checkRead(out, start, off, len);
    let done = 0;
    while (done < len) {
      const at = off + done;
      if (at >= this.size) break;
      const inCluster = at % this.#cluster;
      let n = Math.min(len - done, this.#cluster - inCluster, this.size - at);
      const host = this.#hostOf(at - inCluster);
      if (host > 0) {
        // clusters that follow each other in the file too: one read
        while (done + n < len && at + n < this.size && this.#hostOf(at + n) === host + inCluster + n)
          n = Math.min(len - done, n + this.#cluster, this.size - at);
        readFd(this.#fd, out, start + done, host + inCluster, n);
      } else this.#readInCluster(at - inCluster, inCluster, n).copy(out, start + done);
      done += n;
    }
  }

  /** The file offset of the guest cluster at `base` when it is a plain allocated one, else 0. */
  #hostOf(base: number): number {
    const entry = this.#l2Entry(base / this.#cluster);
    if (entry === null || (entry >> 62n) & 1n || entry & 1n) return 0;
    const host = Number(entry & OFFSET_MASK);
    if (host !== 0 && (host % this.#cluster !== 0 || host >= this.#fileSize)) fail(`a data cluster at ${host}`);
    return host;
  }

  /**
   * `n` bytes at `inCluster` of the guest cluster at `base` when it is not a
   * plain allocated one (#hostOf's): compressed, all zeros, or unallocated
   * (the backing file's, or zeros without one).
   */
  #readInCluster(base: number, inCluster: number, n: number): Buffer {
    const entry = this.#l2Entry(base / this.#cluster);
    if (entry !== null && (entry >> 62n) & 1n) return this.#compressed(entry).subarray(inCluster, inCluster + n);
    // bit 0: the cluster reads as zeros (version 3)
    if (entry !== null && entry & 1n) return Buffer.alloc(n);
    return this.#backing ? this.#backing.read(base + inCluster, n) : Buffer.alloc(n);
  }

  /** The L2 entry of guest cluster `vc`, or null when its L1 entry names no L2 table. */
  #l2Entry(vc: number): bigint | null {
    const perL2 = this.#cluster / 8;
    const l1i = Math.floor(vc / perL2);
    if (l1i * 8 >= this.#l1.length) return null;
    const l2Off = Number(this.#l1.readBigUInt64BE(l1i * 8) & OFFSET_MASK);
    if (l2Off === 0) return null;
    let l2 = this.#l2cache.get(l2Off);
    if (!l2) {
      if (l2Off % this.#cluster !== 0 || l2Off >= this.#fileSize) fail(`an L2 table at ${l2Off}`);
      if (this.#l2cache.size >= 64) this.#l2cache.clear();
      l2 = readAt(this.#fd, l2Off, this.#cluster);
      this.#l2cache.set(l2Off, l2);
    }
    const e = l2.readBigUInt64BE((vc % perL2) * 8);
    return e === 0n ? null : e;
  }

  #lastCompressed: { entry: bigint; data: Buffer } | null = null;

  /** A compressed cluster, inflated (raw deflate, as QEMU writes it: compression type zlib). */
  #compressed(entry: bigint): Buffer {
    if (this.#lastCompressed?.entry === entry) return this.#lastCompressed.data;
    const x = BigInt(62 - (this.#clusterBits - 8));
    const host = Number(entry & ((1n << x) - 1n));
    const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
    const len = sectors * 512 - (host % 512);
    if (host >= this.#fileSize || len > 2 * this.#cluster) fail(`a compressed cluster at ${host}`);
    let data: Buffer;
    try {
      data = zlib.inflateRawSync(readAt(this.#fd, host, len), {
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
        maxOutputLength: this.#cluster,
        // one chunk: no concatenation of 16 KiB pieces
        chunkSize: Math.max(this.#cluster, 64),
      });
    } catch (e) {
      return fail(`a compressed cluster at ${host} does not inflate: ${(e as Error).message}`);
    }
    if (data.length < this.#cluster) data = Buffer.concat([data, Buffer.alloc(this.#cluster - data.length)]);
    this.#lastCompressed = { entry, data };
    return data;
  }

  close(): void {
    this.#backing?.close();
    fs.closeSync(this.#fd);
  }
}

export interface Partition {
  /** 1-based, as Linux numbers them (0: the whole disk, no partition table) */
  number: number;
  start: number;
  size: number;
}

/** The partitions of a disk: a GPT's, else an MBR's primary ones, else the whole disk. */
export function partitions(d: DiskReader): Partition[] {
  const mbr = d.read(0, 512);
  if (mbr.readUInt16LE(510) !== 0xaa55) return [{ number: 0, start: 0, size: d.size }];
  const out: Partition[] = [];
  for (let i = 0; i < 4; i++) {
    const e = mbr.subarray(446 + 16 * i, 462 + 16 * i);
    const type = e[4]!;
    if (type === 0xee) return gpt(d);
    // empty, or an extended partition (its logical ones are not read)
    if (type === 0 || type === 0x05 || type === 0x0f || type === 0x85) continue;
    const start = e.readUInt32LE(8) * 512;
    const size = e.readUInt32LE(12) * 512;
    if (size > 0 && start + size <= d.size) out.push({ number: i + 1, start, size });
  }
  return out.length ? out : [{ number: 0, start: 0, size: d.size }];
}

function gpt(d: DiskReader): Partition[] {
  const h = d.read(512, 512);
  if (h.toString('latin1', 0, 8) !== 'EFI PART') fail('a protective MBR without a GPT header');
  const lba = Number(h.readBigUInt64LE(72));
  const count = h.readUInt32LE(80);
  const esize = h.readUInt32LE(84);
  if (count > 1024 || esize < 128 || esize > 4096) fail(`a GPT of ${count} entries of ${esize} bytes`);
  const table = d.read(lba * 512, count * esize);
  const out: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * esize, (i + 1) * esize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    const start = first * 512;
    const size = (last - first + 1) * 512;
    if (last >= first && start + size <= d.size) out.push({ number: i + 1, start, size });
  }
  return out;
}
