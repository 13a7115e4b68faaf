/**
 * The ISO catalog (isos.d/*.yml over the built-in entries) and the ISO
 * cache in $XDG_CACHE_HOME/pim/isos. One file per concern, per ISO:
 *
 *   NAME.iso           complete and verified (renamed into place only then)
 *   NAME.iso.part      bytes so far; resumable
 *   NAME.iso.verified  JSON {size, mtimeMs, algo, digest, ...}: the last hash,
 *                      valid while size and mtime match, so a second verify
 *                      only stats the file
 *   NAME.iso.lock      the download lock's name (lib/core/lock.ts: an abstract
 *                      socket on Linux, no file; a pidfile elsewhere)
 *
 * The directory is 0700 and its files 0600 (lib/install/iso-store.ts).
 *
 * A checksum is pinned (`checksum: sha256:HEX`, `sha512:HEX`, or bare hex)
 * or read from a SUMS file (`checksum_url`). A `*` in the URL's last path
 * segment is resolved against the SUMS file.
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../core/fs.ts';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { isoDir } from '../config/tree.ts';
import { loadCatalog, resolveEntry, entryNames, type Resolved } from '../config/catalog.ts';

export type Algo = 'sha256' | 'sha512';
export interface Checksum {
  algo: Algo;
  hex: string;
}

export interface IsoEntry {
  name: string;
  url: string;
  checksum?: string;
  checksum_url?: string;
  filename?: string;
  insecure?: boolean;
  /** a file: url: copy the file into the cache (default: use it in place, through a symlink) */
  copy?: boolean;
  description?: string;
  [k: string]: unknown;
}

export const ISO_EXT = { iso: '.iso', part: '.iso.part', verified: '.iso.verified', lock: '.iso.lock' } as const;
export type IsoFiles = { -readonly [K in keyof typeof ISO_EXT]: string };

export function isoFiles(name: string, dir = isoDir()): IsoFiles {
  const out = {} as IsoFiles;
  for (const [k, ext] of Object.entries(ISO_EXT)) out[k as keyof IsoFiles] = join(dir, name + ext);
  return out;
}

const HEX_LEN: Record<number, Algo> = { 64: 'sha256', 128: 'sha512' };

/** "sha256:HEX", "sha512:HEX" or bare hex (the length says which). Null when malformed. */
export function parseChecksum(s: string): Checksum | null {
  const m = /^(?:(sha256|sha512)[:=])?([0-9a-fA-F]+)$/.exec(s.trim());
  if (!m) return null;
  const hex = m[2]!.toLowerCase();
  const algo = HEX_LEN[hex.length];
  if (!algo || (m[1] && m[1] !== algo)) return null;
  return { algo, hex };
}

