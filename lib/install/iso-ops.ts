/**
 * The subcommands of pim-iso (cmds/pim-iso.ts parses; this does the work),
 * kept apart so tests can call them.
 */
import * as fs from 'node:fs';
import { writeOut } from '../cli/output.ts';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { nameProblem } from '../core/names.ts';
import { printJson, printRecords, type Rec } from '../cli/output.ts';
import { log } from '../core/log.ts';
import { isoDir, subdir, writeFileAtomic, yamlLib } from '../config/config.ts';
import type { Checksum, IsoEntry, IsoFiles, VerifiedRecord } from './iso.ts';

type Iso = typeof import('./iso.ts');
type Args = { json?: boolean; quiet?: boolean; url?: string; checksum?: string; checksumUrl?: string; filename?: string; insecure?: boolean; entry?: boolean };

export function checkIsoName(name: string): string {
  const why = nameProblem(name);
  if (why) throw new PimError(EXIT.USAGE, `bad ISO name ${JSON.stringify(name)}: ${why}`);
  return name;
}

const fmt = (c: Checksum) => `${c.algo}:${c.hex}`;

export async function list(iso: Iso, args: Args): Promise<void> {
  const cat = await iso.isoCatalog();
  const recs: Rec[] = cat.names().map((name) => {
    const e = cat.get(name);
    const f = iso.isoFiles(name);
    const state = iso.isoState(f);
    const st = iso.statOrNull(state === 'partial' ? f.part : f.iso);
    const r = state === 'downloaded' ? iso.freshRecord(f) : null;
    const verified = r?.unverified ? 'unverified' : r?.digest && r.expected === `${r.algo}:${r.digest}` ? 'yes' : state === 'downloaded' ? 'no' : null;
    return { name, state, verified, size: st?.size ?? null, url: e.url };
  });
  printRecords(recs, ['state', 'verified', 'size', 'url'], { json: args.json, quiet: args.quiet });
}

export async function show(iso: Iso, name: string, args: Args): Promise<void> {
  const cat = await iso.isoCatalog();
  const { resolved, ...e } = cat.get(name);
  const f = iso.isoFiles(name);
  const out = { ...resolved.value, path: f.iso, state: iso.isoState(f) };
  if (args.json) printJson(out);
  else writeOut((await yamlLib()).stringify(out));
  void e;
}

export async function add(iso: Iso, name: string, args: Args): Promise<void> {
  if (!args.url) throw new PimError(EXIT.USAGE, 'pim-iso add needs --url URL');
  const okUrl = (u: string, what: string) => {
    let p: URL;
    try {
      p = new URL(u);
    } catch {
      throw new PimError(EXIT.USAGE, `${what} ${JSON.stringify(u)} is not a URL`);
    }
    if (p.protocol !== 'http:' && p.protocol !== 'https:') throw new PimError(EXIT.USAGE, `${what} must be http:// or https://`);
  };
  okUrl(args.url, '--url');
  if (args.checksum && args.checksumUrl) throw new PimError(EXIT.USAGE, 'give --checksum or --checksum-url, not both');
  const entry: Record<string, unknown> = { url: args.url };
  if (args.checksum) {
    const c = iso.parseChecksum(args.checksum);
    if (!c) throw new PimError(EXIT.USAGE, '--checksum must be sha256:HEX (64 hex digits) or sha512:HEX (128 hex digits)');
    entry.checksum = fmt(c);
  } else if (args.checksumUrl) {
    okUrl(args.checksumUrl, '--checksum-url');
    entry.checksum_url = args.checksumUrl;
    if (args.filename) entry.filename = args.filename;
  } else if (args.insecure) {
    entry.insecure = true;
  } else {
    throw new PimError(EXIT.USAGE, `ISO "${name}" needs a checksum: give --checksum sha256:HEX, --checksum-url URL, or --insecure to add it unverified`);
  }
  if (args.url.includes('*') && !entry.checksum_url) throw new PimError(EXIT.USAGE, 'a "*" in --url needs --checksum-url to resolve it');
  const cat = await iso.isoCatalog();
  if (cat.names().includes(name) || name === 'default') throw new PimError(EXIT.CANTCREAT, `ISO "${name}" already exists in the catalog; pick another name or remove it with pim-iso rm --entry ${name}`);
  const dir = subdir('isos.d');
  fs.mkdirSync(dir, { recursive: true });
  const dest = join(dir, `${name}.yml`);
  const YAML = await yamlLib();
  writeFileAtomic(dest, `# added by pim-iso add\n${YAML.stringify({ [name]: entry })}`, 0o644, true);
  writeOut(`${name}\t${dest}\n`);
}

