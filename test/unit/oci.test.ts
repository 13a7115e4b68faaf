import { createServer, type Server } from 'node:http';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomFillSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRef } from '../../lib/oci/ref.ts';
import { OciClient, parseChallenge } from '../../lib/oci/client.ts';
import { findCreds } from '../../lib/oci/creds.ts';
import { LayerSource, layerParts, readLayer, tarHeader, type Sink } from '../../lib/oci/layer.ts';
import { recordOf } from '../../lib/oci/pull.ts';

describe('image references', () => {
  it('reads a registry with a port, a nested repository, a tag or a digest', () => {
    expect(parseRef('127.0.0.1:5000/team/images:web')).toMatchObject({
      registry: '127.0.0.1:5000',
      host: '127.0.0.1:5000',
      repo: 'team/images',
      tag: 'web',
      digest: null,
    });
    const d = `sha256:${'a'.repeat(64)}`;
    expect(parseRef(`reg.example/x@${d}`)).toMatchObject({ registry: 'reg.example', repo: 'x', tag: null, digest: d });
    expect(parseRef('localhost/a/b')).toMatchObject({ registry: 'localhost', repo: 'a/b' });
  });
  it("takes a bare name as Docker Hub's, under library/", () => {
    expect(parseRef('debian:12')).toMatchObject({
      registry: 'docker.io',
      host: 'registry-1.docker.io',
      repo: 'library/debian',
      tag: '12',
    });
  });
  it('refuses what is not a reference: 64, or 78 for a config value', () => {
    expect(() => parseRef('Reg.example/UPPER')).toThrow(/repository name component/);
    expect(() => parseRef('https://reg.example/x')).toThrow(/no scheme/);
    expect(() => parseRef('reg.example/x:web', { repoOnly: true, code: 78 })).toThrow(
      expect.objectContaining({ code: 78 }),
    );
  });
});

describe('auth challenges', () => {
  it('reads Bearer and Basic challenges', () => {
    expect(
      parseChallenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"',
      ),
    ).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull' },
    });
    expect(parseChallenge('Basic realm="pim-test"')).toEqual({ scheme: 'basic', params: { realm: 'pim-test' } });
  });
});

