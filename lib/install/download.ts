/**
 * HTTP downloads with resume. Bytes go to a part file (mode 0600); when it
 * exists, the request carries `Range: bytes=N-`. A 206 appends; a 200 (server
 * ignored Range) starts the part file over, and says so once (onRestart); a
 * 416 whose total equals the part size means the part is already complete.
 *
 * A cut connection, and a body that stalls (no bytes for `stallMs`, default
 * 30 s or PIM_DOWNLOAD_STALL seconds), is retried from where it stopped; after
 * the retries it is exit 69 naming the URL. A full disk (ENOSPC, EDQUOT,
 * EFBIG) is not a network error: exit 73 at once, naming the directory and the
 * space still needed, the part file kept for a resume. Aborting (Ctrl-C)
 * leaves the part file too. HTTP errors and unreachable hosts are exit 69.
 */
import * as fs from 'node:fs';
import { dirname } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';

export interface Progress {
  done: number;
  /** total bytes, when the server said */
  total: number | null;
}

export interface DownloadOpts {
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** attempts after a cut connection (default 3) */
  retries?: number;
  /** per-request timeout to get response headers, ms (default 30 s) */
  timeoutMs?: number;
  /** a body that sends nothing for this long counts as cut, ms (default: PIM_DOWNLOAD_STALL seconds, else 30 s) */
  stallMs?: number;
  /** called before each retry */
  onRetry?: (attempt: number, err: Error) => void;
  /** called (once per download) when the part file starts over, with why */
  onRestart?: (why: string) => void;
}

export const isAbort = (e: unknown) =>
  (e as Error)?.name === 'AbortError' || (e as { code?: string })?.code === 'ABORT_ERR';

/** The stall timeout: the option, else PIM_DOWNLOAD_STALL (seconds), else 30 s. */
export function stallMsOf(opts: { stallMs?: number } = {}): number {
  if (opts.stallMs !== undefined) return opts.stallMs;
  const env = process.env.PIM_DOWNLOAD_STALL;
  if (env !== undefined && env !== '') {
    const s = Number(env);
    if (!Number.isFinite(s) || s <= 0)
      throw new PimError(
        EXIT.USAGE,
        `PIM_DOWNLOAD_STALL must be a positive number of seconds, not ${JSON.stringify(env)}`,
      );
    return Math.round(s * 1000);
  }
  return 30_000;
}

interface Req {
  res: Response;
  /** why the body was cut from this side (it stalled), or null */
  stalled: Error | null;
  /** cut the connection: the body's reads then fail */
  cut(why: Error): void;
}

async function request(
  url: string,
  headers: Record<string, string>,
  opts: { signal?: AbortSignal; timeoutMs?: number },
): Promise<Req> {
  // one controller for the connection: the header timeout and a stalled body both cut it
  const ms = opts.timeoutMs ?? 30_000;
  const t = new AbortController();
  const timer = setTimeout(() => t.abort(new Error(`no answer within ${Math.round(ms / 1000)} s`)), ms);
  const signal = opts.signal ? AbortSignal.any([opts.signal, t.signal]) : t.signal;
  try {
    // undici's own fetch, not Node's built-in one: Node 22's bundled undici
    // crashes the process (an uncatchable assert(!this.paused), nodejs/undici
    // #5360) when a server closes the connection while a body that pim writes
    // to disk holds back the parser; the npm package has the fix (#5474)
    const { fetch } = await import('undici');
    const res = (await fetch(url, { headers, signal, redirect: 'follow' })) as unknown as Response;
    const req: Req = {
      res,
      stalled: null,
      cut(why) {
        req.stalled = why;
        t.abort(why);
      },
    };
    return req;
  } catch (e) {
    if (opts.signal?.aborted) throw e;
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    if (t.signal.aborted)
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${url}: no answer within ${Math.round(ms / 1000)} s; check the URL or the network`,
      );
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${url}: cannot connect (${cause?.code ?? cause?.message ?? (e as Error).message}); check the URL or the network`,
    );
  } finally {
    clearTimeout(timer);
  }
}

const httpError = (url: string, res: Response) =>
  new PimError(
    EXIT.UNAVAILABLE,
    `${url}: HTTP ${res.status}${res.statusText ? ' ' + res.statusText : ''}${res.status === 404 ? '; the file is not there: fix the URL in the catalog entry' : ''}`,
  );

/** GET a small text file (a SUMS file). */
export async function fetchText(url: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<string> {
  const { res } = await request(url, {}, opts);
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(url, res);
  }
  return await res.text();
}

function partSize(part: string): number {
  try {
    return fs.statSync(part).size;
  } catch {
    return 0;
  }
}

