/**
 * A small client of the OCI distribution spec (the registry HTTP API v2), in
 * this one file: what pim needs to push and pull one image. It speaks
 * HTTP/1.1 through node:https and node:http with one keep-alive agent:
 * loading undici (1.4 MB bundled) cost 0.4-0.8 s of a no-op push's 1 s
 * budget on a busy machine, and a big upload is one streamed request body
 * either way.
 *
 *   ping        GET /v2/: which scheme (https; with insecure: an unverified
 *               certificate, or plain http when the port speaks no TLS), and
 *               the auth challenge
 *   auth        Basic (credentials on every request) or Bearer (the
 *               WWW-Authenticate challenge's realm asked for a token for
 *               `repository:REPO:pull[,push]`, with the credentials if any)
 *   blobs       HEAD (is it there), GET (a stream), upload: POST a session,
 *               PATCH chunks with Content-Range, PUT ?digest= to close it;
 *               the registry's Docker-Content-Digest is checked against pim's
 *   manifests   HEAD, GET (digest checked), PUT by tag
 *   tags        GET /v2/REPO/tags/list
 *
 * Errors: 77 credentials missing or refused, 66 no such repository, tag or
 * blob, 69 the registry cannot be reached or answers 5xx (or its certificate
 * is not trusted), 65 a digest that does not match.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { findCreds, type Creds } from './creds.ts';
import { formatRef, type OciRef } from './ref.ts';

export const MT = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

export const sha256of = (b: string | Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A request body: bytes, a stream, or a function that writes to the request (and resolves when it has). */
type Body = string | Buffer | Readable | AsyncIterable<Uint8Array> | ((w: http.ClientRequest) => Promise<void>);
/** A response's body: read whole, thrown away, or taken as a stream. */
export class ResBody {
  readonly stream: http.IncomingMessage;
  constructor(stream: http.IncomingMessage) {
    this.stream = stream;
  }
  /** Read the body to its end: then (and only then) its keep-alive socket is free for the next request. */
  async dump(): Promise<void> {
    this.stream.resume();
    // `complete` (the parser has it all) comes before 'end', on which node's agent frees the
    // socket: a request sent between the two opened a connection of its own
    if (!this.stream.readableEnded && !this.stream.destroyed)
      await new Promise<void>((r) =>
        this.stream
          .once('end', r)
          .once('close', r)
          .once('error', () => r()),
      );
  }
  async buffer(max = 16 << 20): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const b of this.stream as AsyncIterable<Buffer>) {
      n += b.length;
      if (n > max) {
        this.stream.destroy();
        throw new PimError(EXIT.DATAERR, `an answer of the registry is over ${max} bytes`);
      }
      parts.push(b);
    }
    return Buffer.concat(parts);
  }
  async text(): Promise<string> {
    return (await this.buffer()).toString('utf8');
  }
  async json(): Promise<unknown> {
    return JSON.parse(await this.text());
  }
}

/** A blob to upload in chunks (see uploadBlob). */
export interface Upload {
  size: number;
  chunk: number;
  /** the Location of an upload a push before this one left, to resume */
  resume?: string | null;
  /** hash the first n bytes (the registry has them) without sending them */
  skip(n: number): Promise<void>;
  /** write the next n bytes to a request body */
  send(w: http.ClientRequest, n: number): Promise<void>;
  digest(): string | Promise<string>;
  /** the session after each chunk the registry took (null: the blob is in) */
  saved?(location: string | null, offset: number): void;
  /** stop after the chunk in flight (the session is kept), throwing the signal's reason */
  stop?: AbortSignal;
  /** abort the chunk in flight too */
  hard?: AbortSignal;
  /** progress worth a line on stderr */
  say?(s: string): void;
}

export interface Res {
  status: number;
  headers: Record<string, string>;
  body: ResBody;
}

interface Opts {
  insecure?: boolean;
  credsEnv?: string | null;
  /** "push" asks for pull,push tokens */
  push?: boolean;
  signal?: AbortSignal;
  /** who is talking, for messages: the target's or the cache's name */
  label?: string;
}

const header = (h: http.IncomingHttpHeaders, k: string): string => {
  const v = h[k];
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
};

