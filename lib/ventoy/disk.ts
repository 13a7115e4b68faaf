/**
 * Reading a Ventoy stick's layout without mounting anything and without
 * Ventoy's tools: the partition table (MBR or GPT), a file on the FAT16
 * partition 2 (VTOYEFI: /grub/grub.cfg holds VENTOY_VERSION) and the
 * exFAT partition 1's free space and files. Everything here reads bytes
 * at offsets of one open file descriptor: a block device or an image file.
 *
 * Only what pim needs is parsed: FAT16 short (8.3) names, exFAT's
 * allocation bitmap and directory entry sets. Anything that does not look
 * like what it should be is `null` (not a Ventoy disk), never a guess.
 */
import { readSync } from 'node:fs';

export const SECTOR = 512;

/** `len` bytes at `pos` (short at the end of the file). */
export function readAt(fd: number, pos: number, len: number): Buffer {
  const buf = Buffer.alloc(len);
  let n = 0;
  while (n < len) {
    const r = readSync(fd, buf, n, len - n, pos + n);
    if (r <= 0) break;
    n += r;
  }
  return n === len ? buf : buf.subarray(0, n);
}

// ---------------------------------------------------------------- partition table

export interface Part {
  /** 1-based, as the kernel numbers it */
  index: number;
  start: number;
  sectors: number;
  /** MBR type byte as hex ("07", "ef"), or the GPT type GUID */
  type: string;
  bootable: boolean;
}

export interface Table {
  style: 'mbr' | 'gpt';
  parts: Part[];
}

