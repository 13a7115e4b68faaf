/**
 * A build's stages, each cached by its own key (issue 20):
 *
 *   install    the installer's run (or cloud-init's seeded first boot) on an
 *              empty disk (or a copy of the cloud image). Key: the ISO or
 *              image checksum, the answer files as rendered (pim's per-build
 *              key left out), the installs.d and sources.d files, the disk's
 *              size and format, the firmware, the boot paths, pim's recipe
 *              (and, for `from:`, the parent build's key).
 *   provision  the scripts, run over SSH on a qcow2 overlay of the install
 *              stage. Key: the install key, each script, ssh_user,
 *              keep_build_key, the builder.
 *   finish     generalize and compact (generalize.ts, then qemu-img convert).
 *              Key: the provision key, generalize, compress, the format.
 *
 * Only the install stage is stored here: provision and finish run in the
 * same boot (a stop and a boot more would cost the rebuild as much as it
 * saves), and their product is the build in the registry, whose key covers
 * theirs. A finished build stands alone: the store's qemu-img convert, which
 * the finish step does anyway, flattens the overlay, so deploy, push and
 * other machines need nothing but the build, and no gc of a stage can break
 * a build.
 *
 * Each stage is a private read-only directory stages/install-KEY16/ (0500,
 * files 0400) beside the builds, made in a temporary directory and renamed
 * into place whole, under the stage's lock. It holds the disk, the UEFI vars,
 * the cloud-init seed, the per-build SSH key that the stage's disk lets in
 * (pim removes it from the image before the build is stored) and
 * stage.json. A build that reads a stage leaves a use mark
 * (stages/.use-KEY16-PID) so that gc never removes it under that build.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { isAlive } from '../core/proc.ts';
import { dataDir } from '../core/paths.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { ensurePrivateDir, readRegular, writeFileAtomic } from '../core/fs.ts';
import { acquireLock, type Lock } from '../core/lock.ts';
import { checkAborted } from '../core/signals.ts';
import { BUILD_RECIPE, type BuildInputs } from '../image/registry.ts';
import { canonical, type BuildPlan } from './plan.ts';

export const stagesDir = () => join(dataDir(), 'stages');
export const stageDir = (key: string) => join(stagesDir(), `install-${key.slice(0, 16)}`);
/** File names in a stage's directory: one constant each (as STORE_FILES in lib/core/paths.ts is for the store and the registry). */
export const STAGE_FILES = {
  /** the stage's record */
  record: 'stage.json',
  /** the UEFI vars the install left (UEFI builds) */
  efivars: 'efivars.fd',
  /** cloud-init's NoCloud seed the install ran with */
  seed: 'seed.iso',
  /** the per-build SSH key the stage's disk lets in (private) */
  sshKey: 'ssh-key',
} as const;
/** The stage's disk: disk.qcow2 or disk.raw. */
export const stageDiskFile = (format: 'qcow2' | 'raw') => `disk.${format}`;
/** The directory in a build's own directory that holds its links of the stage it reads (pinStage). */
export const PINNED = 'pinned-stage';

export interface StageRecord {
  kind: 'install';
  key: string;
  created: string;
  seconds: number;
  /** what the key covers */
  inputs: Record<string, unknown>;
  disk: { file: string; format: 'qcow2' | 'raw' };
  efivars: string | null;
  /** cloud-init: the NoCloud seed the install ran with (attached again to every provisioning boot) */
  seed: string | null;
  /** the per-build SSH key the stage's disk lets in (private, 0400) */
  sshKey: { file: string; public: string } | null;
  /** the public half of pim's own user key the stage's disk lets in (the build's settings.user_key) */
  userKey: string | null;
  /** from: the parent build this stage is (its disk is the parent's image) */
  from?: { id: string; key: string; path: string; format: 'qcow2' | 'raw'; efivars: string | null };
  profile: string;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** The install stage's inputs: what the installer's run depends on. */
export function installInputs(plan: BuildPlan, inputs: BuildInputs, from?: string): Record<string, unknown> {
  const files: Record<string, string> = {};
  for (const f of [...plan.installs, ...plan.sources]) files[f.label] = inputs.files[f.label]!;
  return {
    recipe: BUILD_RECIPE,
    builder: plan.builder,
    iso: inputs.iso,
    answers: inputs.answers,
    files,
    disk: inputs.disk,
    firmware: inputs.firmware,
    boot: inputs.boot,
    ...(from ? { from } : {}),
  };
}

/** The three keys of a build and what each covers. */
export function stageKeys(plan: BuildPlan, inputs: BuildInputs, from?: string) {
  const install = installInputs(plan, inputs, from);
  const installKey = sha256(canonical({ stage: 'install', ...install }));
  const prov = {
    install: installKey,
    scripts: plan.scripts.map((s) => [s.label, inputs.files[s.label]]),
    ssh_user: plan.sshUser,
    keep_build_key: plan.keepKey,
  };
  const provisionKey = sha256(canonical({ stage: 'provision', ...prov }));
  const fin = {
    provision: provisionKey,
    generalize: plan.generalize,
    compress: plan.compress,
    format: plan.disk.format,
  };
  const finishKey = sha256(canonical({ stage: 'finish', ...fin }));
  return {
    install: { key: installKey, inputs: install },
    provision: { key: provisionKey, inputs: prov },
    finish: { key: finishKey, inputs: fin },
  };
}
export type StageKeys = ReturnType<typeof stageKeys>;

/** The stored install stage with this key, or null. */
export function findStage(key: string): StageRecord | null {
  const text = readRegular(join(stageDir(key), STAGE_FILES.record));
  if (text === null) return null;
  try {
    const r = JSON.parse(text) as StageRecord;
    return r.key === key && fs.existsSync(join(stageDir(key), r.disk.file)) ? r : null;
  } catch {
    return null;
  }
}

/** Every stored stage. */
export function listStages(): StageRecord[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(stagesDir());
  } catch {
    return [];
  }
  const out: StageRecord[] = [];
  for (const n of names.filter((x) => /^install-[0-9a-f]{16}$/.test(x))) {
    const text = readRegular(join(stagesDir(), n, STAGE_FILES.record));
    try {
      if (text) out.push(JSON.parse(text) as StageRecord);
    } catch {
      /* a torn stage: gc removes it below */
    }
  }
  return out;
}