/** The checksum to compare against and the URL to fetch (a `*` resolved). Null checksum: none known. */
async function expected(iso: Iso, e: IsoEntry, reuse: VerifiedRecord | null): Promise<{ checksum: Checksum | null; url: string }> {
  if (e.checksum) return { checksum: iso.parseChecksum(e.checksum), url: e.url };
  if (e.checksum_url) {
    if (reuse && reuse.checksum_url === e.checksum_url && reuse.expected && reuse.url) {
      return { checksum: iso.parseChecksum(reuse.expected), url: reuse.url };
    }
    const { fetchText } = await import('./download.ts');
    const sums = iso.parseSums(await fetchText(e.checksum_url));
    const pick = iso.pickFromSums(e, sums);
    return { checksum: pick.checksum, url: pick.url };
  }
  return { checksum: null, url: e.url };
}

export async function download(iso: Iso, names: string[], args: Args): Promise<number> {
  const cat = await iso.isoCatalog();
  const entries = names.map((n) => cat.get(n));
  for (const e of entries) {
    if (!e.checksum && !e.checksum_url && !e.insecure && !args.insecure) {
      throw new PimError(EXIT.USAGE, `ISO "${e.name}" has no checksum: add checksum or checksum_url to its entry, or pass --insecure to download it unverified`);
    }
  }
  fs.mkdirSync(isoDir(), { recursive: true });
  for (const e of entries) {
    const code = await downloadOne(iso, e, args);
    if (code) return code;
  }
  return 0;
}

async function downloadOne(iso: Iso, e: IsoEntry, _args: Args): Promise<number> {
  const f = iso.isoFiles(e.name);
  const unlock = iso.lockIso(f, e.name);
  const ctl = new AbortController();
  const onSig = () => ctl.abort();
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  try {
    const exp = await expected(iso, e, null);
    if (iso.statOrNull(f.iso)) {
      if (exp.checksum) {
        const { digest } = await iso.cachedDigest(f, exp.checksum.algo, { expected: fmt(exp.checksum), url: exp.url, checksum_url: e.checksum_url });
        if (digest === exp.checksum.hex) {
          log.info(`${e.name}: already downloaded and verified: ${f.iso}`);
          writeOut(`${e.name}\tdownloaded\t${f.iso}\n`);
          return 0;
        }
        throw new PimError(EXIT.DATAERR, `${e.name}: ${f.iso} exists but does not match ${fmt(exp.checksum)}; remove it with pim-iso rm ${e.name} and download again`);
      }
      writeOut(`${e.name}\tdownloaded\t${f.iso}\n`);
      return 0;
    }
    const { downloadTo, progressReporter, isAbort } = await import('./download.ts');
    const have = iso.statOrNull(f.part)?.size ?? 0;
    log.info(`${e.name}: ${have ? `resuming at ${have} bytes` : 'downloading'} ${exp.url}`);
    const bar = progressReporter(`pim-iso: ${e.name}`);
    try {
      await downloadTo(exp.url, f.part, {
        signal: ctl.signal,
        onProgress: (p) => bar.update(p),
        onRetry: (n, err) => log.warn(`${e.name}: connection cut (${err.message}); resuming, attempt ${n + 1}`),
      });
    } catch (err) {
      bar.end();
      if (ctl.signal.aborted || isAbort(err)) {
        log.warn(`${e.name}: interrupted; ${f.part} is kept, run pim-iso download ${e.name} again to resume`);
        return 130;
      }
      throw err;
    }
    bar.end();
    if (exp.checksum) {
      log.info(`${e.name}: verifying ${exp.checksum.algo}`);
      const digest = await iso.hashFile(f.part, exp.checksum.algo);
      if (ctl.signal.aborted) return 130;
      if (digest !== exp.checksum.hex) {
        fs.rmSync(f.part, { force: true });
        throw new PimError(EXIT.DATAERR, `${e.name}: checksum mismatch: expected ${fmt(exp.checksum)}, got ${exp.checksum.algo}:${digest}; the part file was deleted. Check the entry's checksum and the URL`);
      }
      fs.renameSync(f.part, f.iso);
      const st = fs.statSync(f.iso);
      iso.writeRecord(f, { size: st.size, mtimeMs: st.mtimeMs, algo: exp.checksum.algo, digest, expected: fmt(exp.checksum), url: exp.url, checksum_url: e.checksum_url });
    } else {
      fs.renameSync(f.part, f.iso);
      const st = fs.statSync(f.iso);
      iso.writeRecord(f, { size: st.size, mtimeMs: st.mtimeMs, unverified: true, url: exp.url });
      log.warn(`${e.name}: no checksum: ${f.iso} is unverified`);
    }
    writeOut(`${e.name}\tdownloaded\t${f.iso}\n`);
    return 0;
  } finally {
    process.off('SIGINT', onSig);
    process.off('SIGTERM', onSig);
    unlock();
  }
}

