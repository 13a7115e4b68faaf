import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import {
  parseChecksum,
  parseSums,
  pickFromSums,
  globToRegExp,
  isoFiles,
  cachedDigest,
  writeRecord,
  freshRecord,
} from '../../lib/install/iso.ts';
import { downloadTo, fetchText, stallMsOf } from '../../lib/install/download.ts';
import { downloadIsos, ensureIso, removeIso } from '../../lib/install/iso-store.ts';
import { PimError } from '../../lib/core/exit.ts';

const body = Buffer.alloc(300_000);
for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff;
const sha256 = createHash('sha256').update(body).digest('hex');

let server: http.Server;
let base = '';
let cuts = 0;
let ignoreRange = false;
let stallOnce = 0;
let requests = 0;
const ranges: string[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    requests++;
    if (req.url === '/SHA256SUMS') return res.end(`${sha256}  disk-1.2-amd64.iso\n${'0'.repeat(64)} *other.iso\n`);
    // /stall/F sends 50,000 bytes and then nothing, keeping the connection open;
    // /stall1/F does that only while stallOnce > 0
    const [, mode, rest] = /^\/(?:(stall1?)\/)?(.*)$/.exec(req.url ?? '')!;
    if (!rest!.startsWith('disk')) {
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
    res.writeHead(start ? 206 : 200, {
      'content-length': slice.length,
      ...(start ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    if (mode === 'stall' || (mode === 'stall1' && stallOnce-- > 0)) return void res.write(slice.subarray(0, 50_000));
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
afterAll(() => {
  server.closeAllConnections();
  server.close();
});

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
    const s = parseSums(
      `${'a'.repeat(128)}  debian-13.1.0-amd64-netinst.iso\n${'b'.repeat(128)}  debian-13.1.0-amd64-DVD-1.iso\nSHA256 (x.iso) = ${'c'.repeat(64)}\n# junk\n`,
    );
    expect(s.get('x.iso')?.algo).toBe('sha256');
    const p = pickFromSums(
      { name: 'd', url: 'https://h/iso-cd/debian-*-amd64-netinst.iso', checksum_url: 'https://h/SUMS' },
      s,
    );
    expect(p.url).toBe('https://h/iso-cd/debian-13.1.0-amd64-netinst.iso');
    expect(p.checksum.hex).toBe('a'.repeat(128));
    expect(() => pickFromSums({ name: 'd', url: 'https://h/debian-*.iso', checksum_url: 'u' }, s)).toThrow(
      /2 files match/,
    );
    expect(() => pickFromSums({ name: 'd', url: 'https://h/nope.iso', checksum_url: 'u' }, s)).toThrow(/not listed/);
    expect(globToRegExp('a*.iso').test('a/b.iso')).toBe(false);
  });
});

describe('download', () => {
  it('downloads, and fetches a SUMS file', async () => {
    const d = tmp();
    await downloadTo(`${base}/disk-1.2-amd64.iso`, join(d, 'x.part'));
    expect(
      createHash('sha256')
        .update(fs.readFileSync(join(d, 'x.part')))
        .digest('hex'),
    ).toBe(sha256);
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
  it('resumes an existing part file, and restarts when the server ignores Range, saying so once', async () => {
    const d = tmp();
    fs.writeFileSync(join(d, 'x.part'), body.subarray(0, 1000));
    const restarts: string[] = [];
    const r = await downloadTo(`${base}/disk.iso`, join(d, 'x.part'), { onRestart: (why) => restarts.push(why) });
    expect(r.resumed).toBe(true);
    expect(restarts).toEqual([]);
    expect(fs.readFileSync(join(d, 'x.part')).equals(body)).toBe(true);
    fs.writeFileSync(join(d, 'x.part'), Buffer.from('garbage'));
    ignoreRange = true;
    cuts = 2; // each retry is ignored too: still said once
    try {
      await downloadTo(`${base}/disk.iso`, join(d, 'x.part'), { onRestart: (why) => restarts.push(why) });
    } finally {
      ignoreRange = false;
      cuts = 0;
    }
    expect(restarts).toEqual(['the server ignored the resume request']);
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
  it('a body that stalls counts as a cut connection: resumed where it stopped', async () => {
    const d = tmp();
    stallOnce = 1;
    ranges.length = 0;
    const retries: string[] = [];
    await downloadTo(`${base}/stall1/disk.iso`, join(d, 'x.part'), {
      stallMs: 200,
      onRetry: (_, e) => retries.push(e.message),
    });
    expect(retries).toEqual(['no data for 0.2 s']);
    expect(ranges).toEqual(['', 'bytes=50000-']);
    expect(fs.readFileSync(join(d, 'x.part')).equals(body)).toBe(true);
  });
  it('a body that always stalls ends in 69 naming the URL, with the part kept', async () => {
    const d = tmp();
    const url = `${base}/stall/disk.iso`;
    const err = await downloadTo(url, join(d, 'x.part'), { stallMs: 150, retries: 1 }).catch((e) => e);
    expect(err).toBeInstanceOf(PimError);
    expect(err.code).toBe(69);
    expect(err.message).toBe(`${url}: download cut off (no data for 0.15 s) after 2 attempts; run again to resume`);
    expect(fs.statSync(join(d, 'x.part')).size).toBe(100_000);
  });
  it('PIM_DOWNLOAD_STALL sets the stall timeout in seconds; nonsense is 64', () => {
    const old = process.env.PIM_DOWNLOAD_STALL;
    try {
      delete process.env.PIM_DOWNLOAD_STALL;
      expect(stallMsOf()).toBe(30_000);
      process.env.PIM_DOWNLOAD_STALL = '1.5';
      expect(stallMsOf()).toBe(1500);
      expect(stallMsOf({ stallMs: 10 })).toBe(10);
      process.env.PIM_DOWNLOAD_STALL = 'x';
      expect(() => stallMsOf()).toThrow(expect.objectContaining({ code: 64 }));
    } finally {
      if (old === undefined) delete process.env.PIM_DOWNLOAD_STALL;
      else process.env.PIM_DOWNLOAD_STALL = old;
    }
  });
  it('a full disk is 73 at once, naming the directory and the space needed; no retries', async () => {
    // /dev/full: every write fails with ENOSPC (the BATS test fills a real tmpfs)
    const retries: number[] = [];
    const err = await downloadTo(`${base}/disk.iso`, '/dev/full', { onRetry: (n) => retries.push(n) }).catch((e) => e);
    expect(err).toBeInstanceOf(PimError);
    expect(err.code).toBe(73);
    expect(err.message).toBe(
      '/dev: no space left: 293.0 KiB more needed (300000 bytes in all); free some space and run again to resume (/dev/full is kept)',
    );
    expect(retries).toEqual([]);
  });
  it('a 404 is exit 69; an unreachable host too', async () => {
    const d = tmp();
    await expect(downloadTo(`${base}/missing.iso`, join(d, 'x.part'))).rejects.toSatisfy(
      (e) => e instanceof PimError && e.code === 69 && /404/.test(e.message),
    );
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

describe('the ISO store', () => {
  let cache = '';
  beforeEach(() => {
    const root = tmp();
    process.env.XDG_CONFIG_HOME = join(root, 'config');
    process.env.XDG_CACHE_HOME = join(root, 'cache');
    cache = join(root, 'cache', 'pim', 'isos');
    fs.mkdirSync(join(root, 'config', 'pim', 'isos.d'), { recursive: true });
    fs.writeFileSync(
      join(root, 'config', 'pim', 'isos.d', 'x.yml'),
      `disk:\n  url: ${base}/disk-1.2-amd64.iso\n  checksum: sha256:${sha256}\n` +
        `sums:\n  url: ${base}/disk-*-amd64.iso\n  checksum_url: ${base}/SHA256SUMS\n` +
        `open:\n  url: ${base}/disk.iso\n  insecure: true\n` +
        `cut:\n  url: ${base}/disk.iso\n  checksum: sha256:${sha256}\n` +
        `slow:\n  url: ${base}/stall1/disk.iso\n  checksum: sha256:${sha256}\n`,
    );
  });
  const all = async <T>(g: AsyncGenerator<T>) => {
    const out: T[] = [];
    for await (const x of g) out.push(x);
    return out;
  };

  it('ensureIso downloads and verifies a missing ISO into a private dir, then answers from the record without network', async () => {
    for (const name of ['disk', 'sums']) {
      const r = await ensureIso(name);
      expect(r).toEqual({ path: join(cache, `${name}.iso`), checksum: `sha256:${sha256}`, verified: true });
      expect(fs.readFileSync(r.path).equals(body)).toBe(true);
      const n = requests;
      expect(await ensureIso(name)).toEqual(r);
      expect(requests).toBe(n); // no SUMS file, no HEAD: nothing
    }
    expect(fs.statSync(cache).mode & 0o777).toBe(0o700);
    for (const f of fs.readdirSync(cache)) expect([f, fs.statSync(join(cache, f)).mode & 0o777]).toEqual([f, 0o600]);
  });
  it('ensureIso of an ISO that no longer matches its pinned checksum is 65', async () => {
    await ensureIso('disk');
    const f = join(process.env.XDG_CONFIG_HOME!, 'pim', 'isos.d', 'x.yml');
    fs.writeFileSync(
      f,
      fs.readFileSync(f, 'utf8').replace(`checksum: sha256:${sha256}`, `checksum: sha256:${'1'.repeat(64)}`),
    );
    await expect(ensureIso('disk')).rejects.toMatchObject({ code: 65 });
  });
  it('ensureIso of an insecure entry gives its sha256 and says it is unverified', async () => {
    const r = await ensureIso('open');
    expect(r).toEqual({ path: join(cache, 'open.iso'), checksum: `sha256:${sha256}`, verified: false });
    const n = requests;
    expect(await ensureIso('open')).toEqual(r);
    expect(requests).toBe(n);
  });
  it('a cut body is never renamed to NAME.iso', async () => {
    cuts = 10;
    try {
      await expect(all(downloadIsos(['cut']))).rejects.toMatchObject({ code: 69 });
    } finally {
      cuts = 0;
    }
    expect(fs.existsSync(join(cache, 'cut.iso'))).toBe(false);
    // what arrived is kept for a resume; on a loaded machine the last cut chunk may be
    // dropped with the failed response (150,000 seen once), which a resume fetches again
    const part = fs.statSync(join(cache, 'cut.iso.part')).size;
    expect(part).toBeGreaterThan(0);
    expect(part).toBeLessThanOrEqual(200_000);
  });
  it('a second download of the same ISO is 75 while the first runs; the first completes', async () => {
    stallOnce = 1;
    const events: string[] = [];
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const first = all(
      downloadIsos(['slow'], { stallMs: 300, onEvent: (e) => (events.push(e.type), e.type === 'start' && started()) }),
    );
    await running;
    await expect(all(downloadIsos(['slow']))).rejects.toMatchObject({ code: 75 });
    await expect(removeIso('slow')).rejects.toMatchObject({ code: 75 });
    const [r] = await first;
    expect(r).toMatchObject({ name: 'slow', checksum: `sha256:${sha256}`, verified: true, downloaded: true });
    expect(events).toEqual(['start', 'retry', 'verifying']);
    expect((await removeIso('slow')).map((x) => x.path)).toEqual([
      join(cache, 'slow.iso'),
      join(cache, 'slow.iso.verified'),
    ]);
  });
});