const guid = (b: Buffer) => {
  const h = (s: Buffer) => s.toString('hex');
  const le = (s: Buffer) => h(Buffer.from(s).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
};

/** The partition table, or null when sector 0 has none. */
export function readTable(fd: number): Table | null {
  const mbr = readAt(fd, 0, SECTOR);
  if (mbr.length < SECTOR || mbr.readUInt16LE(510) !== 0xaa55) return null;
  const parts: Part[] = [];
  let protective = false;
  for (let i = 0; i < 4; i++) {
    const e = mbr.subarray(446 + 16 * i, 462 + 16 * i);
    const type = e[4]!;
    if (type === 0) continue;
    if (type === 0xee) protective = true;
    parts.push({
      index: i + 1,
      start: e.readUInt32LE(8),
      sectors: e.readUInt32LE(12),
      type: type.toString(16).padStart(2, '0'),
      bootable: e[0] === 0x80,
    });
  }
  if (!protective) return { style: 'mbr', parts };
  const hdr = readAt(fd, SECTOR, SECTOR);
  if (hdr.length < 92 || hdr.toString('latin1', 0, 8) !== 'EFI PART') return null;
  const lba = Number(hdr.readBigUInt64LE(72));
  const count = Math.min(hdr.readUInt32LE(80), 256);
  const size = hdr.readUInt32LE(84);
  if (size < 128 || size > 4096) return null;
  const all = readAt(fd, lba * SECTOR, count * size);
  const gparts: Part[] = [];
  for (let i = 0; i * size + size <= all.length; i++) {
    const e = all.subarray(i * size, (i + 1) * size);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    gparts.push({
      index: i + 1,
      start: first,
      sectors: last - first + 1,
      type: guid(e.subarray(0, 16)),
      bootable: false,
    });
  }
  return { style: 'gpt', parts: gparts };
}

// ---------------------------------------------------------------- FAT16

export interface Fat16 {
  label: string;
  /** a file's bytes by path ("/grub/grub.cfg"), or null */
  read(path: string, max?: number): Buffer | null;
}

/** A FAT16 file system at byte `base`, or null when it is not FAT16. */
export function openFat16(fd: number, base: number): Fat16 | null {
  const bs = readAt(fd, base, SECTOR);
  if (bs.length < SECTOR || bs.readUInt16LE(510) !== 0xaa55 || bs.toString('latin1', 0x36, 0x3e) !== 'FAT16   ')
    return null;
  const bps = bs.readUInt16LE(11);
  const spc = bs[13]!;
  const reserved = bs.readUInt16LE(14);
  const fats = bs[16]!;
  const rootEnts = bs.readUInt16LE(17);
  const fatSz = bs.readUInt16LE(22);
  if (![512, 1024, 2048, 4096].includes(bps) || !spc || !fats || !fatSz) return null;
  const rootStart = base + (reserved + fats * fatSz) * bps;
  const dataStart = rootStart + Math.ceil((rootEnts * 32) / bps) * bps;
  const clusterBytes = spc * bps;
  const fat = readAt(fd, base + reserved * bps, fatSz * bps);
  const chain = (first: number, max: number): Buffer => {
    const out: Buffer[] = [];
    let c = first;
    let got = 0;
    for (let guard = 0; c >= 2 && c < 0xfff8 && got < max && guard < 65536; guard++) {
      out.push(readAt(fd, dataStart + (c - 2) * clusterBytes, clusterBytes));
      got += clusterBytes;
      c = c * 2 + 1 < fat.length ? fat.readUInt16LE(c * 2) : 0xffff;
    }
    return Buffer.concat(out);
  };
  type Ent = { name: string; dir: boolean; cluster: number; size: number };
  const entries = (buf: Buffer): Ent[] => {
    const out: Ent[] = [];
    for (let o = 0; o + 32 <= buf.length; o += 32) {
      const first = buf[o]!;
      if (first === 0) break;
      const attr = buf[o + 11]!;
      if (first === 0xe5 || attr === 0x0f || attr & 0x08) continue;
      const base8 = buf.toString('latin1', o, o + 8).trimEnd();
      const ext = buf.toString('latin1', o + 8, o + 11).trimEnd();
      out.push({
        name: (ext ? `${base8}.${ext}` : base8).toUpperCase(),
        dir: Boolean(attr & 0x10),
        cluster: buf.readUInt16LE(o + 26),
        size: buf.readUInt32LE(o + 28),
      });
    }
    return out;
  };
  const root = readAt(fd, rootStart, rootEnts * 32);
  let label = bs.toString('latin1', 0x2b, 0x36).trimEnd();
  for (let o = 0; o + 32 <= root.length && root[o] !== 0; o += 32) {
    if (root[o + 11] === 0x08 && root[o] !== 0xe5) label = root.toString('latin1', o, o + 11).trimEnd();
  }
  return {
    label,
    read(path, max = 1 << 20) {
      let dir = entries(root);
      const parts = path
        .split('/')
        .filter(Boolean)
        .map((p) => p.toUpperCase());
      for (let i = 0; i < parts.length; i++) {
        const e = dir.find((d) => d.name === parts[i]);
        if (!e) return null;
        if (i === parts.length - 1)
          return e.dir ? null : chain(e.cluster, Math.min(e.size, max)).subarray(0, Math.min(e.size, max));
        if (!e.dir) return null;
        dir = entries(chain(e.cluster, 1 << 20));
      }
      return null;
    },
  };
}

/** VENTOY_VERSION from grub.cfg's text, or null. */
export function ventoyVersion(grubCfg: string): string | null {
  return /^\s*set\s+VENTOY_VERSION\s*=\s*"?([0-9A-Za-z._-]+)"?/m.exec(grubCfg)?.[1] ?? null;
}

// ---------------------------------------------------------------- exFAT

export interface ExfatFile {
  /** "/iso/debian.iso" */
  path: string;
  size: number;
}

export interface Exfat {
  label: string;
  /** bytes in free clusters */
  free: number;
  /** bytes of the whole cluster heap */
  size: number;
  /** every file below the root, depth-first (directories skipped by `skip`) */
  files(skip?: (dirPath: string) => boolean, limit?: number): ExfatFile[];
}

/** An exFAT volume's layout, from its boot sector, and its FAT. */
interface ExfatGeometry {
  fd: number;
  base: number;
  clusterBytes: number;
  /** the cluster heap's offset from `base` */
  heap: number;
  clusters: number;
  rootCluster: number;
  fat: Buffer;
}

/** The layout of the exFAT file system at byte `base`, or null when it is not exFAT. */
function exfatGeometry(fd: number, base: number): ExfatGeometry | null {
  const bs = readAt(fd, base, SECTOR);
  if (bs.length < SECTOR || bs.toString('latin1', 3, 11) !== 'EXFAT   ') return null;
  const sectorShift = bs[0x6c]!;
  const clusterShift = bs[0x6d]!;
  if (sectorShift < 9 || sectorShift > 12 || sectorShift + clusterShift > 25) return null;
  const sector = 1 << sectorShift;
  const clusterBytes = sector << clusterShift;
  const fatOffset = bs.readUInt32LE(0x50) * sector;
  const fatLength = bs.readUInt32LE(0x54) * sector;
  const heap = bs.readUInt32LE(0x58) * sector;
  const clusters = bs.readUInt32LE(0x5c);
  const rootCluster = bs.readUInt32LE(0x60);
  const fat = readAt(fd, base + fatOffset, Math.min(fatLength, (clusters + 2) * 4));
  return { fd, base, clusterBytes, heap, clusters, rootCluster, fat };
}

/** `len` bytes of a cluster run: contiguous (noFatChain) or through the FAT. */
function readRun(g: ExfatGeometry, first: number, len: number, noFatChain: boolean): Buffer {
  const next = (c: number) => (c * 4 + 4 <= g.fat.length ? g.fat.readUInt32LE(c * 4) : 0xffffffff);
  const valid = (c: number) => c >= 2 && c < g.clusters + 2;
  const clusterAt = (c: number) => g.base + g.heap + (c - 2) * g.clusterBytes;
  if (noFatChain) return valid(first) ? readAt(g.fd, clusterAt(first), len) : Buffer.alloc(0);
  const out: Buffer[] = [];
  let got = 0;
  for (let c = first, guard = 0; valid(c) && got < len && guard <= g.clusters; c = next(c), guard++) {
    out.push(readAt(g.fd, clusterAt(c), Math.min(g.clusterBytes, len - got)));
    got += g.clusterBytes;
  }
  return Buffer.concat(out);
}

/** A file or directory entry set of an exFAT directory. */
interface ExfatEntry {
  name: string;
  dir: boolean;
  first: number;
  size: number;
  noFatChain: boolean;
}

/** The entries of a directory's bytes; the root's allocation bitmap and volume label go to the callbacks. */
function dirEntries(
  buf: Buffer,
  onBitmap?: (first: number, len: number) => void,
  onLabel?: (l: string) => void,
): ExfatEntry[] {
  const out: ExfatEntry[] = [];
  for (let o = 0; o + 32 <= buf.length; o += 32) {
    const t = buf[o]!;
    if (t === 0) break;
    if (t === 0x81) onBitmap?.(buf.readUInt32LE(o + 20), Number(buf.readBigUInt64LE(o + 24)));
    else if (t === 0x83) onLabel?.(buf.toString('utf16le', o + 2, o + 2 + 2 * Math.min(buf[o + 1]!, 11)));
    else if (t === 0x85) {
      const secondaries = buf[o + 1]!;
      const attr = buf.readUInt16LE(o + 4);
      const s = o + 32;
      if (secondaries < 2 || s + 32 * secondaries > buf.length || buf[s] !== 0xc0) continue;
      const nameLen = buf[s + 3]!;
      let name = '';
      for (let k = 1; k < secondaries; k++) {
        const n = s + 32 * k;
        if (buf[n] === 0xc1) name += buf.toString('utf16le', n + 2, n + 32);
      }
      out.push({
        name: name.slice(0, nameLen),
        dir: Boolean(attr & 0x10),
        first: buf.readUInt32LE(s + 20),
        size: Number(buf.readBigUInt64LE(s + 24)),
        noFatChain: Boolean(buf[s + 1]! & 0x02),
      });
      o += 32 * secondaries;
    }
  }
  return out;
}

/** Clusters in use, from the allocation bitmap. */
function usedClusters(bm: Buffer, clusters: number): number {
  let used = 0;
  const full = clusters >> 3;
  for (let i = 0; i < full && i < bm.length; i++) used += POPCOUNT[bm[i]!]!;
  for (let c = full << 3; c < clusters; c++) if ((bm[c >> 3] ?? 0) & (1 << (c & 7))) used++;
  return used;
}

/** An exFAT file system at byte `base`, or null when it is not exFAT. */
export function openExfat(fd: number, base: number): Exfat | null {
  const g = exfatGeometry(fd, base);
  if (!g) return null;
  const { clusters, clusterBytes } = g;
  // the root directory has no length of its own: its FAT chain says
  const rootBuf = readRun(g, g.rootCluster, clusters * clusterBytes, false);
  let bitmap: { first: number; len: number } | null = null;
  let label = '';
  const root = dirEntries(
    rootBuf,
    (first, len) => (bitmap ??= { first, len }),
    (l) => (label = l),
  );
  if (!bitmap) return null;
  const { first, len } = bitmap as { first: number; len: number };
  const used = usedClusters(readRun(g, first, len, false), clusters);
  return {
    label,
    free: (clusters - used) * clusterBytes,
    size: clusters * clusterBytes,
    files(skip = () => false, limit = 10_000) {
      const out: ExfatFile[] = [];
      const walk = (ents: ExfatEntry[], dir: string, depth: number) => {
        for (const e of ents) {
          if (out.length >= limit) return;
          const p = `${dir}/${e.name}`;
          if (!e.dir) out.push({ path: p, size: e.size });
          else if (depth < 8 && !skip(p)) walk(dirEntries(readRun(g, e.first, e.size, e.noFatChain)), p, depth + 1);
        }
      };
      walk(root, '', 0);
      return out;
    },
  };
}

const POPCOUNT = Array.from({ length: 256 }, (_, i) => {
  let n = 0;
  for (let b = i; b; b >>= 1) n += b & 1;
  return n;
});
