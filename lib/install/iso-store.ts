/**
 * The downloaded ISOs (lib/install/iso.ts names their files): list, add an
 * entry, download, ensure (for pim-build), verify, path, remove. Each returns
 * records; cmds/pim-iso.ts prints them. What happens along the way (resuming,
 * a retry, a restart, hashing) is reported through `onEvent`, never printed here.
 *
 * A download holds the ISO's lock (lib/core/lock.ts: never stale) from before
 * it looks at the files until the verified file is in place, so two downloads
 * of one ISO never write one part file: the second exits 75. Removing takes
 * the same lock. The cache dir is 0700 and everything in it 0600.
 */
import * as fs from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { EXIT, PimError } from '../core/exit.ts';
import { nameProblem } from '../core/names.ts';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';
import { acquireLock } from '../core/lock.ts';
import { checkAborted } from '../core/signals.ts';
import { isoDir, subdir } from '../config/tree.ts';
import { readYamlFile, yamlLib } from '../config/yaml.ts';
import {
  cachedDigest,
  freshRecord,
  hashFile,
  isoCatalog,
  isoFiles,
  isoState,
  parseChecksum,
  parseSums,
  pickFromSums,
  readRecord,
  statOrNull,
  writeRecord,
  type Checksum,
  type IsoEntry,
  type IsoFiles,
  type IsoState,
  type VerifiedRecord,
} from './iso.ts';
import type { Progress } from './download.ts';
import { fetchText, downloadTo } from './download.ts';

export const formatChecksum = (c: Checksum) => `${c.algo}:${c.hex}`;

/** A usage error (64) for a bad ISO name. */
export function checkIsoName(name: string): string {
  const why = nameProblem(name);
  if (why) throw new PimError(EXIT.USAGE, `bad ISO name ${JSON.stringify(name)}: ${why}`);
  return name;
}

// ---------------------------------------------------------------- list, show, path

export type IsoListRecord = {
  name: string;
  state: IsoState;
  /** yes, no, unverified (no checksum), or null when not downloaded */
  verified: 'yes' | 'no' | 'unverified' | null;
  size: number | null;
  url: string;
  /** iso (an installer) or image (a disk image for pim-build's builder: cloud-init) */
  kind: 'iso' | 'image';
};

export async function listIsos(): Promise<IsoListRecord[]> {
  const cat = await isoCatalog();
  return cat.names().map((name) => {
    const e = cat.get(name);
    const f = isoFiles(name);
    const state = isoState(f);
    const st = statOrNull(state === 'partial' ? f.part : f.iso);
    const r = state === 'downloaded' ? freshRecord(f) : null;
    const verified = r?.unverified
      ? 'unverified'
      : r?.digest && r.expected === `${r.algo}:${r.digest}`
        ? 'yes'
        : state === 'downloaded'
          ? 'no'
          : null;
    return { name, state, verified, size: st?.size ?? null, url: e.url, kind: e.kind === 'image' ? 'image' : 'iso' };
  });
}

/** The merged entry, with its path and state. */
export async function showIso(name: string): Promise<Record<string, unknown>> {
  const e = (await isoCatalog()).get(checkIsoName(name));
  const f = isoFiles(name);
  return { ...e.resolved.value, path: f.iso, state: isoState(f) };
}

/** The downloaded ISO's path; exit 66 when it is not downloaded. */
export async function isoPath(name: string): Promise<string> {
  (await isoCatalog()).get(checkIsoName(name));
  const f = isoFiles(name);
  if (!statOrNull(f.iso))
    throw new PimError(EXIT.NOINPUT, `ISO "${name}" is not downloaded (${f.iso}); run pim-iso download ${name}`);
  return f.iso;
}

// ---------------------------------------------------------------- add

export interface AddOpts {
  url?: string;
  checksum?: string;
  checksumUrl?: string;
  filename?: string;
  insecure?: boolean;
  /** image: a disk image for builder: cloud-init (the default, iso, is not written) */
  kind?: 'iso' | 'image';
  /** a local file (file:// or a path): copy it into the cache instead of using it in place */
  copy?: boolean;
}

