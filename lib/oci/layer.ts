/**
 * The one layer of a pim build's image, in KubeVirt's containerDisk layout:
 * an uncompressed tar of
 *
 *   disk/                 directory, 107:107 (qemu's uid and gid in KubeVirt's launcher)
 *   disk/NAME.qcow2       the build's image, 107:107, mode 0444
 *   pim/NAME.efivars.fd   a UEFI build's variables (outside disk/: KubeVirt reads disk/ only)
 *
 * Uncompressed, because a qcow2 is already compact where it matters and
 * gzip would cost a core for seconds per GiB on every push and pull;
 * KubeVirt, containerd and CRI-O take an uncompressed layer as it is.
 * The tar is made the same way every time from the same files (fixed
 * owners, modes, the build's time), so the same build always gives the
 * same layer digest. `readLayer` is the other side: a tar stream, the files
 * it asks for written out, every other entry skipped.
 */
import * as fs from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import { EXIT, PimError } from '../core/exit.ts';

/** Bumped when the tar this file makes changes: a pushed layer records it. */
export const LAYER_FORMAT = 1;
export const KUBEVIRT_UID = 107;

const BLOCK = 512;

function octal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'ascii');
}

/** One ustar header (sizes of 8 GiB and more in GNU base-256, which Go's archive/tar reads). */
export function tarHeader(
  name: string,
  o: { type: 'file' | 'dir'; size?: number; mode: number; uid: number; gid: number; mtime: number },
): Buffer {
  const h = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(name) > 100) throw new PimError(EXIT.SOFTWARE, `tar entry name too long: ${name}`);
  h.write(name, 0, 100, 'utf8');
  octal(h, 100, 8, o.mode);
  octal(h, 108, 8, o.uid);
  octal(h, 116, 8, o.gid);
  const size = o.size ?? 0;
  if (size < 8 ** 11) octal(h, 124, 12, size);
  else {
    h[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }
  octal(h, 136, 12, Math.floor(o.mtime));
  h.write(o.type === 'dir' ? '5' : '0', 156, 1, 'ascii');
  h.write('ustar\0' + '00', 257, 8, 'ascii');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

const pad = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

export type Part = { data: Buffer } | { file: string; size: number; hash?: boolean };

export interface LayerFile {
  /** the path in the tar: disk/NAME.qcow2 */
  name: string;
  path: string;
  /** this file's own sha256 is wanted (the disk's) */
  hash?: boolean;
}

/** The parts of the layer, in order, and its size. */
export function layerParts(files: LayerFile[], mtime: number): { parts: Part[]; size: number } {
  const parts: Part[] = [];
  const dirs = new Set<string>();
  const own = { uid: KUBEVIRT_UID, gid: KUBEVIRT_UID, mtime };
  for (const f of files) {
    const dir = f.name.slice(0, f.name.lastIndexOf('/') + 1);
    if (dir && !dirs.has(dir)) {
      dirs.add(dir);
      parts.push({ data: tarHeader(dir, { type: 'dir', mode: 0o555, ...own }) });
    }
    const size = fs.statSync(f.path).size;
    parts.push({ data: tarHeader(f.name, { type: 'file', size, mode: 0o444, ...own }) });
    parts.push({ file: f.path, size, hash: f.hash });
    if (pad(size)) parts.push({ data: Buffer.alloc(pad(size)) });
  }
  parts.push({ data: Buffer.alloc(2 * BLOCK) });
  return { parts, size: parts.reduce((n, p) => n + ('data' in p ? p.data.length : p.size), 0) };
}

/**
 * The layer's bytes in chunks of at most `chunk` bytes each, as
 * {start, length, body}: each body an async iterable of the chunk's bytes,
 * read in order (a chunk's body is consumed before the next is asked for).
 * The layer's sha256 and the hashed files' are updated as the bytes go by.
 */
export function layerChunks(parts: Part[], size: number, chunk: number, hashes?: { layer: Hash; file: Hash }) {
  async function* bytes(): AsyncGenerator<Buffer> {
    for (const p of parts) {
      if ('data' in p) {
        hashes?.layer.update(p.data);
        yield p.data;
        continue;
      }
      let n = 0;
      for await (const b of fs.createReadStream(p.file, { highWaterMark: 4 << 20 }) as AsyncIterable<Buffer>) {
        n += b.length;
        hashes?.layer.update(b);
        if (p.hash) hashes?.file.update(b);
        yield b;
      }
      if (n !== p.size)
        throw new PimError(EXIT.DATAERR, `${p.file} changed while it was sent (${n} bytes, not ${p.size})`);
    }
  }
  const src = bytes();
  let rest: Buffer | null = null;
  async function* take(n: number): AsyncGenerator<Buffer> {
    while (n > 0) {
      let b = rest;
      rest = null;
      if (!b) {
        const r = await src.next();
        if (r.done) throw new PimError(EXIT.SOFTWARE, 'the layer ended early');
        b = r.value;
      }
      if (b.length > n) {
        rest = b.subarray(n);
        b = b.subarray(0, n);
      }
      n -= b.length;
      yield b;
    }
  }
  return (async function* () {
    for (let start = 0; start < size; start += chunk) {
      const length = Math.min(chunk, size - start);
      let made = false;
      yield {
        start,
        length,
        body: () => {
          // a chunk's bytes can be sent once: they are read from the one stream of the layer
          if (made)
            throw new PimError(
              EXIT.UNAVAILABLE,
              'the registry asked for a chunk again (its credentials expired mid-upload); push again',
            );
          made = true;
          return take(length);
        },
      };
    }
  })();
}

/**
 * The layer's sha256 and its hashed file's, computed in a worker thread that
 * reads the files itself (from the page cache, as the upload reads them):
 * the main thread only moves bytes to the socket. Hashing 256 MiB twice on
 * the main thread took 1.4 s of a 2-core machine's busy main thread. A file
 * that changed between the two reads cannot slip through: the registry
 * hashes what it received and refuses a digest that is not its own.
 */
export async function hashLayerInWorker(parts: Part[], signal?: AbortSignal): Promise<{ layer: string; file: string }> {
  const { Worker } = await import('node:worker_threads');
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const { createHash } = require('node:crypto');
    (async () => {
      const layer = createHash('sha256'), file = createHash('sha256');
      for (const p of workerData) {
        if (p.data) { layer.update(p.data); continue; }
        for await (const b of fs.createReadStream(p.file, { highWaterMark: 4 << 20 })) { layer.update(b); if (p.hash) file.update(b); }
      }
      parentPort.postMessage({ layer: layer.digest('hex'), file: file.digest('hex') });
    })().catch((e) => parentPort.postMessage({ error: String(e && e.message || e) }));`;
  const w = new Worker(code, {
    eval: true,
    workerData: parts.map((p) => ('data' in p ? { data: p.data } : { file: p.file, hash: p.hash === true })),
  });
  const stop = () => void w.terminate();
  signal?.addEventListener('abort', stop);
  try {
    const r = await new Promise<{ layer?: string; file?: string; error?: string }>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', (c) => reject(new Error(`the hashing thread exited (${c})`)));
    });
    if (r.error || !r.layer || !r.file)
      throw new PimError(EXIT.NOINPUT, `cannot read the build to hash it: ${r.error ?? 'no answer'}`);
    return { layer: r.layer, file: r.file };
  } finally {
    signal?.removeEventListener('abort', stop);
    await w.terminate();
  }
}

/** One file of a layer's tar, parsed out: its name and size. */
interface Entry {
  name: string;
  size: number;
  type: string;
}

function parseSize(h: Buffer): number {
  if (h[124]! & 0x80) {
    let v = 0n;
    for (let i = 125; i < 136; i++) v = (v << 8n) | BigInt(h[i]!);
    return Number(v);
  }
  const s = h.toString('ascii', 124, 136).replace(/\0.*$/, '').trim();
  return s ? parseInt(s, 8) : 0;
}

function parseHeader(h: Buffer): Entry | null {
  if (h.every((b) => b === 0)) return null;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  const want = parseInt(h.toString('ascii', 148, 156).replace(/\0.*$/, '').trim(), 8);
  if (sum !== want) throw new PimError(EXIT.DATAERR, 'the layer is not a tar (a header checksum does not match)');
  const name = h.toString('utf8', 0, 100).replace(/\0.*$/s, '');
  const prefix = h.toString('ascii', 257, 263).startsWith('ustar')
    ? h.toString('utf8', 345, 500).replace(/\0.*$/s, '')
    : '';
  return { name: prefix ? `${prefix}/${name}` : name, size: parseSize(h), type: String.fromCharCode(h[156]!) };
}

/** "./disk/x.qcow2" and "/disk/x.qcow2" are "disk/x.qcow2" */
const norm = (n: string) => n.replace(/^(\.?\/)+/, '');

/**
 * Read a layer's tar from `input`: each regular file whose name `want` maps
 * to a path is written there (mode 0600), the rest skipped. Returns the
 * names of the files written and each one's sha256.
 */
export async function readLayer(input: AsyncIterable<Buffer>, want: Map<string, string>): Promise<Map<string, string>> {
  const done = new Map<string, string>();
  let buf: Buffer = Buffer.alloc(0);
  const it = input[Symbol.asyncIterator]();
  let ended = false;
  const fill = async (n: number) => {
    while (buf.length < n && !ended) {
      const r = await it.next();
      if (r.done) ended = true;
      else buf = buf.length ? Buffer.concat([buf, r.value]) : r.value;
    }
    return buf.length >= n;
  };
  let paxPath: string | null = null;
  let paxSize: number | null = null;
  for (;;) {
    if (!(await fill(BLOCK))) break; // a tar without its two zero blocks still ends here
    const e = parseHeader(buf.subarray(0, BLOCK));
    buf = buf.subarray(BLOCK);
    if (!e) break;
    if (paxPath !== null) e.name = paxPath;
    if (paxSize !== null) e.size = paxSize;
    paxPath = paxSize = null;
    let left = e.size;
    if (e.type === 'x') {
      if (left > 1 << 20 || !(await fill(left))) throw new PimError(EXIT.DATAERR, 'the layer has a bad pax header');
      const text = buf.subarray(0, left).toString('utf8');
      for (const m of text.matchAll(/^\d+ (path|size)=(.*)$/gm))
        m[1] === 'path' ? (paxPath = m[2]!) : (paxSize = Number(m[2]));
    }
    const dest = e.type === '0' || e.type === '\0' ? want.get(norm(e.name)) : undefined;
    let fd: fs.promises.FileHandle | null = null;
    let h: Hash | null = null;
    if (dest) {
      if (done.has(norm(e.name))) throw new PimError(EXIT.DATAERR, `the layer holds ${e.name} twice`);
      fd = await fs.promises.open(dest, 'wx', 0o600);
      h = createHash('sha256');
    }
    try {
      left += pad(e.size);
      let body = e.size;
      while (left > 0) {
        if (!buf.length && !(await fill(1))) throw new PimError(EXIT.DATAERR, `the layer ends inside ${e.name}`);
        const n = Math.min(left, buf.length);
        const piece = buf.subarray(0, Math.min(n, body));
        if (piece.length && fd) {
          h!.update(piece);
          await fd.write(piece);
        }
        body -= piece.length;
        buf = buf.subarray(n);
        left -= n;
      }
    } finally {
      await fd?.close();
    }
    if (dest) done.set(norm(e.name), h!.digest('hex'));
  }
  // the rest of the stream is read (its digest covers every byte)
  while (!ended) {
    const r = await it.next();
    if (r.done) ended = true;
  }
  return done;
}
