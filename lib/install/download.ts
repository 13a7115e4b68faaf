/**
 * HTTP downloads with resume. Bytes go to a part file; when it exists, the
 * request carries `Range: bytes=N-`. A 206 appends; a 200 (server ignored
 * Range) starts the part file over; a 416 whose total equals the part size
 * means the part is already complete. A cut connection is retried from
 * where it stopped. Aborting (Ctrl-C) leaves the part file for a later
 * resume. HTTP errors and unreachable hosts are exit 69.
 */
import * as fs from 'node:fs';
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
  /** called before each retry */
  onRetry?: (attempt: number, err: Error) => void;
}

export const isAbort = (e: unknown) => (e as Error)?.name === 'AbortError' || (e as { code?: string })?.code === 'ABORT_ERR';

async function request(url: string, headers: Record<string, string>, opts: { signal?: AbortSignal; timeoutMs?: number }): Promise<Response> {
  // the timeout covers getting the response headers only, never the body
  const ms = opts.timeoutMs ?? 30_000;
  const t = new AbortController();
  const timer = setTimeout(() => t.abort(), ms);
  const signal = opts.signal ? AbortSignal.any([opts.signal, t.signal]) : t.signal;
  try {
    return await fetch(url, { headers, signal, redirect: 'follow' });
  } catch (e) {
    if (opts.signal?.aborted) throw e;
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    if (t.signal.aborted) throw new PimError(EXIT.UNAVAILABLE, `${url}: no answer within ${Math.round(ms / 1000)} s; check the URL or the network`);
    throw new PimError(EXIT.UNAVAILABLE, `${url}: cannot connect (${cause?.code ?? cause?.message ?? (e as Error).message}); check the URL or the network`);
  } finally {
    clearTimeout(timer);
  }
}

const httpError = (url: string, res: Response) =>
  new PimError(EXIT.UNAVAILABLE, `${url}: HTTP ${res.status}${res.statusText ? ' ' + res.statusText : ''}${res.status === 404 ? '; the file is not there: fix the URL in the catalog entry' : ''}`);

/** GET a small text file (a SUMS file). */
export async function fetchText(url: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<string> {
  const res = await request(url, {}, opts);
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

/** Download `url` into `part`, resuming what is there. Resolves when complete. */
export async function downloadTo(url: string, part: string, opts: DownloadOpts = {}): Promise<{ size: number; resumed: boolean }> {
  const retries = opts.retries ?? 3;
  let resumed = false;
  for (let attempt = 0; ; attempt++) {
    const have = partSize(part);
    const res = await request(url, have > 0 ? { Range: `bytes=${have}-` } : {}, opts);
    if (res.status === 416) {
      await res.body?.cancel();
      const total = Number(/\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1]);
      if (total === have) return { size: have, resumed: true };
      fs.truncateSync(part, 0); // bigger than the file on the server: start over
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
        fs.truncateSync(part, 0);
        continue;
      }
      resumed = true;
    }
    const len = Number(res.headers.get('content-length'));
    const total = Number.isFinite(len) && res.headers.get('content-length') !== null ? (append ? have : 0) + len : null;
    let done = append ? have : 0;
    opts.onProgress?.({ done, total });
    // write chunk by chunk, so whatever arrived is on disk when the connection breaks
    const fh = await fs.promises.open(part, append ? 'a' : 'w');
    try {
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          await fh.write(chunk);
          done += chunk.length;
          opts.onProgress?.({ done, total });
        }
      } finally {
        await fh.close();
      }
      if (total !== null && done !== total) throw new Error(`connection closed after ${done} of ${total} bytes`);
      return { size: done, resumed };
    } catch (e) {
      if (opts.signal?.aborted || isAbort(e)) throw e;
      if (attempt >= retries) throw new PimError(EXIT.UNAVAILABLE, `${url}: download cut off (${(e as Error).message}) after ${retries + 1} attempts; run again to resume`);
      opts.onRetry?.(attempt + 1, e as Error);
    }
  }
}

/** A progress reporter for stderr: a bar on a TTY, a plain line every 10% elsewhere. */
export function progressReporter(label: string, stream: NodeJS.WriteStream = process.stderr): { update(p: Progress): void; end(): void } {
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