/**
 * --url as the entry keeps it: http(s) and file: URLs as they are; a plain
 * path (absolute, ./relative, ~/...) as the file: URL of its absolute path.
 * A local file must exist and be a regular file (66).
 */
export function entryUrl(u: string, what = '--url'): string {
  let url = u;
  if (!/^[a-z][a-z0-9+.-]*:/i.test(u)) {
    const home = process.env.HOME ?? '';
    const abs = resolve(u === '~' || u.startsWith('~/') ? join(home, u.slice(1)) : u);
    url = pathToFileURL(abs).href;
  }
  let p: URL;
  try {
    p = new URL(url);
  } catch {
    throw new PimError(EXIT.USAGE, `${what} ${JSON.stringify(u)} is not a URL or a path`);
  }
  if (p.protocol === 'file:') {
    if (p.host) throw new PimError(EXIT.USAGE, `${what}: a file URL names a local path: file:///path`);
    const path = fileURLToPath(p);
    const st = statOrNull(path);
    if (!st) throw new PimError(EXIT.NOINPUT, `${what}: no file ${path}`);
    if (!st.isFile()) throw new PimError(EXIT.NOINPUT, `${what}: ${path} is not a regular file`);
  } else if (p.protocol !== 'http:' && p.protocol !== 'https:') {
    throw new PimError(EXIT.USAGE, `${what} must be http://, https://, file:// or a path`);
  }
  return url;
}

/** Write isos.d/NAME.yml (0644: the user edits it). Returns the file. */
export async function addEntry(name: string, opts: AddOpts): Promise<{ name: string; file: string }> {
  checkIsoName(name);
  if (!opts.url)
    throw new PimError(EXIT.USAGE, 'pim-iso add needs --url URL (or a local file: file:///path, or a path)');
  const url = entryUrl(opts.url);
  const local = url.startsWith('file:');
  if (opts.copy && !local)
    throw new PimError(
      EXIT.USAGE,
      '--copy is for a local file (file:///path or a path); a download is always copied into the cache',
    );
  if (opts.checksum && opts.checksumUrl) throw new PimError(EXIT.USAGE, 'give --checksum or --checksum-url, not both');
  const entry: Record<string, unknown> = { url };
  if (opts.kind === 'image') entry.kind = 'image';
  if (opts.copy) entry.copy = true;
  if (opts.checksum) {
    const c = parseChecksum(opts.checksum);
    if (!c)
      throw new PimError(EXIT.USAGE, '--checksum must be sha256:HEX (64 hex digits) or sha512:HEX (128 hex digits)');
    entry.checksum = formatChecksum(c);
  } else if (opts.checksumUrl) {
    entry.checksum_url = entryUrl(opts.checksumUrl, '--checksum-url');
    if (opts.filename) entry.filename = opts.filename;
  } else if (opts.insecure) {
    entry.insecure = true;
  } else {
    throw new PimError(
      EXIT.USAGE,
      `ISO "${name}" needs a checksum: give --checksum sha256:HEX, --checksum-url URL, or --insecure to add it unverified`,
    );
  }
  if (url.includes('*') && !entry.checksum_url)
    throw new PimError(EXIT.USAGE, 'a "*" in --url needs --checksum-url to resolve it');
  const cat = await isoCatalog();
  if (cat.names().includes(name) || name === 'default')
    throw new PimError(
      EXIT.CANTCREAT,
      `ISO "${name}" already exists in the catalog; pick another name or remove it with pim-iso rm --entry ${name}`,
    );
  const dir = subdir('isos.d');
  fs.mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.yml`);
  const YAML = await yamlLib();
  writeFileAtomic(file, `# added by pim-iso add\n${YAML.stringify({ [name]: entry })}`, 0o644, true);
  return { name, file };
}

// ---------------------------------------------------------------- download and ensure

/** What happens during a download, for the caller to report. */
export type IsoEvent =
  | { type: 'cached'; name: string; path: string }
  | { type: 'start'; name: string; url: string; resumeAt: number }
  | { type: 'retry'; name: string; attempt: number; error: Error }
  | { type: 'restart'; name: string; why: string }
  | { type: 'verifying'; name: string; algo: string }
  | { type: 'unverified'; name: string; path: string };

