/**
 * The preseed server: a Node HTTP server for one profile. A library call
 * (startServer) so a build can run it in-process; cmds/pim-serve.ts runs it
 * from the shell. It answers GET and HEAD only:
 *
 *   /preseed.cfg          preseeds.d/PROFILE.cfg.*   (Debian preseed, rendered)
 *   /user-data            preseeds.d/PROFILE.user-data.*  (Ubuntu autoinstall, nocloud-net)
 *   /meta-data            preseeds.d/PROFILE.meta-data.*
 *   /vendor-data          empty (cloud-init asks for it)
 *   /installs.d/FILE      late-command scripts, as they are
 *   /scripts.d/FILE       provisioning scripts, as they are
 *
 * Each PROFILE file falls back to the `default` one, then to pim's built-in.
 * A template sees the merged profile, its name and the server's URL as the
 * client reached it (the Host header), e.g. http://10.0.2.2:8080 from a QEMU
 * user-mode guest. Anything outside that set is 404: `..`, encoded
 * traversal, symlinks that leave the directory, absolute-form targets. A
 * template that fails to render is a 500 and a log line; a response is
 * only sent once it is fully rendered.
 */
import * as http from 'node:http';
import * as fs from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import { loadProfile, profileFile, namedFile, readFound, subdir, type FoundFile, type Subdir } from '../config/config.ts';
import { DEFAULT_FILES } from '../config/defaults.ts';
import { renderFile } from './template.ts';

export interface ServeOpts {
  profile: string;
  /** 0 picks a free port */
  port: number;
  bind: string;
  /** one line per request (default: stderr) */
  log?: (line: string) => void;
}

export interface Served {
  url: string;
  port: number;
  bind: string;
  close(): Promise<void>;
}

const TEMPLATES: Record<string, { suffix: string; key: string }> = {
  '/preseed.cfg': { suffix: '.cfg', key: 'preseed' },
  '/user-data': { suffix: '.user-data', key: 'user_data' },
  '/meta-data': { suffix: '.meta-data', key: '' },
};
const STATIC_DIRS: Record<string, Subdir> = { 'installs.d': 'installs.d', 'scripts.d': 'scripts.d' };
const FILE_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const HOST_RE = /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

interface Answer {
  status: number;
  body: string | Buffer;
  type?: string;
  note?: string;
}

const notFound = (): Answer => ({ status: 404, body: 'not found\n' });

/** Is `p` (after symlinks) inside `dir` (after symlinks)? */
function inside(dir: string, p: string): string | null {
  try {
    const root = fs.realpathSync(dir);
    const real = fs.realpathSync(p);
    if (!real.startsWith(root + '/')) return null;
    return fs.statSync(real).isFile() ? real : null;
  } catch {
    return null;
  }
}

function staticFile(dir: Subdir, raw: string, profile: string): Answer {
  let name: string;
  try {
    name = decodeURIComponent(raw);
  } catch {
    return notFound();
  }
  if (!FILE_RE.test(name) || name.includes('..')) return notFound();
  const candidates = [name];
  // files named after the profile fall back to default's
  if (name.startsWith(profile + '.') && profile !== 'default') candidates.push('default' + name.slice(profile.length));
  for (const c of candidates) {
    const f = namedFile(dir, c);
    if (!f) continue;
    if (f.path === null) return { status: 200, body: DEFAULT_FILES[`${dir}/${c}`]!, type: 'text/x-shellscript; charset=utf-8', note: f.label };
    const real = inside(subdir(dir), f.path);
    if (!real) return notFound();
    return { status: 200, body: fs.readFileSync(real), type: c.endsWith('.sh') ? 'text/x-shellscript; charset=utf-8' : 'application/octet-stream', note: f.label };
  }
  return notFound();
}

export async function startServer(opts: ServeOpts): Promise<Served> {
  const p = await loadProfile(opts.profile);
  const logLine = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  let defaultUrl = '';

  const templateFor = (route: string): FoundFile | null => {
    const t = TEMPLATES[route]!;
    const override = t.key ? p.value[t.key] : undefined;
    if (typeof override === 'string') return namedFile('preseeds.d', override);
    return profileFile('preseeds.d', p.name, t.suffix, true);
  };

  const answer = (req: http.IncomingMessage): Answer => {
    const target = req.url ?? '';
    if (!target.startsWith('/')) return notFound(); // absolute-form or asterisk-form
    const path = target.split('?')[0]!;
    if (path in TEMPLATES) {
      const f = templateFor(path);
      if (!f) return notFound();
      if (f.path !== null && !inside(subdir('preseeds.d'), f.path)) return notFound();
      const host = req.headers.host;
      const url = host && HOST_RE.test(host) ? `http://${host}` : defaultUrl;
      try {
        const body = renderFile(f.path, f.path === null ? readFound(f) : undefined, f.label, { profile: p.value, name: p.name, url });
        return { status: 200, body, type: 'text/plain; charset=utf-8', note: f.label };
      } catch (e) {
        return { status: 500, body: 'template error: see the server log\n', note: e instanceof PimError ? e.message : String(e) };
      }
    }
    if (path === '/vendor-data') return { status: 200, body: '', type: 'text/plain; charset=utf-8' };
    const m = /^\/([a-z]+\.d)\/([^/]+)$/.exec(path);
    if (m && m[1]! in STATIC_DIRS) return staticFile(STATIC_DIRS[m[1]!]!, m[2]!, p.name);
    return notFound();
  };

  const server = http.createServer((req, res) => {
    const t0 = process.hrtime.bigint();
    let a: Answer;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      a = { status: 405, body: 'only GET and HEAD\n' };
      res.setHeader('Allow', 'GET, HEAD');
    } else {
      try {
        a = answer(req);
      } catch (e) {
        a = { status: 500, body: 'internal error\n', note: (e as Error).message };
      }
    }
    const body = typeof a.body === 'string' ? Buffer.from(a.body) : a.body;
    res.writeHead(a.status, { 'Content-Type': a.type ?? 'text/plain; charset=utf-8', 'Content-Length': body.length, 'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const who = req.socket.remoteAddress ?? '-';
    logLine(`${who} ${req.method} ${JSON.stringify(req.url ?? '')} ${a.status} ${body.length} ${ms.toFixed(2)}ms${a.note ? ' ' + a.note : ''}`);
  });
  server.keepAliveTimeout = 5000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const where = `${opts.bind}:${opts.port}`;
      if (e.code === 'EADDRINUSE') reject(new PimError(EXIT.TEMPFAIL, `port ${opts.port} on ${opts.bind} is in use; pick another with --port (or stop what uses it)`));
      else if (e.code === 'EACCES') reject(new PimError(EXIT.NOPERM, `not allowed to listen on ${where}; use a port above 1023`));
      else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') reject(new PimError(EXIT.USAGE, `cannot listen on ${opts.bind}: not an address of this machine; see --bind`));
      else reject(new PimError(EXIT.UNAVAILABLE, `cannot listen on ${where}: ${e.message}`));
    });
    server.listen(opts.port, opts.bind, () => resolve());
  });
  const addr = server.address() as { port: number; address: string };
  const host = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  defaultUrl = `http://${host}:${addr.port}`;
  return {
    url: defaultUrl,
    port: addr.port,
    bind: addr.address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
