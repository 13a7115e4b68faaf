/**
 * The preseed server: a Node HTTP server for one profile. A library call
 * (startServer) so a build can run it in-process; cmds/pim-serve.ts runs it
 * from the shell. It answers GET and HEAD only:
 *
 *   /preseed.cfg          preseeds.d/PROFILE.cfg.*   (Debian preseed, rendered)
 *   /user-data            preseeds.d/PROFILE.user-data.*  (Ubuntu autoinstall, nocloud-net)
 *   /meta-data            preseeds.d/PROFILE.meta-data.*
 *   /network-config       preseeds.d/PROFILE.network-config.* (built in: an empty
 *                         document, cloud-init's own fallback; cloud-init 24.3+
 *                         asks, and retries ten times on a 404)
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
 * only sent once it is fully rendered. Methods other than GET and HEAD are
 * 405 (with Allow: GET, HEAD).
 *
 * renderAnswer renders one answer file without a server (the same templates
 * and fallbacks), e.g. for a build's cache key.
 */
import * as http from 'node:http';
import * as fs from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import { loadProfile, profileFile, namedFile, readFound, withEnvHook, type FoundFile } from '../config/profile.ts';
import { subdir, type Subdir } from '../config/tree.ts';
import type { Origins, Plain } from '../config/merge.ts';
import { DEFAULT_FILES } from '../config/defaults.ts';
import { renderFile, type Target } from './template.ts';

/** A profile as served: merged over `default` (loadProfile's Resolved has this shape). */
export interface ServeProfile {
  name: string;
  value: Plain;
  origins?: Origins;
}

/** One request, as the server answered it. */
export interface RequestRecord {
  method: string;
  /** the request target as received (path and query) */
  path: string;
  status: number;
  /** body bytes sent (0 for HEAD) */
  bytes: number;
  /** the client's address */
  remote: string;
}

export interface ServeOpts {
  /**
   * A profile name (loaded, merged and checked here), or a profile already
   * resolved: a build passes its own, with its per-build key added to
   * value.ssh_keys, before any template renders.
   */
  profile: string | ServeProfile;
  /** 0 picks a free port */
  port: number;
  bind: string;
  /** one line per request (default: stderr) */
  log?: (line: string) => void;
  /** called once per request, beside the log line */
  onRequest?: (r: RequestRecord) => void;
}

export interface Served {
  url: string;
  /** the profile served (merged, as the templates see it) */
  profile: ServeProfile;
  port: number;
  bind: string;
  close(): Promise<void>;
}

export type AnswerRoute = '/preseed.cfg' | '/user-data' | '/meta-data' | '/network-config';

const TEMPLATES: Record<AnswerRoute, { suffix: string; key: string }> = {
  '/preseed.cfg': { suffix: '.cfg', key: 'preseed' },
  '/user-data': { suffix: '.user-data', key: 'user_data' },
  '/meta-data': { suffix: '.meta-data', key: '' },
  '/network-config': { suffix: '.network-config', key: '' },
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
    if (f.path === null)
      return {
        status: 200,
        body: DEFAULT_FILES[`${dir}/${c}`]!,
        type: 'text/x-shellscript; charset=utf-8',
        note: f.label,
      };
    const real = inside(subdir(dir), f.path);
    if (!real) return notFound();
    return {
      status: 200,
      body: fs.readFileSync(real),
      type: c.endsWith('.sh') ? 'text/x-shellscript; charset=utf-8' : 'application/octet-stream',
      note: f.label,
    };
  }
  return notFound();
}

/** The template for an answer route: the profile's override key, else preseeds.d/PROFILE.SUFFIX.*, else default's, else built-in. */
function templateFor(route: AnswerRoute, p: ServeProfile): FoundFile | null {
  const t = TEMPLATES[route];
  const override = t.key ? p.value[t.key] : undefined;
  if (typeof override === 'string') return namedFile('preseeds.d', override);
  return profileFile('preseeds.d', p.name, t.suffix, true);
}