/** A private temporary directory for a stage being made (removed by the caller on failure). */
export function stageTmp(key: string): string {
  ensurePrivateDir(stagesDir());
  removeStale();
  const tmp = join(stagesDir(), `.tmp-install-${key.slice(0, 16)}-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  return ensurePrivateDir(tmp);
}

/**
 * The install stage's lock, taken; when another build holds it (it is making
 * that stage), wait for it. null: `ready()` said the stage is there now (the
 * caller reads it; no lock needed). The wait is woken by the stages
 * directory's changes (fs.watch: the stage renamed into place, a failed
 * build's temporary stage removed); the lock itself (lib/core/lock.ts, an
 * abstract socket on Linux) makes no event when it is freed, nor does a maker
 * killed with -9, so a slow poll (2 s) stays under the watch.
 */
export async function waitStageLock(
  key: string,
  signal: AbortSignal,
  say: (m: string) => void,
  ready: () => boolean = () => false,
  poll = { watched: 2000, unwatched: 250 },
): Promise<Lock | null> {
  ensurePrivateDir(stagesDir());
  const file = join(stagesDir(), `.install-${key.slice(0, 16)}.lock`);
  let watcher: fs.FSWatcher | null = null;
  let wake = () => {};
  try {
    for (let said = false; ; said = true) {
      try {
        return await acquireLock(file, `install stage ${key.slice(0, 8)}`);
      } catch (e) {
        if (!(e instanceof PimError) || e.code !== EXIT.TEMPFAIL) throw e;
      }
      if (ready()) return null;
      if (!said) say(`waiting for install ${key.slice(0, 8)}: another build is making it`);
      if (!watcher) {
        try {
          watcher = fs.watch(stagesDir(), () => wake());
          watcher.on('error', () => undefined); // the poll goes on
        } catch {
          /* no watch here: the poll alone */
        }
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          wake = () => {};
          resolve();
        };
        const t = setTimeout(done, watcher ? poll.watched : poll.unwatched);
        wake = done;
        signal.addEventListener('abort', done, { once: true });
      });
      checkAborted(signal);
    }
  } finally {
    watcher?.close();
  }
}

/** A stage's files as one build reads them (pinStage). */
export interface PinnedStage {
  record: StageRecord;
  disk: string;
  efivars: string | null;
  seed: string | null;
  /** the private key file that logs in to the stage's disk */
  sshKey: string | null;
}

/**
 * The stored stage with this key, pinned for one build: each of its files
 * hard-linked into `dir` (the build's own directory), all from one stored
 * version of the stage. The build reads its links, so a stage that --force
 * replaces or gc removes meanwhile cannot change what it reads (a stored
 * file is never written: the links keep the old version's bytes until the
 * build ends). null when there is no such stage, or it was replaced while
 * the links were made (ask again). Across file systems (no link) the stage's
 * own paths are used, unpinned.
 */
export function pinStage(key: string, dir: string): PinnedStage | null {
  const src = stageDir(key);
  const pin = join(dir, PINNED);
  fs.rmSync(pin, { recursive: true, force: true });
  ensurePrivateDir(pin);
  const link = (f: string): 'ok' | 'gone' | 'cross' => {
    try {
      fs.linkSync(join(src, f), join(pin, f));
      return 'ok';
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return 'gone';
      if (code === 'EXDEV' || code === 'EPERM') return 'cross';
      throw new PimError(EXIT.CANTCREAT, `cannot link the install stage's ${f} into ${pin}: ${(e as Error).message}`);
    }
  };
  const drop = () => (fs.rmSync(pin, { recursive: true, force: true }), null);
  const how = link(STAGE_FILES.record);
  if (how === 'gone') return drop();
  const base = how === 'cross' ? src : pin;
  let record: StageRecord;
  try {
    record = JSON.parse(readRegular(join(base, STAGE_FILES.record)) ?? 'null') as StageRecord;
  } catch {
    return drop();
  }
  if (!record || record.key !== key) return drop();
  const files = [record.disk.file, record.efivars, record.seed, record.sshKey?.file].filter(
    (f): f is string => typeof f === 'string',
  );
  if (how === 'ok') {
    for (const f of files) if (link(f) !== 'ok') return drop();
    // the same version throughout: the stage's stage.json is still the one linked first
    const now = fs.statSync(join(src, STAGE_FILES.record), { throwIfNoEntry: false });
    if (!now || now.ino !== fs.statSync(join(pin, STAGE_FILES.record)).ino) return drop();
  } else if (!fs.existsSync(join(src, record.disk.file))) return drop();
  const at = (f: string | null | undefined) => (f ? join(base, f) : null);
  return {
    record,
    disk: at(record.disk.file)!,
    efivars: at(record.efivars),
    seed: at(record.seed),
    sshKey: at(record.sshKey?.file),
  };
}

