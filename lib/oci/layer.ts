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

/** Where a layer's bytes go: a request body (node's http.ClientRequest is one). */
export interface Sink {
  write(b: Buffer, cb: (e?: Error | null) => void): boolean;
  once(ev: 'drain' | 'close', f: () => void): unknown;
  off(ev: 'drain' | 'close', f: () => void): unknown;
  readonly destroyed: boolean;
}

/**
 * The layer's bytes, read once, in order, into a few reused buffers, and
 * hashed in the same pass (the layer's sha256 and the hashed file's):
 * `send(sink, n)` writes the next n bytes to a request body, `skip(n)`
 * only hashes them (the bytes a resumed upload has on the registry already).
 *
 * Measured on the 2-core test machine, pushing 256 MiB: a fresh 4 MiB
 * buffer per read (fs.createReadStream) plus a second read of the file in a
 * hashing thread cost pim 1.7 s of CPU, more than half of it in the kernel
 * (page faults on new buffers, the file read twice); reused 1 MiB buffers
 * hashed on the main thread cost 0.7 s, under skopeo's 1.2 s. A buffer is
 * reused only once the socket has taken it (its write callback), so a
 * slow registry holds at most SLOTS buffers.
 */
export class LayerSource {
  static readonly SLOT = 1 << 20;
  static readonly SLOTS = 8;
  readonly layer: Hash = createHash('sha256');
  readonly file: Hash = createHash('sha256');
  /** bytes of the layer read so far */
  pos = 0;
  private part = 0;
  private inPart = 0;
  private fd: number | null = null;
  private readonly bufs: Buffer[] = [];
  private readonly busy: Array<Promise<void> | null> = [];
  private next = 0;

  private readonly parts: Part[];
  readonly size: number;
  constructor(parts: Part[], size: number) {
    this.parts = parts;
    this.size = size;
  }

  /** The next piece of the layer, at most `max` bytes, in `buf` (a data part is copied). */
  private async read(buf: Buffer, max: number): Promise<Buffer> {
    for (;;) {
      const p = this.parts[this.part];
      if (!p) throw new PimError(EXIT.SOFTWARE, 'the layer ended early');
      const left = ('data' in p ? p.data.length : p.size) - this.inPart;
      if (left === 0) {
        if (this.fd !== null) fs.closeSync(this.fd);
        this.fd = null;
        this.part++;
        this.inPart = 0;
        continue;
      }
      const n = Math.min(left, max, buf.length);
      let got: Buffer;
      if ('data' in p) {
        p.data.copy(buf, 0, this.inPart, this.inPart + n);
        got = buf.subarray(0, n);
      } else {
        this.fd ??= fs.openSync(p.file, 'r');
        // read here, not in libuv's threads: 1 MiB from the page cache is a fraction of a
        // millisecond, while a hand-off to another thread waits its turn on a busy machine
        const k = fs.readSync(this.fd, buf, 0, n, this.inPart);
        if (k === 0)
          throw new PimError(EXIT.DATAERR, `${p.file} changed while it was sent (shorter than ${p.size} bytes)`);
        got = buf.subarray(0, k);
        if (p.hash) this.file.update(got);
      }
      this.layer.update(got);
      this.inPart += got.length;
      this.pos += got.length;
      return got;
    }
  }

  /** Hash the next n bytes without sending them. */
  async skip(n: number): Promise<void> {
    const buf = (this.bufs[0] ??= Buffer.allocUnsafeSlow(LayerSource.SLOT));
    await this.settle();
    while (n > 0) n -= (await this.read(buf, n)).length;
  }

  /** Write the next n bytes to `sink`; resolves once the sink has taken them all. */
  async send(sink: Sink, n: number): Promise<void> {
    let failed: Error | null = null;
    let wake: (() => void) | null = null;
    const closed = () => {
      failed ??= new Error('the request ended before the upload did');
      wake?.();
    };
    sink.once('close', closed);
    const wait = (p: Promise<void>) =>
      new Promise<void>((res) => {
        wake = res;
        void p.then(res);
      }).then(() => {
        wake = null;
        if (failed) throw failed;
      });
    try {
      while (n > 0) {
        const i = this.next;
        this.next = (i + 1) % LayerSource.SLOTS;
        if (this.busy[i]) await wait(this.busy[i]!);
        const buf = (this.bufs[i] ??= Buffer.allocUnsafeSlow(LayerSource.SLOT));
        const got = await this.read(buf, n);
        n -= got.length;
        if (failed || sink.destroyed) throw failed ?? new Error('the request ended before the upload did');
        let done!: () => void;
        this.busy[i] = new Promise<void>((r) => (done = r)).then(() => {
          this.busy[i] = null;
        });
        const more = sink.write(got, (e) => {
          if (e) failed ??= e;
          done();
        });
        if (!more) {
          let drained!: () => void;
          const d = new Promise<void>((r) => (drained = r));
          sink.once('drain', drained);
          await wait(d).finally(() => sink.off('drain', drained));
        }
      }
    } finally {
      sink.off('close', closed);
    }
  }

  /** Wait until the sinks have taken every buffer (before one is read into without a send). */
  private async settle(): Promise<void> {
    await Promise.all(this.busy.filter(Boolean));
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
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
    let fd: number | null = null;
    let h: Hash | null = null;
    if (dest) {
      if (done.has(norm(e.name))) throw new PimError(EXIT.DATAERR, `the layer holds ${e.name} twice`);
      fd = fs.openSync(dest, 'wx', 0o600);
      h = createHash('sha256');
    }
    // the socket's pieces (16 KiB TLS records) written 1 MiB at a time, in one writev each
    const pending: Buffer[] = [];
    let queued = 0;
    const flush = () => {
      if (fd === null || !queued) return;
      const bufs = pending.splice(0);
      const want = queued;
      queued = 0;
      // written here, not in libuv's threads (see LayerSource.read)
      const bytesWritten = fs.writevSync(fd, bufs);
      if (bytesWritten !== want)
        throw new PimError(
          EXIT.CANTCREAT,
          `could not write ${dest}: ${bytesWritten} of ${want} bytes written (disk full?)`,
        );
    };
    try {
      left += pad(e.size);
      let body = e.size;
      while (left > 0) {
        if (!buf.length && !(await fill(1))) throw new PimError(EXIT.DATAERR, `the layer ends inside ${e.name}`);
        const n = Math.min(left, buf.length);
        const piece = buf.subarray(0, Math.min(n, body));
        if (piece.length && fd) {
          h!.update(piece);
          pending.push(piece);
          queued += piece.length;
          if (queued >= 1 << 20) flush();
        }
        body -= piece.length;
        buf = buf.subarray(n);
        left -= n;
      }
      flush();
    } finally {
      if (fd !== null) fs.closeSync(fd);
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