/** `Bearer realm="..",service=".."` -> {scheme, params} */
export function parseChallenge(s: string): { scheme: string; params: Record<string, string> } {
  const m = /^\s*(\S+)\s*(.*)$/.exec(s);
  const params: Record<string, string> = {};
  for (const p of (m?.[2] ?? '').matchAll(/([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))/g))
    params[p[1]!.toLowerCase()] = p[2] ?? p[3] ?? '';
  return { scheme: (m?.[1] ?? '').toLowerCase(), params };
}

export class OciClient {
  private base: string | null = null;
  private authz: string | null = null;
  private creds: Creds | null | undefined = undefined;
  private agents: { http?: http.Agent; https?: https.Agent } = {};
  private readonly scope: string;
  readonly name: string;

  readonly ref: OciRef;
  private readonly o: Opts;
  constructor(ref: OciRef, o: Opts = {}) {
    this.ref = ref;
    this.o = o;
    this.scope = `repository:${ref.repo}:${o.push ? 'pull,push' : 'pull'}`;
    this.name = o.label ? `${o.label}: ${ref.registry}` : ref.registry;
  }

  private agentFor(tls: boolean): http.Agent {
    if (tls)
      return (this.agents.https ??= new https.Agent({
        keepAlive: true,
        rejectUnauthorized: !this.o.insecure,
        maxCachedSessions: 10,
      }));
    return (this.agents.http ??= new http.Agent({ keepAlive: true }));
  }

  async close(): Promise<void> {
    this.agents.http?.destroy();
    this.agents.https?.destroy();
  }

  private async getCreds(): Promise<Creds | null> {
    if (this.creds === undefined) this.creds = await findCreds(this.ref.registry, this.o.credsEnv);
    return this.creds;
  }

