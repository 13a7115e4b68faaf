import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { parseChecksum, parseSums, pickFromSums, globToRegExp, isoFiles, cachedDigest, writeRecord, freshRecord } from '../../lib/install/iso.ts';
import { downloadTo, fetchText } from '../../lib/install/download.ts';
import { PimError } from '../../lib/core/exit.ts';

const body = Buffer.alloc(300_000);
for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff;
const sha256 = createHash('sha256').update(body).digest('hex');

let server: http.Server;
let base = '';
let cuts = 0;
let ignoreRange = false;
const ranges: string[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    if (req.url === '/SHA256SUMS') return res.end(`${sha256}  disk-1.2-amd64.iso\n${'0'.repeat(64)} *other.iso\n`);
    if (!req.url?.startsWith('/disk')) {
      res.statusCode = 404;
      return res.end('no');
    }
    ranges.push(req.headers.range ?? '');
    const m = /bytes=(\d+)-/.exec(req.headers.range ?? '');
    const start = m && !ignoreRange ? Number(m[1]) : 0;
    if (start >= body.length) {
      res.writeHead(416, { 'content-range': `bytes */${body.length}` });
      return res.end();
    }
    const slice = body.subarray(start);
    res.writeHead(start ? 206 : 200, { 'content-length': slice.length, ...(start ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}) });
    if (cuts > 0) {
      cuts--;
      res.write(slice.subarray(0, 50_000), () => setTimeout(() => res.socket?.end(), 20));
      return;
    }
    res.end(slice);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => server.close());

const tmp = () => fs.mkdtempSync(join(os.tmpdir(), 'pim-iso-'));

describe('checksums', () => {
  it('parses pinned checksums', () => {
    expect(parseChecksum('sha256:' + 'A'.repeat(64))).toEqual({ algo: 'sha256', hex: 'a'.repeat(64) });
    expect(parseChecksum('b'.repeat(128))).toEqual({ algo: 'sha512', hex: 'b'.repeat(128) });
    expect(parseChecksum('sha512:' + 'a'.repeat(64))).toBeNull();
    expect(parseChecksum('md5:abc')).toBeNull();
    expect(parseChecksum('zz')).toBeNull();
  });
  it('parses GNU and BSD SUMS files and resolves a * in the URL', () => {
    const s = parseSums(`${'a'.repeat(128)}  debian-13.1.0-amd64-netinst.iso\n${'b'.repeat(128)}  debian-13.1.0-amd64-DVD-1.iso\nSHA256 (x.iso) = ${'c'.repeat(64)}\n# junk\n`);
    expect(s.get('x.iso')?.algo).toBe('sha256');
    const p = pickFromSums({ name: 'd', url: 'https://h/iso-cd/debian-*-amd64-netinst.iso', checksum_url: 'https://h/SUMS' }, s);
    expect(p.url).toBe('https://h/iso-cd/debian-13.1.0-amd64-netinst.iso');
    expect(p.checksum.hex).toBe('a'.repeat(128));
    expect(() => pickFromSums({ name: 'd', url: 'https://h/debian-*.iso', checksum_url: 'u' }, s)).toThrow(/2 files match/);
    expect(() => pickFromSums({ name: 'd', url: 'https://h/nope.iso', checksum_url: 'u' }, s)).toThrow(/not listed/);
    expect(globToRegExp('a*.iso').test('a/b.iso')).toBe(false);
  });
});

describe('download', () => {
  it('downloads, and fetches a SUMS file', async () => {
    const d = tmp();
    await downloadTo(`${base}/disk-1.2-amd64.iso`, join(d, 'x.part'));
    expect(createHash('sha256').update(fs.readFileSync(join(d, 'x.part'))).digest('hex')).toBe(sha256);
    const sums = parseSums(await fetchText(`${base}/SHA256SUMS`));
    expect(sums.get('disk-1.2-amd64.iso')?.hex).toBe(sha256);
  });
  it('resumes after a cut connection with Range', async () => {
    const d = tmp();
    cuts = 2;
    ranges.length = 0;
    const retries: number[] = [];
    await downloadTo(`${base}/disk.iso`, join(d, 'x.part'), { onRetry: (n) => retries.push(n) });
    expect(retries).toEqual([1, 2]);
    expect(ranges).toEqual(['', 'bytes=50000-', 'bytes=100000-']);
    expect(fs.readFileSync(join(d, 'x.part')).equals(body)).toBe(true);
  });
  it('resumes an existing part file, and restarts when the server ignores Range', async () => {
    const d = tmp();
    fs.writeFileSync(join(d, 'x.part'), body.subarray(0, 1000));
    const r = await downloadTo(`${base}/disk.iso`, join(d, 'x.part'));
    expect(r.resumed).toBe(true);
    expect(fs.readFileSync(join(d, 'x.part')).equals(body)).toBe(true);
    fs.writeFileSync(join(d, 'x.part'), Buffer.from('garbage'));
    ignoreRange = true;
    try {
      await downloadTo(`${base}/disk.iso`, join(d, 'x.part'));
    } finally {
      ignoreRange = false;
    }
    expect(fs.readFileSync(join(d, 'x.part')).equals(body)).toBe(true);
    // complete part: 416 means done
    expect((await downloadTo(`${base}/disk.iso`, join(d, 'x.part'))).size).toBe(body.length);
  });
  it('gives up after the retries and keeps the part', async () => {
    const d = tmp();
    cuts = 10;
    await expect(downloadTo(`${base}/disk.iso`, join(d, 'x.part'), { retries: 1 })).rejects.toMatchObject({ code: 69 });
    cuts = 0;
    expect(fs.statSync(join(d, 'x.part')).size).toBe(100_000);
  });
  it('a 404 is exit 69; an unreachable host too', async () => {
    const d = tmp();
    await expect(downloadTo(`${base}/missing.iso`, join(d, 'x.part'))).rejects.toSatisfy((e) => e instanceof PimError && e.code === 69 && /404/.test(e.message));
    await expect(fetchText('http://127.0.0.1:1/x')).rejects.toMatchObject({ code: 69 });
  });
});

describe('verify cache', () => {
  it('hashes once, then answers from size+mtime', async () => {
    const d = tmp();
    const f = isoFiles('t', d);
    fs.writeFileSync(f.iso, body);
    const a = await cachedDigest(f, 'sha256');
    expect(a).toEqual({ digest: sha256, cached: false });
    expect(await cachedDigest(f, 'sha256')).toEqual({ digest: sha256, cached: true });
    // touching the file invalidates it
    const st = fs.statSync(f.iso);
    fs.utimesSync(f.iso, st.atime, new Date(st.mtimeMs + 5000));
    expect(freshRecord(f)).toBeNull();
    expect((await cachedDigest(f, 'sha256')).cached).toBe(false);
    writeRecord(f, { size: 1, mtimeMs: 1, algo: 'sha256', digest: 'x' });
    expect((await cachedDigest(f, 'sha256')).cached).toBe(false);
  });
});