/** Parse a SUMS file: GNU (`HEX  NAME`, `HEX *NAME`) or BSD (`SHA256 (NAME) = HEX`) lines. */
export function parseSums(text: string): Map<string, Checksum> {
  const out = new Map<string, Checksum>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let hex: string | undefined, file: string | undefined;
    let m = /^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(.+)$/.exec(line);
    if (m) [hex, file] = [m[1], m[2]];
    else if ((m = /^SHA(?:256|512) \((.+)\) = ([0-9a-fA-F]+)$/.exec(line))) [file, hex] = [m[1], m[2]];
    if (!hex || !file) continue;
    const c = parseChecksum(hex);
    if (c) out.set(file.replace(/^\.\//, ''), c);
  }
  return out;
}

export const globToRegExp = (g: string) =>
  new RegExp(
    '^' +
      g
        .split('*')
        .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('[^/]*') +
      '$',
  );

/** The file name to look up in the SUMS file: `filename`, else the URL's last segment (may hold `*`). */
function sumsKey(e: IsoEntry): string {
  if (e.filename) return e.filename;
  const u = new URL(e.url);
  return decodeURIComponent(u.pathname.split('/').pop() ?? '');
}

/** Pick the SUMS line for an entry; resolves a `*` in the URL. */
export function pickFromSums(
  e: IsoEntry,
  sums: Map<string, Checksum>,
): { url: string; file: string; checksum: Checksum } {
  const key = sumsKey(e);
  let file = key;
  if (key.includes('*')) {
    const re = globToRegExp(key);
    const hits = [...sums.keys()].filter((k) => re.test(k)).sort();
    if (hits.length === 0)
      throw new PimError(
        EXIT.DATAERR,
        `ISO "${e.name}": no file matching ${key} in ${e.checksum_url}; fix url or filename in the catalog entry`,
      );
    if (hits.length > 1)
      throw new PimError(
        EXIT.DATAERR,
        `ISO "${e.name}": ${hits.length} files match ${key} in ${e.checksum_url} (${hits.join(', ')}); make the pattern narrower`,
      );
    file = hits[0]!;
  }
  const checksum = sums.get(file);
  if (!checksum)
    throw new PimError(
      EXIT.DATAERR,
      `ISO "${e.name}": ${file} is not listed in ${e.checksum_url}; fix url or filename in the catalog entry`,
    );
  const url = e.url.includes('*') ? e.url.replace(/[^/]*$/, encodeURIComponent(file)) : e.url;
  return { url, file, checksum };
}

// ---------------------------------------------------------------- catalog

export async function isoCatalog() {
  const cat = await loadCatalog('isos');
  return {
    names: () => entryNames(cat),
    get(name: string): IsoEntry & { resolved: Resolved } {
      const r = resolveEntry(cat, name);
      const at = (k: string) => r.origins[k] ?? `ISO "${name}"`;
      if (typeof r.value.url !== 'string' || !r.value.url)
        throw new PimError(EXIT.CONFIG, `${at('')}: ISO "${name}" has no url; add one`);
      let u: URL;
      try {
        u = new URL(r.value.url);
      } catch {
        throw new PimError(EXIT.CONFIG, `${at('url')}: ISO "${name}": url ${JSON.stringify(r.value.url)} is not a URL`);
      }
      if (u.protocol !== 'http:' && u.protocol !== 'https:' && u.protocol !== 'file:')
        throw new PimError(
          EXIT.CONFIG,
          `${at('url')}: ISO "${name}": url must be http, https or file (a local file: file:///path)`,
        );
      if (u.protocol === 'file:' && u.host)
        throw new PimError(
          EXIT.CONFIG,
          `${at('url')}: ISO "${name}": a file url names a local path: file:///path, not file://${u.host}/...`,
        );
      if (typeof r.value.checksum === 'string' && !parseChecksum(r.value.checksum)) {
        throw new PimError(
          EXIT.CONFIG,
          `${at('checksum')}: ISO "${name}": checksum must be sha256:HEX (64 hex digits) or sha512:HEX (128)`,
        );
      }
      if (r.value.url.includes('*') && !r.value.checksum_url)
        throw new PimError(
          EXIT.CONFIG,
          `${at('url')}: ISO "${name}": a "*" in the url needs a checksum_url to resolve it`,
        );
      return { ...(r.value as unknown as IsoEntry), name, resolved: r };
    },
  };
}

// ---------------------------------------------------------------- state and verify cache

export interface VerifiedRecord {
  size: number;
  mtimeMs: number;
  algo?: Algo;
  digest?: string;
  /** the checksum it was checked against, and where that came from */
  expected?: string;
  url?: string;
  checksum_url?: string;
  unverified?: boolean;
}

export function readRecord(f: IsoFiles): VerifiedRecord | null {
  try {
    const r = JSON.parse(fs.readFileSync(f.verified, 'utf8')) as VerifiedRecord;
    return typeof r.size === 'number' && typeof r.mtimeMs === 'number' ? r : null;
  } catch {
    return null;
  }
}

/** The record, only if it still describes the file on disk (same size and mtime). */
export function freshRecord(f: IsoFiles, st: fs.Stats | null = statOrNull(f.iso)): VerifiedRecord | null {
  const r = readRecord(f);
  return r && st && r.size === st.size && r.mtimeMs === st.mtimeMs ? r : null;
}

export function writeRecord(f: IsoFiles, r: VerifiedRecord): void {
  writeFileAtomic(f.verified, JSON.stringify(r) + '\n');
}

export function statOrNull(p: string): fs.Stats | null {
  try {
    return fs.statSync(p);
  } catch {
    return null;
  }
}

export type IsoState = 'downloaded' | 'partial' | 'missing';
export function isoState(f: IsoFiles): IsoState {
  if (statOrNull(f.iso)) return 'downloaded';
  if (statOrNull(f.part)) return 'partial';
  return 'missing';
}

/** The file's digest as hex; `signal` stops it (the promise rejects with its reason). */
export async function hashFile(path: string, algo: Algo, signal?: AbortSignal): Promise<string> {
  const { createHash } = await import('node:crypto');
  const h = createHash(algo);
  const { pipeline } = await import('node:stream/promises');
  try {
    await pipeline(fs.createReadStream(path, { highWaterMark: 1 << 20 }), h, { signal });
  } catch (e) {
    if (signal?.aborted && signal.reason instanceof Error) throw signal.reason;
    throw e;
  }
  return h.digest('hex');
}

/** Hash of the file, from the cache when size and mtime still match. */
export async function cachedDigest(
  f: IsoFiles,
  algo: Algo,
  extra: Partial<VerifiedRecord> = {},
  signal?: AbortSignal,
): Promise<{ digest: string; cached: boolean }> {
  const st = statOrNull(f.iso);
  if (!st) throw new PimError(EXIT.NOINPUT, `${f.iso} does not exist`);
  const r = freshRecord(f, st);
  if (r && r.algo === algo && r.digest) return { digest: r.digest, cached: true };
  const digest = await hashFile(f.iso, algo, signal);
  const after = statOrNull(f.iso);
  if (after && after.size === st.size && after.mtimeMs === st.mtimeMs)
    writeRecord(f, { ...extra, size: st.size, mtimeMs: st.mtimeMs, algo, digest });
  return { digest, cached: false };
}