const DISK_FULL: Record<string, string> = {
  ENOSPC: 'no space left',
  EDQUOT: 'disk quota exceeded',
  EFBIG: 'file too large for the filesystem',
};
const human = (n: number) =>
  n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} bytes`;

/** A write failed because the disk is full: exit 73 naming the directory and what is still needed. */
function diskFull(code: string, part: string, total: number | null): PimError {
  const dir = dirname(part);
  const need = total === null ? null : Math.max(0, total - partSize(part));
  return new PimError(
    EXIT.CANTCREAT,
    `${dir}: ${DISK_FULL[code]}: ${need === null ? 'the server did not say how much more is needed' : `${human(need)} more needed (${total} bytes in all)`}; free some space and run again to resume (${part} is kept)`,
  );
}

/** Write all of `chunk` (a short write is retried); `written` counts what reached the file. */
async function writeAll(fh: fs.promises.FileHandle, chunk: Uint8Array, written: (n: number) => void): Promise<void> {
  for (let off = 0; off < chunk.length; ) {
    const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
    off += bytesWritten;
    written(bytesWritten);
  }
}

/** Read the body chunk by chunk; `stallMs` without a byte cuts the connection. */
async function* chunks(req: Req, stallMs: number): AsyncGenerator<Uint8Array> {
  const reader = req.res.body!.getReader();
  let timer: NodeJS.Timeout | undefined;
  try {
    for (;;) {
      timer = setTimeout(() => req.cut(new Error(`no data for ${stallMs / 1000} s`)), stallMs);
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        // a stall cut the connection: say so, not fetch's AbortError
        throw req.stalled ?? e;
      } finally {
        clearTimeout(timer);
      }
      if (r.done) return;
      yield r.value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Download `url` into `part`, resuming what is there. Resolves when complete. */
export async function downloadTo(
  url: string,
  part: string,
  opts: DownloadOpts = {},
): Promise<{ size: number; resumed: boolean }> {
  const retries = opts.retries ?? 3;
  const stallMs = stallMsOf(opts);
  let resumed = false;
  let restarted = false;
  const restart = (why: string) => {
    if (!restarted) opts.onRestart?.(why);
    restarted = true;
  };
  for (let attempt = 0; ; attempt++) {
    const have = partSize(part);
    const req = await request(url, have > 0 ? { Range: `bytes=${have}-` } : {}, opts);
    const { res } = req;
    if (res.status === 416) {
      await res.body?.cancel();
      const total = Number(/\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1]);
      if (total === have) return { size: have, resumed: true };
      restart('the part file is bigger than the file on the server');
      fs.truncateSync(part, 0);
      continue;
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw httpError(url, res);
    }
    const append = res.status === 206 && have > 0;
    if (append) {
      const start = Number(/bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1]);
      if (start !== have) {
        await res.body.cancel();
        restart(`the server resumed at byte ${start}, not ${have}`);
        fs.truncateSync(part, 0);
        continue;
      }
      resumed = true;
    } else if (have > 0) restart('the server ignored the resume request');
    const len = Number(res.headers.get('content-length'));
    const total = Number.isFinite(len) && res.headers.get('content-length') !== null ? (append ? have : 0) + len : null;
    let done = append ? have : 0;
    opts.onProgress?.({ done, total });
    // write chunk by chunk, so whatever arrived is on disk when the connection breaks
    let fh: fs.promises.FileHandle | undefined;
    try {
      fh = await fs.promises.open(part, append ? 'a' : 'w', 0o600);
      const st = await fh.stat();
      if (st.isFile() && (st.mode & 0o077) !== 0) await fh.chmod(0o600); // a part file left by an older pim may be 0644
    } catch (e) {
      await fh?.close();
      await res.body.cancel().catch(() => undefined);
      throw new PimError(EXIT.CANTCREAT, `cannot write ${part}: ${(e as Error).message}`);
    }
    try {
      try {
        for await (const chunk of chunks(req, stallMs)) {
          await writeAll(fh, chunk, (n) => (done += n));
          opts.onProgress?.({ done, total });
        }
      } finally {
        await fh.close();
      }
      if (total !== null && done !== total) throw new Error(`connection closed after ${done} of ${total} bytes`);
      return { size: done, resumed };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code && Object.hasOwn(DISK_FULL, code)) {
        await res.body.cancel().catch(() => undefined);
        throw diskFull(code, part, total);
      }
      if (opts.signal?.aborted) throw opts.signal.reason instanceof Error ? opts.signal.reason : e;
      if (isAbort(e) && !req.stalled) throw e;
      const err = req.stalled ?? (e as Error);
      if (attempt >= retries)
        throw new PimError(
          EXIT.UNAVAILABLE,
          `${url}: download cut off (${err.message}) after ${retries + 1} attempts; run again to resume`,
        );
      opts.onRetry?.(attempt + 1, err);
    }
  }
}

/** A progress reporter for stderr: a bar on a TTY, a plain line every 10% elsewhere. */
export function progressReporter(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): { update(p: Progress): void; end(): void } {
  const tty = Boolean(stream.isTTY) && process.env.TERM !== 'dumb';
  const started = Date.now();
  let lastPct = -1;
  let lastDraw = 0;
  const mib = (n: number) => (n / 1048576).toFixed(1);
  return {
    update({ done, total }) {
      const pct = total ? Math.floor((done / total) * 100) : null;
      const rate = done / Math.max(0.001, (Date.now() - started) / 1000);
      if (tty) {
        const now = Date.now();
        if (now - lastDraw < 100 && done !== total) return;
        lastDraw = now;
        const width = 30;
        const fill = pct === null ? 0 : Math.round((pct / 100) * width);
        const bar = pct === null ? '' : `[${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${String(pct).padStart(3)}% `;
        stream.write(`\r${label} ${bar}${mib(done)}${total ? '/' + mib(total) : ''} MiB ${mib(rate)} MiB/s\x1b[K`);
      } else if (pct !== null && Math.floor(pct / 10) > Math.floor(lastPct / 10)) {
        lastPct = pct;
        stream.write(`${label}: ${pct}% (${mib(done)} of ${mib(total!)} MiB)\n`);
      }
    },
    end() {
      if (tty) stream.write('\n');
    },
  };
}