/**
 * Render one answer file for `profile` as the server would for a client that
 * reached it at `url`. Null where the server answers 404 (no template, or a
 * template that is a symlink leaving preseeds.d); a template that fails to
 * render throws a config error (exit 78, FILE:LINE) where the server answers 500.
 * `target` tells the template what it is rendered for (pim-ventoy: "ventoy").
 */
export function renderAnswer(
  route: AnswerRoute,
  profile: ServeProfile,
  url: string,
  target: Target = 'vm',
): { body: string; label: string } | null {
  const f = templateFor(route, profile);
  if (!f) return null;
  if (f.path !== null && !inside(subdir('preseeds.d'), f.path)) return null;
  const body = renderFile(f.path, f.path === null ? readFound(f) : undefined, f.label, {
    profile: profile.value,
    name: profile.name,
    url,
    target,
  });
  return { body, label: f.label };
}

const isRoute = (p: string): p is AnswerRoute => Object.hasOwn(TEMPLATES, p);

export async function startServer(opts: ServeOpts): Promise<Served> {
  const p: ServeProfile =
    typeof opts.profile === 'string' ? await withEnvHook(await loadProfile(opts.profile)) : opts.profile;
  const logLine = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  let defaultUrl = '';

  const answer = (req: http.IncomingMessage): Answer => {
    const target = req.url ?? '';
    if (!target.startsWith('/')) return notFound(); // absolute-form or asterisk-form
    const path = target.split('?')[0]!;
    if (isRoute(path)) {
      const host = req.headers.host;
      const url = host && HOST_RE.test(host) ? `http://${host}` : defaultUrl;
      try {
        const a = renderAnswer(path, p, url);
        if (!a) return notFound();
        return { status: 200, body: a.body, type: 'text/plain; charset=utf-8', note: a.label };
      } catch (e) {
        return {
          status: 500,
          body: 'template error: see the server log\n',
          note: e instanceof PimError ? e.message : String(e),
        };
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
    res.writeHead(a.status, {
      'Content-Type': a.type ?? 'text/plain; charset=utf-8',
      'Content-Length': body.length,
      'Cache-Control': 'no-store',
    });
    const bytes = req.method === 'HEAD' ? 0 : body.length;
    res.end(req.method === 'HEAD' ? undefined : body);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const remote = req.socket.remoteAddress ?? '-';
    logLine(
      `${remote} ${req.method} ${JSON.stringify(req.url ?? '')} ${a.status} ${bytes} ${ms.toFixed(2)}ms${a.note ? ' ' + a.note : ''}`,
    );
    try {
      opts.onRequest?.({ method: req.method ?? '', path: req.url ?? '', status: a.status, bytes, remote });
    } catch (e) {
      logLine(`onRequest failed: ${(e as Error).message}`); // a listener's error must not take the server down
    }
  });
  server.keepAliveTimeout = 5000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const where = `${opts.bind}:${opts.port}`;
      if (e.code === 'EADDRINUSE')
        reject(
          new PimError(
            EXIT.TEMPFAIL,
            `port ${opts.port} on ${opts.bind} is in use; pick another with --port (or stop what uses it)`,
          ),
        );
      else if (e.code === 'EACCES')
        reject(new PimError(EXIT.NOPERM, `not allowed to listen on ${where}; use a port above 1023`));
      else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
        reject(new PimError(EXIT.USAGE, `cannot listen on ${opts.bind}: not an address of this machine; see --bind`));
      else reject(new PimError(EXIT.UNAVAILABLE, `cannot listen on ${where}: ${e.message}`));
    });
    server.listen(opts.port, opts.bind, () => resolve());
  });
  const addr = server.address() as { port: number; address: string };
  const host = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  defaultUrl = `http://${host}:${addr.port}`;
  return {
    url: defaultUrl,
    profile: p,
    port: addr.port,
    bind: addr.address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