/**
 * Put a made stage in place: read-only and private, then one rename. With
 * `replace` (--force) the old version is moved aside and the new one renamed
 * into its place (under the stage's lock: a build that looks in between finds
 * no stage and waits for the lock, then finds the new one), then the old one
 * is deleted: no stored file is ever written, and the builds that read the old
 * version read their own links of it (pinStage).
 */
export function commitStage(tmp: string, r: StageRecord, replace: boolean): StageRecord {
  writeFileAtomic(join(tmp, STAGE_FILES.record), JSON.stringify(r, null, 2) + '\n', 0o400);
  for (const f of fs.readdirSync(tmp)) fs.chmodSync(join(tmp, f), 0o400);
  fs.chmodSync(tmp, 0o500);
  const dest = stageDir(r.key);
  const old = replace && fs.existsSync(dest) ? moveAside(dest) : null;
  fs.renameSync(tmp, dest);
  if (old) fs.rmSync(old, { recursive: true, force: true });
  return r;
}

/** Remove a stage (its directory made writable, moved out of sight, deleted). */
export function removeStage(key: string): void {
  removeStageDir(stageDir(key));
}

function removeStageDir(dir: string): void {
  fs.rmSync(moveAside(dir), { recursive: true, force: true });
}

/** A stage's directory made writable and renamed out of sight (.rm-NAME-PID: removeStale takes it if we die). */
function moveAside(dir: string): string {
  const trash = `${dir.replace(/\/([^/]+)$/, '/.rm-$1')}-${process.pid}`;
  fs.chmodSync(dir, 0o700);
  fs.renameSync(dir, trash);
  return trash;
}

/** Mark the stage as read by this process (until `done` is called or the process is gone). */
export function useStage(key: string): () => void {
  ensurePrivateDir(stagesDir());
  const mark = join(stagesDir(), `.use-${key.slice(0, 16)}-${process.pid}`);
  fs.writeFileSync(mark, '', { mode: 0o600 });
  return () => fs.rmSync(mark, { force: true });
}

/** Is the stage read by a live build (a use mark of a live process), or being made? */
export function stageInUse(key: string): boolean {
  let names: string[] = [];
  try {
    names = fs.readdirSync(stagesDir());
  } catch {
    return false;
  }
  const k = key.slice(0, 16);
  return names.some((n) => {
    const m = new RegExp(`^\\.(?:use|tmp-install)-${k}-(\\d+)$`).exec(n);
    return m !== null && isAlive(Number(m[1]));
  });
}

/** Use marks and temporary stages of processes that are gone (killed with -9, a crash): removed. */
function removeStale(): void {
  for (const n of fs.readdirSync(stagesDir())) {
    const m = /^\.(use|tmp-install|rm)-.*-(\d+)$/.exec(n);
    if (!m || isAlive(Number(m[2]))) continue;
    const p = join(stagesDir(), n);
    if (m[1] !== 'use') fs.chmodSync(p, 0o700);
    fs.rmSync(p, { recursive: true, force: true });
  }
}

/** "2 h ago", for `reusing install KEY (built ...)`. */
export function ago(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** The install stages that builds still name (their chain's first link): what gc and rm keep. */
export function stagesNamedBy(builds: Array<{ stages?: Array<{ stage: string; key: string }> }>): Set<string> {
  const keys = new Set<string>();
  for (const b of builds) for (const l of b.stages ?? []) if (l.stage === 'install') keys.add(l.key);
  return keys;
}

/**
 * Remove the stored stages that no build in `builds` names and no live
 * build reads or makes; `only` limits it to those keys (pim-build rm: the
 * removed build's own). Returns the removed stages' directory names.
 */
export function pruneStages(builds: Parameters<typeof stagesNamedBy>[0], only?: Set<string>): string[] {
  const needed = stagesNamedBy(builds);
  const out: string[] = [];
  for (const s of listStages()) {
    if (needed.has(s.key) || (only && !only.has(s.key)) || stageInUse(s.key)) continue;
    removeStage(s.key);
    out.push(`install-${s.key.slice(0, 16)}`);
  }
  return out;
}