export interface FetchOpts {
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  onEvent?: (e: IsoEvent) => void;
  /** allow an entry without a checksum (the ISO is then unverified) */
  insecure?: boolean;
  /** see DownloadOpts.stallMs */
  stallMs?: number;
}

export interface IsoResult {
  name: string;
  path: string;
  /** "sha256:HEX" or "sha512:HEX" it was checked against; null when unverified */
  checksum: string | null;
  verified: boolean;
  /** false when it was already there */
  downloaded: boolean;
}

/** The checksum to compare against and the URL to fetch (a `*` resolved). Null checksum: none known. */
async function expected(
  e: IsoEntry,
  reuse: VerifiedRecord | null,
  signal?: AbortSignal,
): Promise<{ checksum: Checksum | null; url: string }> {
  if (e.checksum) return { checksum: parseChecksum(e.checksum), url: e.url };
  if (e.checksum_url) {
    if (reuse && reuse.checksum_url === e.checksum_url && reuse.expected && reuse.url) {
      return { checksum: parseChecksum(reuse.expected), url: reuse.url };
    }
    const sums = parseSums(
      e.checksum_url.startsWith('file:')
        ? fs.readFileSync(fileURLToPath(e.checksum_url), 'utf8')
        : await fetchText(e.checksum_url, { signal }),
    );
    const pick = pickFromSums(e, sums);
    return { checksum: pick.checksum, url: pick.url };
  }
  return { checksum: null, url: e.url };
}

function needsChecksum(e: IsoEntry, insecure: boolean | undefined): void {
  if (!e.checksum && !e.checksum_url && !e.insecure && !insecure) {
    throw new PimError(
      EXIT.USAGE,
      `ISO "${e.name}" has no checksum: add checksum or checksum_url to its entry, or pass --insecure to download it unverified`,
    );
  }
}

/**
 * Under the ISO's lock: check the file that is there, or download it into the
 * part file, verify, and rename. `reuse`: trust the verify record's checksum
 * for a checksum_url entry (no network) rather than fetching the SUMS again.
 */
async function obtain(e: IsoEntry, opts: FetchOpts & { reuse: boolean }): Promise<IsoResult> {
  const f = isoFiles(e.name);
  const ev = opts.onEvent ?? (() => undefined);
  ensurePrivateDir(isoDir());
  const lock = await acquireLock(f.lock, `the download of ISO "${e.name}"`);
  try {
    const exp = await expected(e, opts.reuse ? readRecord(f) : null, opts.signal);
    if (statOrNull(f.iso)) {
      if (!exp.checksum) return { name: e.name, path: f.iso, checksum: null, verified: false, downloaded: false };
      const want = formatChecksum(exp.checksum);
      const { digest } = await cachedDigest(
        f,
        exp.checksum.algo,
        { expected: want, url: exp.url, checksum_url: e.checksum_url },
        opts.signal,
      );
      if (digest !== exp.checksum.hex)
        throw new PimError(
          EXIT.DATAERR,
          `${e.name}: ${f.iso} exists but does not match ${want}; remove it with pim-iso rm ${e.name} and download again`,
        );
      const r = readRecord(f);
      if (r && r.expected !== want)
        writeRecord(f, { ...r, expected: want, url: exp.url, checksum_url: e.checksum_url });
      ev({ type: 'cached', name: e.name, path: f.iso });
      return { name: e.name, path: f.iso, checksum: want, verified: true, downloaded: false };
    }
    if (exp.url.startsWith('file:')) {
      // a local file: used in place (the cache holds a symlink to it), or copied (copy: true);
      // either way it is verified as a download is, before it takes the ISO's name
      const src = fileURLToPath(exp.url);
      const st = statOrNull(src);
      if (!st?.isFile())
        throw new PimError(
          EXIT.NOINPUT,
          `${e.name}: no file ${src} (the entry's url); put it back or fix the url in isos.d`,
        );
      fs.rmSync(f.part, { force: true });
      ev({ type: 'start', name: e.name, url: exp.url, resumeAt: 0 });
      if (e.copy === true) fs.copyFileSync(src, f.part);
      else fs.symlinkSync(src, f.part);
      if (e.copy === true) fs.chmodSync(f.part, 0o600);
    } else {
      ev({ type: 'start', name: e.name, url: exp.url, resumeAt: statOrNull(f.part)?.size ?? 0 });
      await downloadTo(exp.url, f.part, {
        signal: opts.signal,
        stallMs: opts.stallMs,
        onProgress: opts.onProgress,
        onRetry: (attempt, error) => ev({ type: 'retry', name: e.name, attempt, error }),
        onRestart: (why) => ev({ type: 'restart', name: e.name, why }),
      });
    }
    checkAborted(opts.signal);
    if (!exp.checksum) {
      fs.renameSync(f.part, f.iso);
      const st = fs.statSync(f.iso);
      writeRecord(f, { size: st.size, mtimeMs: st.mtimeMs, unverified: true, url: exp.url });
      ev({ type: 'unverified', name: e.name, path: f.iso });
      return { name: e.name, path: f.iso, checksum: null, verified: false, downloaded: true };
    }
    const want = formatChecksum(exp.checksum);
    ev({ type: 'verifying', name: e.name, algo: exp.checksum.algo });
    const digest = await hashFile(f.part, exp.checksum.algo, opts.signal);
    if (digest !== exp.checksum.hex) {
      fs.rmSync(f.part, { force: true });
      const gone = exp.url.startsWith('file:')
        ? `${fileURLToPath(exp.url)} is not the file the entry names (it is left as it is)`
        : 'the part file was deleted';
      throw new PimError(
        EXIT.DATAERR,
        `${e.name}: checksum mismatch: expected ${want}, got ${exp.checksum.algo}:${digest}; ${gone}. Check the entry's checksum and the URL`,
      );
    }
    fs.renameSync(f.part, f.iso);
    const st = fs.statSync(f.iso);
    writeRecord(f, {
      size: st.size,
      mtimeMs: st.mtimeMs,
      algo: exp.checksum.algo,
      digest,
      expected: want,
      url: exp.url,
      checksum_url: e.checksum_url,
    });
    return { name: e.name, path: f.iso, checksum: want, verified: true, downloaded: true };
  } finally {
    await lock.release();
  }
}