export async function verify(iso: Iso, names: string[], args: Args): Promise<number> {
  const cat = await iso.isoCatalog();
  const entries = names.map((n) => cat.get(n));
  let worst = 0;
  const recs: Rec[] = [];
  const emit = (r: Rec) => {
    if (args.json) recs.push(r);
    else printRecords([r], ['status', 'checksum', 'how'], { plain: true, quiet: args.quiet });
  };
  for (const e of entries) {
    const f: IsoFiles = iso.isoFiles(e.name);
    if (!iso.statOrNull(f.iso)) throw new PimError(EXIT.NOINPUT, `ISO "${e.name}" is not downloaded; run pim-iso download ${e.name}`);
    const rec = iso.readRecord(f);
    const exp = await expected(iso, e, rec);
    if (!exp.checksum) {
      emit({ name: e.name, status: 'unverified', checksum: null, how: 'no checksum in the entry' });
      continue;
    }
    const { digest, cached } = await iso.cachedDigest(f, exp.checksum.algo, { expected: fmt(exp.checksum), url: exp.url, checksum_url: e.checksum_url });
    if (digest === exp.checksum.hex) {
      // keep what it was checked against next to the digest
      const r = iso.readRecord(f);
      if (r && r.expected !== fmt(exp.checksum)) iso.writeRecord(f, { ...r, expected: fmt(exp.checksum), url: exp.url, checksum_url: e.checksum_url });
      emit({ name: e.name, status: 'ok', checksum: fmt(exp.checksum), how: cached ? 'cached' : 'hashed' });
    } else {
      log.error(`${e.name}: checksum mismatch: expected ${fmt(exp.checksum)}, got ${exp.checksum.algo}:${digest}`);
      emit({ name: e.name, status: 'mismatch', checksum: `${exp.checksum.algo}:${digest}`, how: cached ? 'cached' : 'hashed' });
      worst = EXIT.DATAERR;
    }
  }
  if (args.json) printRecords(recs, [], { json: true });
  return worst;
}

export async function path(iso: Iso, name: string): Promise<number> {
  const cat = await iso.isoCatalog();
  cat.get(name);
  const f = iso.isoFiles(name);
  if (!iso.statOrNull(f.iso)) throw new PimError(EXIT.NOINPUT, `ISO "${name}" is not downloaded (${f.iso}); run pim-iso download ${name}`);
  writeOut(f.iso + '\n');
  return 0;
}

export async function rm(iso: Iso, names: string[], args: Args): Promise<number> {
  const cat = await iso.isoCatalog();
  const known = new Set(cat.names());
  for (const name of names) {
    const f = iso.isoFiles(name);
    const files = [f.iso, f.part, f.verified].filter((p) => iso.statOrNull(p));
    const entryFile = join(subdir('isos.d'), `${name}.yml`);
    if (!known.has(name) && !files.length) throw new PimError(EXIT.NOINPUT, `no ISO named "${name}"; see pim-iso list`);
    if (iso.statOrNull(f.lock)) iso.lockIso(f, name)(); // refuses while a download runs
    for (const p of files) {
      fs.rmSync(p, { force: true });
      writeOut(`${name}\t${p}\n`);
    }
    if (args.entry) {
      if (!fs.existsSync(entryFile)) throw new PimError(EXIT.NOINPUT, `ISO "${name}" has no entry file ${entryFile} (built-in entries, or entries in other files, are not removed)`);
      const { readYamlFile } = await import('../config/config.ts');
      const y = await readYamlFile(entryFile);
      const keys = y.value && typeof y.value === 'object' ? Object.keys(y.value) : [];
      if (keys.length !== 1 || keys[0] !== name) throw new PimError(EXIT.CONFIG, `${entryFile} defines more than "${name}"; edit it by hand`);
      fs.rmSync(entryFile);
      writeOut(`${name}\t${entryFile}\n`);
    }
  }
  return 0;
}
