/**
 * Bytes to and from virsh through a FIFO: vol-upload and vol-download take
 * a file name, and Node cannot hand a child a pipe of its own as a file, so
 * the data goes through a FIFO in a private temp directory. The sha256 is
 * taken as the bytes stream, and a progress bar is drawn on a TTY.
 *
 * Opening a FIFO blocks until the other side opens it: when virsh fails
 * before it opens its end, this side opens the other end itself, so nothing
 * waits for ever.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { runOk } from '../core/run.ts';

export interface Fifo {
  path: string;
  /** open the other end, so that a blocked open of this side returns */
  unblock(flags: number): void;
  remove(): void;
}

export async function makeFifo(): Promise<Fifo> {
  const dir = mkdtempSync(join(tmpdir(), 'pim-deploy-'));
  const path = join(dir, 'data');
  await runOk('mkfifo', ['-m', '600', path], { what: 'cannot make a FIFO' });
  return {
    path,
    unblock(flags) {
      try {
        fs.closeSync(fs.openSync(path, flags | fs.constants.O_NONBLOCK));
      } catch {
        /* a writer's O_NONBLOCK open fails with ENXIO when nobody reads: nobody blocks then either */
      }
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A pass-through that hashes and counts. */
function hasher(onBytes: (n: number) => void): { t: Transform; digest: () => string } {
  const h = createHash('sha256');
  let n = 0;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      n += chunk.length;
      onBytes(n);
      cb(null, chunk);
    },
  });
  return { t, digest: () => h.digest('hex') };
}

/**
 * Send `file` through a FIFO to `consumer` (a virsh that reads the FIFO's
 * path), hashing as it goes. Resolves with the sha256 once both are done.
 */
export async function sendThrough(
  file: string,
  consumer: (fifo: string) => Promise<unknown>,
  onBytes: (n: number) => void = () => {},
  signal?: AbortSignal,
): Promise<string> {
  const fifo = await makeFifo();
  try {
    const { t, digest } = hasher(onBytes);
    let consumerDone = false;
    let settled = false;
    // big reads and writes: fewer wake-ups of virsh on the other end of the FIFO
    const pump = pipeline(
      fs.createReadStream(file, { highWaterMark: 8 << 20 }),
      t,
      fs.createWriteStream(fifo.path, { highWaterMark: 8 << 20 }),
      { signal },
    )
      .catch((e) => {
        if (!consumerDone) throw e;
      })
      .finally(() => (settled = true));
    const c = consumer(fifo.path).finally(() => {
      consumerDone = true;
      // a virsh that stopped before opening its end: open it until our open returns (and our writes fail)
      const kick = () => {
        if (settled) return;
        fifo.unblock(fs.constants.O_RDONLY);
        setTimeout(kick, 50);
      };
      kick();
    });
    await Promise.all([c, pump]);
    return digest();
  } finally {
    fifo.remove();
  }
}

/** Receive what `producer` (a virsh writing to the FIFO's path) sends, hashing it; resolves with the sha256. */
export async function receiveThrough(
  producer: (fifo: string) => Promise<unknown>,
  signal?: AbortSignal,
): Promise<string> {
  const fifo = await makeFifo();
  try {
    const { t, digest } = hasher(() => {});
    const p = producer(fifo.path).finally(() => fifo.unblock(fs.constants.O_WRONLY));
    const sink = new (await import('node:stream')).Writable({ write: (_c, _e, cb) => cb() });
    await Promise.all([p, pipeline(fs.createReadStream(fifo.path), t, sink, { signal })]);
    return digest();
  } finally {
    fifo.remove();
  }
}