/**
 * Download each ISO (or check the one that is there against its checksum),
 * yielding a record as each is done. Every name is checked first: an unknown
 * one is 66, one without a checksum 64 (unless `insecure`).
 */
export async function* downloadIsos(names: string[], opts: FetchOpts = {}): AsyncGenerator<IsoResult> {
  const cat = await isoCatalog();
  const entries = names.map((n) => cat.get(checkIsoName(n)));
  for (const e of entries) needsChecksum(e, opts.insecure);
  for (const e of entries) yield await obtain(e, { ...opts, reuse: false });
}

export interface EnsuredIso {
  path: string;
  /** "sha256:HEX" or "sha512:HEX": what it was verified against, or (unverified) its sha256 */
  checksum: string;
  verified: boolean;
}

/**
 * The ISO, downloaded and verified if it is missing (the same lock and part
 * file as pim-iso download; busy is 75). When the verify record is fresh (same
 * size and mtime) and matches the entry, this answers from it: no network, no
 * hashing, no lock. An unverified ISO (an `insecure` entry) is hashed once
 * (sha256, cached) so that its checksum can key a build cache.
 */
export async function ensureIso(name: string, opts: FetchOpts = {}): Promise<EnsuredIso> {
  const e = (await isoCatalog()).get(checkIsoName(name));
  const f = isoFiles(e.name);
  const hit = fromRecord(e, f);
  if (hit) return hit;
  needsChecksum(e, opts.insecure);
  const r = await obtain(e, { ...opts, reuse: true });
  if (r.checksum) return { path: r.path, checksum: r.checksum, verified: true };
  const { digest } = await cachedDigest(f, 'sha256', { unverified: true, url: e.url }, opts.signal);
  return { path: r.path, checksum: `sha256:${digest}`, verified: false };
}

/** The answer from a fresh verify record alone, or null when it cannot say. */
function fromRecord(e: IsoEntry, f: IsoFiles): EnsuredIso | null {
  const r = freshRecord(f);
  if (!r || !r.algo || !r.digest) return null;
  const got = `${r.algo}:${r.digest}`;
  if (e.checksum) {
    const want = parseChecksum(e.checksum);
    return want && formatChecksum(want) === got ? { path: f.iso, checksum: got, verified: true } : null;
  }
  if (e.checksum_url) {
    return !r.unverified && r.checksum_url === e.checksum_url && r.expected === got
      ? { path: f.iso, checksum: got, verified: true }
      : null;
  }
  return r.algo === 'sha256' ? { path: f.iso, checksum: got, verified: false } : null;
}

