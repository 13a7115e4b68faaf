/**
 * pim-ventoy add: catalog ISOs onto the stick.
 *
 * Each ISO is verified against the catalog first (downloaded when it is
 * missing: lib/install/iso-store.ts's ensureIso), all of them before the
 * stick is touched. On the stick, under DIR (default "/"):
 *   NAME.iso.part     the copy in progress; removed on any failure or Ctrl-C
 *   NAME.iso          renamed into place once the copy is fsync'd, read back
 *                     and its sha256 matches the catalog's (for a sha512 entry:
 *                     the sha256 of the bytes read from the source as it was copied)
 *   NAME.iso.sha256   "HEX  NAME.iso" (sha256sum -c reads it), written last
 * An ISO whose sidecar already holds the source's sha256 (and whose size
 * matches) is skipped. Free space is checked for all of them before the
 * first byte is copied (73).
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { checkAborted } from '../core/signals.ts';
import type { OpenStick } from './stick.ts';

export const SIDECAR = '.sha256';
export const PART = '.part';

/** Characters exFAT does not allow in a name (besides control characters). */
const EXFAT_BAD = /["*/:<>?\\|\x00-\x1f]/;

/** Why `name` cannot be an exFAT file name, or null. */
export function exfatNameProblem(name: string): string | null {
  if (!name || name === '.' || name === '..') return 'it is empty, "." or ".."';
  if (name.length > 255) return 'it is longer than 255 characters';
  const bad = EXFAT_BAD.exec(name);
  if (bad) return `exFAT does not allow ${JSON.stringify(bad[0])} in a name`;
  if (/[. ]$/.test(name)) return 'it ends in "." or a space (Windows cannot open such a file)';
  return null;
}

/** `--dir`: an absolute directory on the stick, each part a valid exFAT name; "/" -> "". */
export function checkStickDir(dir: string): string {
  if (!dir.startsWith('/'))
    throw new PimError(EXIT.USAGE, `--dir must be a path on the stick starting with "/", not ${JSON.stringify(dir)}`);
  const parts = dir.split('/').filter(Boolean);
  for (const p of parts) {
    const why = exfatNameProblem(p);
    if (why) throw new PimError(EXIT.USAGE, `--dir ${JSON.stringify(dir)}: ${JSON.stringify(p)}: ${why}`);
  }
  if (parts[0]?.toLowerCase() === 'ventoy')
    throw new PimError(EXIT.USAGE, "--dir /ventoy is Ventoy's own directory; pick another");
  return parts.length ? '/' + parts.join('/') : '';
}

export interface Source {
  name: string;
  path: string;
  size: number;
  /** the source's sha256 when the catalog says it (null: hashed while copying) */
  sha256: string | null;
}

export type AddResult = {
  name: string;
  status: 'added' | 'skipped';
  /** the ISO's path on the stick */
  path: string;
  sha256: string;
  seconds: number;
};

/** The catalog ISOs, verified (downloaded when missing), before the stick is opened. */
export async function sources(names: string[], signal?: AbortSignal): Promise<Source[]> {
  const { ensureIso, checkIsoName } = await import('../install/iso-store.ts');
  const out: Source[] = [];
  for (const name of names) {
    checkIsoName(name);
    const why = exfatNameProblem(`${name}.iso${SIDECAR}`);
    if (why) throw new PimError(EXIT.USAGE, `ISO "${name}" cannot be named ${name}.iso on exFAT: ${why}`);
    const e = await ensureIso(name, { signal });
    if (!e.verified)
      throw new PimError(
        EXIT.DATAERR,
        `ISO "${name}" has no checksum in the catalog, so it cannot be verified; add checksum or checksum_url to its entry`,
      );
    const sha256 = e.checksum.startsWith('sha256:') ? e.checksum.slice(7) : null;
    out.push({ name, path: e.path, size: fs.statSync(e.path).size, sha256 });
  }
  return out;
}

/** The sidecar's hash, or null. */
export function readSidecar(file: string): string | null {
  try {
    return /^([0-9a-f]{64})\b/.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

const sizeOf = (p: string) => {
  try {
    return fs.statSync(p).size;
  } catch {
    return -1;
  }
};

/** Is the ISO already there with a sidecar that matches the source? */
async function present(src: Source, iso: string, signal?: AbortSignal): Promise<string | null> {
  const side = readSidecar(iso + SIDECAR);
  if (!side || sizeOf(iso) !== src.size) return null;
  const want = src.sha256 ?? (await sha256Of(src.path, signal));
  src.sha256 = want;
  return side === want ? want : null;
}

export interface AddEvents {
  onSkip?: (name: string, path: string) => void;
  onCopy?: (
    name: string,
    path: string,
    size: number,
  ) => { update(p: { done: number; total: number | null }): void; end(): void };
  onVerify?: (name: string) => void;
}

/** Copy each source onto the opened stick under `dir`. */
export async function addToStick(
  s: OpenStick,
  srcs: Source[],
  dir: string,
  signal: AbortSignal,
  ev: AddEvents = {},
): Promise<AddResult[]> {
  const base = join(s.root, dir);
  fs.mkdirSync(base, { recursive: true });
  const todo: Source[] = [];
  const results: AddResult[] = [];
  for (const src of srcs) {
    const onStick = `${dir}/${src.name}.iso`;
    const hit = await present(src, join(base, `${src.name}.iso`), signal);
    if (hit) {
      ev.onSkip?.(src.name, onStick);
      results.push({ name: src.name, status: 'skipped', path: onStick, sha256: hit, seconds: 0 });
    } else todo.push(src);
  }
  const st = fs.statfsSync(base);
  const free = st.bavail * st.bsize;
  const need = todo.reduce((n, t) => n + t.size - Math.max(0, sizeOf(join(base, `${t.name}.iso`))) + 2 * st.bsize, 0);
  if (need > free) {
    throw new PimError(
      EXIT.CANTCREAT,
      `not enough space on ${s.stick.name}: ${todo.map((t) => t.name).join(', ')} need ${mib(need)} MiB, ${mib(free)} MiB are free; remove ISOs from the stick or use a bigger one`,
    );
  }
  for (const src of todo) {
    const t0 = performance.now();
    const iso = join(base, `${src.name}.iso`);
    const part = iso + PART;
    fs.rmSync(part, { force: true });
    try {
      const bar = ev.onCopy?.(src.name, `${dir}/${src.name}.iso`, src.size);
      let copied: string | null;
      try {
        // the catalog's sha256 is known (and the source was verified against it): no need to hash while copying
        copied = await copyFile(part, src.path, signal, !src.sha256, (done) => bar?.update({ done, total: src.size }));
      } finally {
        bar?.end();
      }
      const want = src.sha256 ?? copied!;
      ev.onVerify?.(src.name);
      const back = await sha256Of(part, signal);
      if (back !== want) {
        throw new PimError(
          EXIT.DATAERR,
          `${src.name}: the copy on ${s.stick.name} reads back as sha256 ${back}, not ${want} (the source, ${src.path}, changed, or the stick is failing); nothing was kept: run pim-iso verify ${src.name}, then add it again`,
        );
      }
      checkAborted(signal);
      fs.renameSync(part, iso);
      writeSynced(iso + SIDECAR, `${want}  ${src.name}.iso\n`);
      results.push({
        name: src.name,
        status: 'added',
        path: `${dir}/${src.name}.iso`,
        sha256: want,
        seconds: Math.round(performance.now() - t0) / 1000,
      });
    } finally {
      fs.rmSync(part, { force: true });
    }
  }
  return srcs.map((x) => results.find((r) => r.name === x.name)!);
}

const mib = (n: number) => (n / 1048576).toFixed(1);

/** Write a small file through a temp name, fsync'd, then rename. */
export function writeSynced(dest: string, content: string): void {
  const tmp = `${dest}.tmp-${process.pid}`;
  try {
    const fd = fs.openSync(tmp, 'w', 0o644);
    try {
      fs.writeFileSync(fd, content);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, dest);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new PimError(EXIT.CANTCREAT, `cannot write ${dest}: ${(e as Error).message}`);
  }
}

const CHUNK = 8 << 20;

/**
 * Read `fd` from the start in CHUNK reads, one running ahead of the caller's
 * work on the previous chunk; `each` gets every chunk (valid until it resolves).
 */
async function readAhead(
  fh: fs.promises.FileHandle,
  each: (chunk: Buffer, done: number) => Promise<void> | void,
  signal?: AbortSignal,
): Promise<void> {
  const bufs = [Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK)];
  let i = 0;
  let pos = 0;
  let pending = fh.read(bufs[0]!, 0, CHUNK, 0);
  for (;;) {
    const { bytesRead } = await pending;
    if (!bytesRead) return;
    const cur = bufs[i]!.subarray(0, bytesRead);
    pos += bytesRead;
    i ^= 1;
    pending = fh.read(bufs[i]!, 0, CHUNK, pos);
    await each(cur, pos);
    if (signal?.aborted) {
      await pending.catch(() => undefined);
      checkAborted(signal);
    }
  }
}

/** The sha256 of a file, read in large chunks with the next read in flight while one is hashed. */
export async function sha256Of(path: string, signal?: AbortSignal): Promise<string> {
  const { createHash } = await import('node:crypto');
  const h = createHash('sha256');
  const fh = await fs.promises.open(path, 'r');
  try {
    await readAhead(fh, (c) => void h.update(c), signal);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/**
 * Copy `src` to `dst` (created, never replaced); fsync at the end. With
 * `hash`, returns the sha256 of the bytes as they were read (else null).
 */
export async function copyFile(
  dst: string,
  src: string,
  signal: AbortSignal | undefined,
  hash: boolean,
  onProgress?: (done: number) => void,
): Promise<string | null> {
  const { createHash } = await import('node:crypto');
  const h = hash ? createHash('sha256') : null;
  const inp = await fs.promises.open(src, 'r');
  let out: fs.promises.FileHandle;
  try {
    out = await fs.promises.open(dst, 'wx', 0o644);
  } catch (e) {
    await inp.close();
    throw new PimError(EXIT.CANTCREAT, `cannot create ${dst}: ${(e as Error).message}`);
  }
  try {
    await readAhead(
      inp,
      async (cur, done) => {
        h?.update(cur);
        let off = 0;
        while (off < cur.length) off += (await out.write(cur, off, cur.length - off)).bytesWritten;
        onProgress?.(done);
      },
      signal,
    );
    await out.sync();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
      throw new PimError(EXIT.CANTCREAT, `the stick is full while writing ${dst}`);
    throw e;
  } finally {
    await inp.close();
    await out.close();
  }
  return h ? h.digest('hex') : null;
}
