import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as net from 'node:net';
import { join } from 'node:path';
import { renderAnswer, startServer, type RequestRecord, type Served } from '../../lib/install/serve.ts';
import { loadProfile } from '../../lib/config/profile.ts';

let cfg = '';
let s: Served;
const logs: string[] = [];
const w = (rel: string, text: string) => {
  fs.mkdirSync(join(cfg, rel, '..'), { recursive: true });
  fs.writeFileSync(join(cfg, rel), text);
};

/** Send a raw request line (no client-side normalisation); resolve status and body. */
function raw(target: string, method = 'GET', host = '127.0.0.1'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const c = net.connect(s.port, '127.0.0.1');
    let buf = '';
    c.on('data', (d) => (buf += d));
    c.on('end', () => {
      const [head, ...rest] = buf.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(head ?? '')?.[1]), body: rest.join('\r\n\r\n') });
    });
    c.on('error', reject);
    c.write(`${method} ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
}

beforeAll(async () => {
  const root = fs.mkdtempSync(join(os.tmpdir(), 'pim-serve-'));
  process.env.XDG_CONFIG_HOME = root;
  cfg = join(root, 'pim');
  w('profiles.d/p.yml', 'dev:\n  hostname: devbox\nbroken:\n  hostname: b\n  preseed: broken.cfg\n');
  w('preseeds.d/broken.cfg', 'ok line\n<%= profile.no.such %>\n');
  w('installs.d/dev.sh', 'echo dev install\n');
  w('scripts.d/default.sh', 'echo user default script\n');
  w('secret.txt', 'SECRET\n');
  fs.symlinkSync(join(cfg, 'secret.txt'), join(cfg, 'scripts.d/link.sh'));
  fs.symlinkSync('/etc/passwd', join(cfg, 'installs.d/passwd'));
  s = await startServer({ profile: 'dev', port: 0, bind: '127.0.0.1', log: (l) => logs.push(l) });
});
afterAll(() => s?.close());

describe('pim-serve', () => {
  it('renders the preseed with the profile and the URL the client used', async () => {
    const r = await raw('/preseed.cfg', 'GET', `10.0.2.2:${s.port}`);
    expect(r.status).toBe(200);
    expect(r.body).toContain('d-i netcfg/get_hostname string devbox\n');
    expect(r.body).toContain(`http://10.0.2.2:${s.port}/installs.d/dev.sh`);
    const m = await raw('/meta-data');
    expect(m.body).toBe('instance-id: pim-dev\nlocal-hostname: devbox\n');
    expect((await raw('/user-data')).body).toMatch(/^#cloud-config\n/);
    expect((await raw('/vendor-data')).status).toBe(200);
    expect((await raw('/preseed.cfg?x=1')).status).toBe(200);
  });
  it('serves installs.d and scripts.d, with fallback to default', async () => {
    expect((await raw('/installs.d/dev.sh')).body).toBe('echo dev install\n');
    expect((await raw('/scripts.d/dev.sh')).body).toBe('echo user default script\n');
    expect((await raw('/scripts.d/default.sh')).body).toBe('echo user default script\n');
    expect((await raw('/installs.d/default.sh')).body).toContain('pim: install finished');
  });
  it('HEAD has no body; other methods are 405', async () => {
    const h = await raw('/preseed.cfg', 'HEAD');
    expect(h).toEqual({ status: 200, body: '' });
    for (const m of ['POST', 'PUT', 'DELETE', 'OPTIONS']) expect((await raw('/preseed.cfg', m)).status).toBe(405);
  });
  it('a traversal corpus is all 404', async () => {
    const corpus = [
      '/../pim.yml',
      '/installs.d/../profiles.d/p.yml',
      '/installs.d/..%2fprofiles.d%2fp.yml',
      '/installs.d/%2e%2e%2fsecret.txt',
      '/installs.d/%2e%2e',
      '/installs.d/..',
      '/installs.d/.',
      '/installs.d/',
      '/installs.d',
      '/scripts.d/%252e%252e%252fsecret.txt',
      '/scripts.d/..%5csecret.txt',
      '/scripts.d/link.sh',
      '/installs.d/passwd',
      '/installs.d/%2fetc%2fpasswd',
      '//etc/passwd',
      '/etc/passwd',
      'http://127.0.0.1/etc/passwd',
      `http://127.0.0.1:${s.port}/preseed.cfg`,
      '/installs.d/dev.sh%00.txt',
      '/installs.d/%ff',
      '/installs.d/.hidden',
      '/preseeds.d/broken.cfg',
      '/profiles.d/p.yml',
      '/pim.yml',
      '/secret.txt',
      '/preseed.cfg/..',
      '/./preseed.cfg',
      '/installs.d//dev.sh',
      '/scripts.d/dev.sh/',
      '*',
    ];
    for (const t of corpus) {
      const r = await raw(t);
      expect([t, r.status]).toEqual([t, 404]);
      expect(r.body).not.toContain('SECRET');
      expect(r.body).not.toContain('root:');
    }
  });
  it('answers concurrent requests', async () => {
    const rs = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        fetch(`http://127.0.0.1:${s.port}/${i % 2 ? 'preseed.cfg' : 'installs.d/dev.sh'}`).then(async (r) => [
          r.status,
          (await r.text()).length,
        ]),
      ),
    );
    expect(new Set(rs.map((r) => r[0]))).toEqual(new Set([200]));
    expect(new Set(rs.filter((_, i) => i % 2).map((r) => r[1])).size).toBe(1);
  });
  it('a template that fails to render is a 500 and a log line, nothing half-rendered', async () => {
    const b = await startServer({ profile: 'broken', port: 0, bind: '127.0.0.1', log: (l) => logs.push(l) });
    try {
      const r = await fetch(`${b.url}/preseed.cfg`);
      expect(r.status).toBe(500);
      const text = await r.text();
      expect(text).not.toContain('ok line');
      expect(logs.at(-1)).toMatch(/500 .*broken\.cfg:2: template error/);
    } finally {
      await b.close();
    }
  });
  it('a busy port is exit 75; an unknown profile 66', async () => {
    await expect(startServer({ profile: 'dev', port: s.port, bind: '127.0.0.1' })).rejects.toMatchObject({ code: 75 });
    await expect(startServer({ profile: 'nope', port: 0, bind: '127.0.0.1' })).rejects.toMatchObject({ code: 66 });
  });
  it('logs one line per request', () => {
    expect(logs.some((l) => /^127\.0\.0\.1 GET "\/preseed\.cfg" 200 \d+ [\d.]+ms/.test(l))).toBe(true);
  });
  it('HEAD and POST are reported to onRequest beside the log line', async () => {
    const seen: RequestRecord[] = [];
    const b = await startServer({
      profile: 'dev',
      port: 0,
      bind: '127.0.0.1',
      log: () => undefined,
      onRequest: (r) => seen.push(r),
    });
    try {
      const get = await fetch(`${b.url}/meta-data?x=1`);
      const text = await get.text();
      await fetch(`${b.url}/meta-data`, { method: 'HEAD' });
      await fetch(`${b.url}/meta-data`, { method: 'POST', body: 'x' });
      await fetch(`${b.url}/nope`);
      expect(seen).toEqual([
        { method: 'GET', path: '/meta-data?x=1', status: 200, bytes: Buffer.byteLength(text), remote: '127.0.0.1' },
        { method: 'HEAD', path: '/meta-data', status: 200, bytes: 0, remote: '127.0.0.1' },
        { method: 'POST', path: '/meta-data', status: 405, bytes: 'only GET and HEAD\n'.length, remote: '127.0.0.1' },
        { method: 'GET', path: '/nope', status: 404, bytes: 'not found\n'.length, remote: '127.0.0.1' },
      ]);
    } finally {
      await b.close();
    }
  });
  it('serves a profile object a build resolved, with its own key added before anything renders', async () => {
    const p = await loadProfile('dev');
    const key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildKeyOnlyForThisBuild pim-build';
    const mine = { ...p, value: { ...p.value, ssh_keys: [...(p.value.ssh_keys as string[]), key] } };
    const b = await startServer({ profile: mine, port: 0, bind: '127.0.0.1', log: () => undefined });
    try {
      const ud = await (await fetch(`${b.url}/user-data`)).text();
      expect(ud).toContain(JSON.stringify([key]));
      expect(ud).toContain('hostname: devbox');
      // the profile on disk is untouched
      expect((await loadProfile('dev')).value.ssh_keys).toEqual([]);
    } finally {
      await b.close();
    }
  });
  it('renderAnswer gives what the server sends, without a server', async () => {
    const p = await loadProfile('dev');
    for (const route of ['/preseed.cfg', '/user-data', '/meta-data'] as const) {
      const a = renderAnswer(route, p, `http://10.0.2.2:${s.port}`);
      expect(a).not.toBeNull();
      expect(a!.body).toBe((await raw(route, 'GET', `10.0.2.2:${s.port}`)).body);
    }
    expect(renderAnswer('/preseed.cfg', p, 'http://h')!.label).toBe('builtin:preseeds.d/default.cfg.eta');
    // no template: null (the server's 404); a broken one: 78 with FILE:LINE (the server's 500)
    expect(
      renderAnswer('/preseed.cfg', { name: 'x', value: { ...p.value, preseed: 'missing.cfg' } }, 'http://h'),
    ).toBeNull();
    const broken = await loadProfile('broken');
    expect(() => renderAnswer('/preseed.cfg', broken, 'http://h')).toThrow(
      expect.objectContaining({
        code: 78,
        message: expect.stringMatching(/^preseeds\.d\/broken\.cfg:2: template error/),
      }),
    );
  });
});