// ---------------------------------------------------------------- verify

export type VerifyRecord = {
  name: string;
  status: 'ok' | 'mismatch' | 'unverified';
  /** what it was checked against (ok), what it hashed to (mismatch), or null */
  checksum: string | null;
  /** cached (from the verify record), hashed, or why it was not checked */
  how: string;
  /** on a mismatch, what it should have been */
  expected?: string;
};

/** Verify each downloaded ISO, yielding a record as each is done; one that is not downloaded is 66. */
export async function* verifyIsos(names: string[], opts: { signal?: AbortSignal } = {}): AsyncGenerator<VerifyRecord> {
  const cat = await isoCatalog();
  const entries = names.map((n) => cat.get(checkIsoName(n)));
  for (const e of entries) {
    const f = isoFiles(e.name);
    if (!statOrNull(f.iso))
      throw new PimError(EXIT.NOINPUT, `ISO "${e.name}" is not downloaded; run pim-iso download ${e.name}`);
    const exp = await expected(e, readRecord(f), opts.signal);
    if (!exp.checksum) {
      yield { name: e.name, status: 'unverified', checksum: null, how: 'no checksum in the entry' };
      continue;
    }
    const want = formatChecksum(exp.checksum);
    const { digest, cached } = await cachedDigest(
      f,
      exp.checksum.algo,
      { expected: want, url: exp.url, checksum_url: e.checksum_url },
      opts.signal,
    );
    const how = cached ? 'cached' : 'hashed';
    if (digest !== exp.checksum.hex) {
      yield { name: e.name, status: 'mismatch', checksum: `${exp.checksum.algo}:${digest}`, how, expected: want };
      continue;
    }
    // keep what it was checked against next to the digest
    const r = readRecord(f);
    if (r && r.expected !== want) writeRecord(f, { ...r, expected: want, url: exp.url, checksum_url: e.checksum_url });
    yield { name: e.name, status: 'ok', checksum: want, how };
  }
}

// ---------------------------------------------------------------- remove

/**
 * Remove an ISO's downloaded files (under its lock: a running download makes
 * this 75) and, with `entry`, its isos.d/NAME.yml. Returns what was removed.
 */
export async function removeIso(
  name: string,
  opts: { entry?: boolean } = {},
): Promise<Array<{ name: string; path: string }>> {
  checkIsoName(name);
  const cat = await isoCatalog();
  const f = isoFiles(name);
  const there = () => [f.iso, f.part, f.verified].filter((p) => statOrNull(p));
  const entryFile = join(subdir('isos.d'), `${name}.yml`);
  const known = cat.names().includes(name);
  if (!known && !there().length) throw new PimError(EXIT.NOINPUT, `no ISO named "${name}"; see pim-iso list`);
  if (opts.entry) {
    if (!fs.existsSync(entryFile))
      throw new PimError(
        EXIT.NOINPUT,
        `ISO "${name}" has no entry file ${entryFile} (built-in entries, or entries in other files, are not removed)`,
      );
    const y = await readYamlFile(entryFile);
    const keys = y.value && typeof y.value === 'object' ? Object.keys(y.value) : [];
    if (keys.length !== 1 || keys[0] !== name)
      throw new PimError(EXIT.CONFIG, `${entryFile} defines more than "${name}"; edit it by hand`);
  }
  const removed: Array<{ name: string; path: string }> = [];
  if (statOrNull(isoDir())) {
    ensurePrivateDir(isoDir());
    const lock = await acquireLock(f.lock, `the download of ISO "${name}"`);
    try {
      for (const p of there()) {
        fs.rmSync(p, { force: true });
        removed.push({ name, path: p });
      }
    } finally {
      await lock.release();
    }
  }
  if (opts.entry) {
    fs.rmSync(entryFile);
    removed.push({ name, path: entryFile });
  }
  return removed;
}