describe('the layer', () => {
  it('writes ustar headers that GNU tar reads: owner 107:107, modes, sizes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pim-oci-'));
    try {
      writeFileSync(join(dir, 'x.qcow2'), Buffer.alloc(1000, 7));
      const { parts, size } = layerParts(
        [{ name: 'disk/x.qcow2', path: join(dir, 'x.qcow2'), hash: true }],
        1_700_000_000,
      );
      const bufs: Buffer[] = [];
      for (const p of parts) bufs.push('data' in p ? p.data : readFileSync(p.file));
      const tar = Buffer.concat(bufs);
      expect(tar.length).toBe(size);
      writeFileSync(join(dir, 'l.tar'), tar);
      const listing = execFileSync('tar', ['-tvf', join(dir, 'l.tar'), '--numeric-owner'], { encoding: 'utf8' });
      expect(listing).toMatch(/^dr-xr-xr-x 107\/107 +0 .* disk\/$/m);
      expect(listing).toMatch(/^-r--r--r-- 107\/107 +1000 .* disk\/x\.qcow2$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('writes a size of 8 GiB or more in base-256', () => {
    const h = tarHeader('disk/big.qcow2', {
      type: 'file',
      size: 10 * 2 ** 30,
      mode: 0o444,
      uid: 107,
      gid: 107,
      mtime: 0,
    });
    expect(h[124]).toBe(0x80);
    expect(h.readBigUInt64BE(128)).toBe(BigInt(10 * 2 ** 30));
  });
  it('sends in chunks through reused buffers, hashing as it goes (or only hashing what a resumed upload skips), and reads back what it wrote', {
    timeout: 60_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pim-oci-'));
    try {
      const data = randomFillSync(Buffer.alloc(9_500_000)); // more than the 8 buffers of 1 MiB
      writeFileSync(join(dir, 'x.qcow2'), data);
      const { parts, size } = layerParts([{ name: 'disk/x.qcow2', path: join(dir, 'x.qcow2'), hash: true }], 0);
      // a sink that takes its buffers some time later, as a busy socket does: a buffer reused before then would show
      const got: Buffer[] = [];
      const sink = (): Sink => {
        const queue: Array<[Buffer, (e?: Error | null) => void]> = [];
        let armed = false;
        const drains: Array<() => void> = [];
        const flush = () => {
          armed = false;
          for (const [x, f] of queue.splice(0)) {
            got.push(Buffer.from(x));
            f();
          }
          for (const f of drains.splice(0)) f();
        };
        return {
          destroyed: false,
          write(b, cb) {
            queue.push([b, cb]);
            if (!armed) {
              armed = true;
              setTimeout(flush, 200);
            }
            return queue.length < 20;
          },
          once(ev, f) {
            if (ev === 'drain') drains.push(f);
          },
          off() {},
        };
      };
      const src = new LayerSource(parts, size);
      const chunk = 1_000_000;
      for (let start = 0; start < size; start += chunk) await src.send(sink(), Math.min(chunk, size - start));
      src.close();
      await new Promise((r) => setTimeout(r, 250));
      expect(src.file.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
      const whole = Buffer.concat(got);
      expect(src.layer.digest('hex')).toBe(createHash('sha256').update(whole).digest('hex'));
      // resumed at an offset: the first bytes only hashed, the rest sent, the same digests
      got.length = 0;
      const again = new LayerSource(parts, size);
      await again.skip(1_234_567);
      await again.send(sink(), size - 1_234_567);
      again.close();
      await new Promise((r) => setTimeout(r, 250));
      expect(Buffer.concat(got).equals(whole.subarray(1_234_567))).toBe(true);
      expect(again.layer.digest('hex')).toBe(createHash('sha256').update(whole).digest('hex'));
      expect(again.file.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
      got.push(whole);
      const tar = whole;
      expect(tar.length).toBe(size);
      const out = new Map([['disk/x.qcow2', join(dir, 'out')]]);
      const done = await readLayer(
        (async function* () {
          for (let i = 0; i < tar.length; i += 100_003) yield tar.subarray(i, i + 100_003);
        })(),
        out,
      );
      expect(done.get('disk/x.qcow2')).toBe(createHash('sha256').update(data).digest('hex'));
      expect(readFileSync(join(dir, 'out')).equals(data)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("pim's record in a manifest", () => {
  const key = 'b'.repeat(64);
  const rec = {
    id: `web-${key.slice(0, 12)}`,
    profile: 'web',
    key,
    disk: { file: 'web.qcow2', format: 'qcow2' },
    efivars: null,
    log: 'x',
  };
  const ann = (r: object, extra: Record<string, string> = {}) => ({
    annotations: {
      'dev.pim.build.record': JSON.stringify(r),
      'dev.pim.build.key': key,
      'dev.pim.build.disk.sha256': 'c'.repeat(64),
      ...extra,
    },
  });
  it('takes a record whose id, key and files check out', () => {
    expect(recordOf(ann(rec), 'x').record.id).toBe(rec.id);
  });
  it('refuses an image without it, or with file names that leave the build (65)', () => {
    expect(() => recordOf({ annotations: {} }, 'x')).toThrow(expect.objectContaining({ code: 65 }));
    expect(() => recordOf(ann({ ...rec, disk: { file: '../../evil.qcow2', format: 'qcow2' } }), 'x')).toThrow(
      /not NAME.qcow2/,
    );
    expect(() => recordOf(ann({ ...rec, id: 'other-bbbbbbbbbbbb' }), 'x')).toThrow(/PROFILE-KEY12/);
    expect(() => recordOf(ann({ ...rec, efivars: '../vars' }), 'x')).toThrow(/efivars/);
  });
});

describe('credentials', () => {
  it('reads creds_env, then config.json auths, and never needs a file of pim', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pim-oci-'));
    const old = { ...process.env };
    try {
      process.env.PIM_TEST_CREDS = 'u:p:with:colons';
      expect(await findCreds('r.example', 'PIM_TEST_CREDS')).toMatchObject({ user: 'u', password: 'p:with:colons' });
      delete process.env.PIM_TEST_CREDS;
      await expect(findCreds('r.example', 'PIM_TEST_CREDS')).rejects.toMatchObject({ code: 77 });
      process.env.DOCKER_CONFIG = dir;
      writeFileSync(
        join(dir, 'config.json'),
        JSON.stringify({ auths: { 'https://r.example': { auth: Buffer.from('me:pw').toString('base64') } } }),
      );
      expect(await findCreds('r.example')).toMatchObject({ user: 'me', password: 'pw' });
      expect(await findCreds('other.example')).toBeNull();
    } finally {
      process.env = old;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Bearer token auth', () => {
  // a registry that answers with a Bearer challenge, and its token service (the protocol of
  // Docker Hub, GHCR and Harbor); docker-registry's htpasswd (Basic) is tested in oci.bats
  let srv: Server;
  let port = 0;
  const seen: string[] = [];
  beforeAll(async () => {
    srv = createServer((req, res) => {
      const u = new URL(req.url!, 'http://x');
      seen.push(`${req.method} ${u.pathname}`);
      if (u.pathname === '/token') {
        const ok = req.headers.authorization === `Basic ${Buffer.from('pim:right').toString('base64')}`;
        if (
          !ok ||
          u.searchParams.get('service') !== 'test-reg' ||
          u.searchParams.get('scope') !== 'repository:team/images:pull'
        )
          return void res.writeHead(401).end();
        return void res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ token: 'tok-123' }));
      }
      if (req.headers.authorization !== 'Bearer tok-123') {
        return void res
          .writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="test-reg"` })
          .end();
      }
      if (u.pathname === '/v2/') return void res.writeHead(200).end('{}');
      if (u.pathname === '/v2/team/images/tags/list')
        return void res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ name: 'team/images', tags: ['web', 'web-aaaaaaaaaaaa'] }));
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    port = (srv.address() as { port: number }).port;
  });
  afterAll(() => srv.close());

  it('follows the challenge to the token realm with the credentials and the scope, then sends the token', async () => {
    process.env.PIM_TEST_CREDS = 'pim:right';
    const c = new OciClient(parseRef(`127.0.0.1:${port}/team/images`), { insecure: true, credsEnv: 'PIM_TEST_CREDS' });
    try {
      expect(await c.tags()).toEqual(['web', 'web-aaaaaaaaaaaa']);
      expect(seen).toContain('GET /token');
    } finally {
      await c.close();
    }
  });
  it('warm() pings the registry ahead of a request, and asks for no credentials and no token until one needs them', async () => {
    // creds_env names an unset variable: a look-up of the credentials would be 77 here
    delete process.env.PIM_TEST_CREDS;
    seen.length = 0;
    const c = new OciClient(parseRef(`127.0.0.1:${port}/team/images`), { insecure: true, credsEnv: 'PIM_TEST_CREDS' });
    try {
      c.warm();
      await (c as unknown as { pinged: Promise<unknown> }).pinged;
      expect(seen).toEqual(['GET /v2/']);
      process.env.PIM_TEST_CREDS = 'pim:right';
      expect(await c.tags()).toEqual(['web', 'web-aaaaaaaaaaaa']);
      // the ping's answer (its challenge) serves the request: no second ping
      expect(seen).toEqual(['GET /v2/', 'GET /token', 'GET /v2/team/images/tags/list']);
    } finally {
      await c.close();
    }
  });
  it('a token service that refuses the credentials is 77', async () => {
    process.env.PIM_TEST_CREDS = 'pim:wrong';
    const c = new OciClient(parseRef(`127.0.0.1:${port}/team/images`), { insecure: true, credsEnv: 'PIM_TEST_CREDS' });
    try {
      await expect(c.tags()).rejects.toMatchObject({ code: 77 });
    } finally {
      await c.close();
    }
  });
  it('without insecure, a registry that speaks no TLS is 69: pim never falls back to plain http', async () => {
    process.env.PIM_TEST_CREDS = 'pim:right';
    const c = new OciClient(parseRef(`127.0.0.1:${port}/team/images`), { credsEnv: 'PIM_TEST_CREDS' });
    try {
      await expect(c.tags()).rejects.toMatchObject({ code: 69 }); // https to a plain-http port: no TLS
    } finally {
      await c.close();
    }
  });
});