  /** One HTTP exchange, no auth logic; network failures are 69 with what to do. */
  private async raw(
    method: string,
    url: string,
    headers: Record<string, string>,
    body?: Body,
    signal: AbortSignal | undefined = this.o.signal,
  ): Promise<Res> {
    log.debug(`${method} ${url}`);
    const u = new URL(url);
    const tls = u.protocol === 'https:';
    try {
      const m = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const r = (tls ? https : http).request(u, { method, headers, agent: this.agentFor(tls), signal }, resolve);
        r.on('error', reject);
        // no answer and no byte moving for 5 minutes: the registry is gone
        r.setTimeout(300_000, () => r.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
        if (body === undefined) r.end();
        else if (typeof body === 'string' || Buffer.isBuffer(body)) r.end(body);
        else if (typeof body === 'function')
          body(r).then(
            () => r.end(),
            (e) => r.destroy(e as Error),
          );
        else pipeline(body instanceof Readable ? body : Readable.from(body), r).catch((e) => r.destroy(e as Error));
      });
      const h: Record<string, string> = {};
      for (const k of Object.keys(m.headers)) h[k.toLowerCase()] = header(m.headers, k);
      return { status: m.statusCode ?? 0, headers: h, body: new ResBody(m) };
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof PimError) throw e;
      throw this.netError(e);
    }
  }

  private netError(e: unknown): PimError {
    const err = e as Error & { code?: string; cause?: { code?: string; message?: string } };
    const code = err.cause?.code ?? err.code ?? '';
    if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME/.test(code)) {
      return new PimError(
        EXIT.UNAVAILABLE,
        `${this.name}: its certificate is not trusted (${code}): add its CA to the system's, or for a loopback or lab registry set insecure: true (pim-build pull --insecure)`,
      );
    }
    return new PimError(
      EXIT.UNAVAILABLE,
      `${this.name}: cannot reach the registry (${code || err.cause?.message || err.message}); check the ref and that it runs`,
    );
  }

  /** The API's base URL and its answer to GET /v2/ (the auth challenge), found once. */
  private pinged: Promise<{ base: string; r: Res }> | null = null;
  /** The base URL with the challenge answered (credentials, a token), once; requests sent at once share it. */
  private authed: Promise<string> | null = null;
  private endpoint(): Promise<string> {
    this.authed ??= this.authorize();
    return this.authed;
  }

  /**
   * Start the ping (the scheme, the connection, the challenge) now, ahead of
   * the first request; its failure is that request's. Credentials are not
   * looked up until a request needs them: a credential helper is not asked
   * (nor may prompt) for a ping whose answer no one uses.
   */
  warm(): void {
    this.pinged ??= this.ping();
    this.pinged.catch(() => undefined);
  }

  private async authorize(): Promise<string> {
    this.pinged ??= this.ping();
    const { base, r } = await this.pinged;
    if (r.status === 401) await this.answerChallenge(r.headers['www-authenticate'] ?? '');
    return base;
  }

  /** GET /v2/: https, or (insecure only) http when the port speaks no TLS. */
  private async ping(): Promise<{ base: string; r: Res }> {
    const tryPing = async (base: string) => {
      const r = await this.raw('GET', `${base}/v2/`, {});
      await r.body.dump();
      return r;
    };
    let base = `https://${this.ref.host}`;
    let r: Res;
    try {
      r = await tryPing(base);
    } catch (e) {
      const cause = (e as PimError).message ?? '';
      if (!this.o.insecure || !/EPROTO|SSL|ECONNRESET|WRONG_VERSION|socket hang up/i.test(cause)) throw e;
      base = `http://${this.ref.host}`;
      r = await tryPing(base);
    }
    this.base = base;
    if (r.status !== 401 && r.status >= 400 && r.status !== 404)
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${this.name}: GET /v2/ answered HTTP ${r.status}: is this a registry (the OCI distribution API)?`,
      );
    return { base, r };
  }

  /** Set the Authorization header for a 401's challenge: Basic (credentials) or Bearer (a token from the realm). */
  private async answerChallenge(challenge: string): Promise<void> {
    const { scheme, params } = parseChallenge(challenge);
    const creds = await this.getCreds();
    const basic = creds ? `Basic ${Buffer.from(`${creds.user}:${creds.password}`).toString('base64')}` : null;
    if (scheme === 'basic') {
      if (!basic)
        throw new PimError(
          EXIT.NOPERM,
          `${this.name} asks for credentials: log in with docker login / skopeo login (~/.docker/config.json), or name an environment variable holding USER:PASSWORD in creds_env`,
        );
      this.authz = basic;
      return;
    }
    if (scheme !== 'bearer' || !params.realm)
      throw new PimError(
        EXIT.NOPERM,
        `${this.name} asks for an authentication pim does not speak (${scheme || 'none named'})`,
      );
    let realm: URL;
    try {
      realm = new URL(params.realm);
    } catch {
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${this.name}: its token realm ${JSON.stringify(params.realm)} is not a URL`,
      );
    }
    if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && this.o.insecure))
      throw new PimError(
        EXIT.NOPERM,
        `${this.name}: its token realm ${realm.origin} is not https; pim sends no credentials there (insecure: true allows it for a lab registry)`,
      );
    if (params.service) realm.searchParams.set('service', params.service);
    realm.searchParams.set('scope', this.scope);
    const r = await this.raw('GET', realm.toString(), basic ? { authorization: basic } : {});
    const text = await r.body.text();
    if (r.status === 401 || r.status === 403) throw this.refused(creds);
    if (r.status !== 200)
      throw new PimError(EXIT.UNAVAILABLE, `${this.name}: its token service ${realm.origin} answered HTTP ${r.status}`);
    let tok: string | undefined;
    try {
      const j = JSON.parse(text) as { token?: string; access_token?: string };
      tok = j.token || j.access_token;
    } catch {
      /* below */
    }
    if (!tok)
      throw new PimError(EXIT.UNAVAILABLE, `${this.name}: its token service ${realm.origin} answered without a token`);
    this.authz = `Bearer ${tok}`;
  }

  private refused(creds: Creds | null): PimError {
    return new PimError(
      EXIT.NOPERM,
      creds
        ? `${this.name} refused the credentials from ${creds.from} for ${this.ref.repo} (${this.o.push ? 'push' : 'pull'}): check the user, the password and their rights`
        : `${this.name} asks for credentials for ${this.ref.repo}: log in (~/.docker/config.json) or name an environment variable holding USER:PASSWORD in creds_env`,
    );
  }

  /**
   * A request to the API at `path` (or an absolute URL the registry gave, a
   * Location), with auth: on a 401 the challenge is answered and the request
   * sent once more (`body` is a function, so a stream can be made again).
   */
  async req(
    method: string,
    path: string,
    o: { headers?: Record<string, string>; body?: () => Body; signal?: AbortSignal } = {},
  ): Promise<Res> {
    const base = await this.endpoint();
    const url = /^https?:\/\//.test(path) ? path : new URL(path, base + '/').toString();
    if (!url.startsWith(base + '/'))
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${this.name} sent pim to another host (${new URL(url).origin}); refusing to follow`,
      );
    const send = () =>
      this.raw(
        method,
        url,
        { ...(this.authz ? { authorization: this.authz } : {}), ...o.headers },
        o.body?.(),
        'signal' in o ? o.signal : this.o.signal,
      );
    let r = await send();
    if (r.status === 401) {
      await r.body.dump();
      const had = this.authz;
      await this.answerChallenge(r.headers['www-authenticate'] ?? '');
      if (had === this.authz && had?.startsWith('Basic')) throw this.refused(this.creds ?? null);
      r = await send();
      if (r.status === 401) {
        await r.body.dump();
        throw this.refused(this.creds ?? null);
      }
    }
    return r;
  }

  /** A failed answer as a PimError: the registry's error code decides the exit code. */
  async fail(r: Res, what: string): Promise<PimError> {
    const text = await r.body.text().catch(() => '');
    let code = '';
    let msg = '';
    try {
      const e = (JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> }).errors?.[0];
      code = e?.code ?? '';
      msg = e?.message ?? '';
    } catch {
      /* a proxy's HTML page */
    }
    const detail = `HTTP ${r.status}${code ? ` ${code}` : ''}${msg ? `: ${msg}` : ''}`;
    if (r.status === 401 || r.status === 403 || code === 'DENIED' || code === 'UNAUTHORIZED')
      return new PimError(
        EXIT.NOPERM,
        `${this.name}: ${what}: permission denied (${detail}); check the credentials' rights on ${this.ref.repo}`,
      );
    if (r.status === 404 || /_UNKNOWN$/.test(code))
      return new PimError(EXIT.NOINPUT, `${this.name}: ${what}: not found (${detail})`);
    if (code === 'DIGEST_INVALID' || code === 'SIZE_INVALID')
      return new PimError(
        EXIT.DATAERR,
        `${this.name}: ${what}: the registry found the data does not match its digest (${detail})`,
      );
    return new PimError(EXIT.UNAVAILABLE, `${this.name}: ${what}: ${detail}`);
  }

  private repoPath = (kind: string, ref: string) => `v2/${this.ref.repo}/${kind}/${ref}`;

  /** HEAD a blob: its size, or null when the registry does not have it. */
  async hasBlob(digest: string): Promise<number | null> {
    const r = await this.req('HEAD', this.repoPath('blobs', digest));
    await r.body.dump();
    if (r.status === 200) return Number(r.headers['content-length'] ?? -1);
    if (r.status === 404) return null;
    throw await this.fail(r, `HEAD blob ${digest}`);
  }

  /** GET a blob's bytes (redirects to a storage backend followed without our credentials). */
  async getBlob(digest: string): Promise<Res> {
    let r = await this.req('GET', this.repoPath('blobs', digest));
    for (let hops = 0; r.status >= 301 && r.status <= 308 && r.headers.location && hops < 5; hops++) {
      await r.body.dump();
      // a storage backend's signed URL: followed without pim's credentials
      r = await this.raw('GET', new URL(r.headers.location, this.base! + '/').toString(), {});
    }
    if (r.status !== 200) throw await this.fail(r, `blob ${digest}`);
    return r;
  }

  /**
   * Upload a blob in chunks: each one PATCH with Content-Length and
   * Content-Range, whose answer's Range must end where pim's chunk did, then
   * PUT ?digest= (read only at the end, so the bytes are hashed as they go);
   * the registry's digest must be pim's.
   *
   * Resuming: `resume` is the Location of an upload a push before this one
   * left. pim asks it for its status (GET: 204 and Range 0-END), hashes the
   * END+1 bytes the registry has without sending them, and goes on from
   * there. A session the registry no longer knows, or refuses (the CNCF
   * registry cancels one whose last chunk was cut off part-way: its size is
   * not the one its state was signed with), is left and a new upload
   * started. `saved` hears the session after each chunk the registry took,
   * and null once the blob is in. A failed upload keeps its session (the
   * next push resumes it) unless its bytes were wrong.
   */
  async uploadBlob(u: Upload): Promise<{ resumedAt: number }> {
    const base = await this.endpoint();
    let location = '';
    let offset = 0;
    if (u.resume?.startsWith(base + '/')) {
      const r = await this.req('GET', u.resume);
      await r.body.dump();
      const end = /^(?:bytes=)?0-(\d+)$/.exec(r.headers.range ?? '');
      const at = end ? Number(end[1]) + 1 : 0;
      // "0-0" is 0 or 1 byte: not resumed
      if (r.status === 204 && at > 1 && at <= u.size) {
        await u.skip(at);
        location = new URL(r.headers.location || u.resume, base + '/').toString();
        offset = at;
        u.say?.(`resuming the upload a push before this one left: the registry has ${at} of ${u.size} bytes`);
      } else
        u.say?.(
          `the upload a push before this one left cannot be resumed (HTTP ${r.status}${r.headers.range ? `, Range ${r.headers.range}` : ''}): starting a new one`,
        );
    }
    const resumedAt = offset;
    if (!location) {
      location = await this.startUpload();
      u.saved?.(location, 0);
    }
    try {
      while (offset < u.size) {
        if (u.stop?.aborted) throw u.stop.reason;
        const length = Math.min(u.chunk, u.size - offset);
        const range = `${offset}-${offset + length - 1}`;
        let made = false;
        const r = await this.req('PATCH', location, {
          headers: {
            'content-type': 'application/octet-stream',
            'content-length': String(length),
            'content-range': range,
          },
          body: () => {
            // a chunk's bytes are read once, from the one pass over the layer
            if (made)
              throw new PimError(
                EXIT.UNAVAILABLE,
                `${this.name} asked for a chunk again (its credentials expired mid-upload); push again to resume`,
              );
            made = true;
            return (w) => u.send(w, length);
          },
          signal: u.hard,
        });
        await r.body.dump();
        if (r.status !== 202 || !r.headers.location) throw await this.fail(r, `uploading bytes ${range}`);
        const end = /^(?:bytes=)?0-(\d+)$/.exec(r.headers.range ?? '');
        if (end && Number(end[1]) !== offset + length - 1)
          throw new PimError(
            EXIT.UNAVAILABLE,
            `${this.name} has bytes 0-${end[1]} of the upload after pim sent ${range}; push again`,
          );
        location = new URL(r.headers.location, base + '/').toString();
        offset += length;
        u.saved?.(location, offset);
      }
      const want = await u.digest();
      const url = new URL(location);
      url.searchParams.set('digest', want);
      const r = await this.req('PUT', url.toString(), { headers: { 'content-length': '0' } });
      await r.body.dump();
      if (r.status !== 201) throw await this.fail(r, `closing the upload of ${want}`);
      const got = r.headers['docker-content-digest'];
      if (got && got !== want)
        throw new PimError(EXIT.DATAERR, `${this.name}: the registry stored ${got} for pim's ${want}`);
      u.saved?.(null, u.size);
      return { resumedAt };
    } catch (e) {
      // wrong bytes: the session is cancelled (best effort) and forgotten; otherwise kept to resume
      if (e instanceof PimError && e.code === EXIT.DATAERR) {
        u.saved?.(null, 0);
        await this.cancelUpload(location);
      }
      throw e;
    }
  }

  /** POST a new upload session: its Location, as an absolute URL. */
  async startUpload(): Promise<string> {
    const base = await this.endpoint();
    const r0 = await this.req('POST', `v2/${this.ref.repo}/blobs/uploads/`, { headers: { 'content-length': '0' } });
    await r0.body.dump();
    if (r0.status !== 202 || !r0.headers.location) throw await this.fail(r0, 'starting an upload');
    return new URL(r0.headers.location, base + '/').toString();
  }

  /** Cancel an upload session (best effort: the registry expires it anyway). */
  async cancelUpload(location: string): Promise<void> {
    await this.req('DELETE', location, { signal: undefined })
      .then(
        (r) => r.body.dump(),
        () => undefined,
      )
      .catch(() => undefined);
  }

  /**
   * A small blob (the config): PUT its bytes with the digest into a session,
   * `session` (one started while the layer went up) or a new one.
   */
  async putSmallBlob(data: Buffer, session?: Promise<string>): Promise<string> {
    const digest = sha256of(data);
    const u = new URL(await (session ?? this.startUpload()));
    u.searchParams.set('digest', digest);
    const r = await this.req('PUT', u.toString(), {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(data.length) },
      body: () => data,
    });
    await r.body.dump();
    if (r.status !== 201) throw await this.fail(r, `uploading ${digest}`);
    const got = r.headers['docker-content-digest'];
    if (got && got !== digest)
      throw new PimError(EXIT.DATAERR, `${this.name}: the registry stored ${got} for pim's ${digest}`);
    return digest;
  }

  /** The digest the registry has for a tag, or null. */
  async manifestDigest(tag: string): Promise<string | null> {
    const r = await this.req('HEAD', this.repoPath('manifests', tag), {
      headers: { accept: [MT.manifest, MT.dockerManifest, MT.index, MT.dockerList].join(', ') },
    });
    await r.body.dump();
    if (r.status === 404) return null;
    if (r.status !== 200) throw await this.fail(r, `HEAD ${formatRef(this.ref, tag)}`);
    return r.headers['docker-content-digest'] || null;
  }

  /** PUT a manifest under a tag; the registry's digest must be ours. */
  async putManifest(tag: string, body: Buffer, mediaType: string): Promise<string> {
    const digest = sha256of(body);
    const r = await this.req('PUT', this.repoPath('manifests', tag), {
      headers: { 'content-type': mediaType, 'content-length': String(body.length) },
      body: () => body,
    });
    await r.body.dump();
    if (r.status !== 201) throw await this.fail(r, `tagging ${formatRef(this.ref, tag)}`);
    const got = r.headers['docker-content-digest'];
    if (got && got !== digest)
      throw new PimError(EXIT.DATAERR, `${this.name}: the registry stored the manifest as ${got}, pim made ${digest}`);
    return digest;
  }

  /** GET a manifest by tag or digest: its bytes (digest checked), media type and digest. */
  async getManifest(ref: string): Promise<{ body: Buffer; mediaType: string; digest: string }> {
    const r = await this.req('GET', this.repoPath('manifests', ref), {
      headers: { accept: [MT.manifest, MT.dockerManifest, MT.index, MT.dockerList].join(', ') },
    });
    if (r.status !== 200) throw await this.fail(r, formatRef(this.ref, ref));
    const body = await r.body.buffer(4 << 20);
    const digest = sha256of(body);
    const said = r.headers['docker-content-digest'];
    if (ref.startsWith('sha256:') && ref !== digest)
      throw new PimError(EXIT.DATAERR, `${this.name}: the manifest ${ref} hashes to ${digest}`);
    if (said && said !== digest)
      throw new PimError(
        EXIT.DATAERR,
        `${this.name}: the manifest of ${formatRef(this.ref, ref)} hashes to ${digest}, the registry says ${said}`,
      );
    return { body, mediaType: (r.headers['content-type'] ?? '').split(';')[0]!.trim(), digest };
  }

  /** The repository's tags (66 when the repository does not exist). */
  async tags(): Promise<string[]> {
    const out: string[] = [];
    let path: string | null = `v2/${this.ref.repo}/tags/list?n=1000`;
    for (let i = 0; path && i < 100; i++) {
      const r = await this.req('GET', path);
      if (r.status !== 200) throw await this.fail(r, `the tags of ${formatRef(this.ref)}`);
      const j = (await r.body.json()) as { tags?: string[] | null };
      out.push(...(j.tags ?? []));
      const next = /<([^>]+)>;\s*rel="?next"?/.exec(r.headers.link ?? '')?.[1];
      path = next ? next.replace(/^\//, '') : null;
    }
    return out;
  }
}
