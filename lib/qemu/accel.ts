/**
 * Which accelerator a VM gets, and what pim has learnt about KVM on this host.
 * Some hosts expose /dev/kvm but fail at run time ("KVM internal error"), at
 * once or only after a while (seen here: at QEMU's start with -cpu host, 4 s
 * into the boot with -cpu qemu64; on a loaded host about 30 s). pim remembers
 * what it saw in ~/.cache/pim/accel/, one file per host boot and QEMU binary
 * (BOOT-ID-QEMUHASH.json), so that a verdict of another boot is never in the
 * way of this one's and no writer has to remove a file that another may have
 * just written:
 *
 * - `broken` is written the moment any pim command sees KVM fail on any VM:
 *   a start whose QEMU dies of it, a start's first seconds (lib/vm/launch.ts
 *   kvmWorks), pim-ps and pim-status finding a KVM VM in `internal-error`, a
 *   dead KVM VM whose log says why. It stays until the host reboots (or the
 *   file is removed): a KVM that failed once is not trusted again by default.
 * - `ok` is written only once a KVM VM has been seen running for
 *   KVM_PROOF_SECONDS (by pim-ps, pim-status or a start that looks at the
 *   other VMs), and never over `broken`.
 * - no verdict: default starts still use KVM, watch their first seconds, and
 *   look at the other KVM VMs first.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';
import { log } from '../core/log.ts';
import { detectAccel, qemuBinary } from './host.ts';
import type { Accel } from './argv.ts';

export interface AccelVerdict {
  boot: string;
  qemu: string;
  kvm: 'ok' | 'broken';
}

/**
 * How long a KVM VM must have been running (wall time since its start, seen
 * with QMP status `running`) before KVM counts as working here. The failures
 * seen came at QEMU's start, 4 s and about 30 s (a loaded host) into a boot:
 * 60 s is twice the latest of them, long enough for firmware, the kernel and
 * the start of userspace, where the rare instructions and MSR writes that trip
 * a broken KVM happen. Waiting costs little: until then a default start still
 * uses KVM and watches its own first seconds, and a later failure flips the
 * verdict to `broken` anyway.
 */
export const KVM_PROOF_SECONDS = 60;

/** QEMU's words for KVM failing: at start (kvm_buf_set_msrs' assertion, no KVM), or at run time. */
const KVM_FAILURE =
  /KVM internal error|failed to initiali[sz]e kvm|Could not access KVM kernel module|kvm_[a-z_]+: Assertion|target\/i386\/kvm\/|failed to set MSR/i;

/** Does QEMU's output (its log) say that KVM failed? */
export const isKvmFailure = (text: string) => KVM_FAILURE.test(text);

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** FNV-1a, 64 bits as hex: the QEMU binary's part of the verdict's file name. */
function fnv64(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(text)) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16).padStart(16, '0');
}

export const verdictDir = () => join(cacheDir(), 'accel');
/** This host boot's verdict for this QEMU binary. */
export const verdictFile = () =>
  join(verdictDir(), `${bootId().replace(/[^0-9a-zA-Z-]/g, '')}-${fnv64(qemuBinary())}.json`);

const bootPart = () => bootId().replace(/[^0-9a-zA-Z-]/g, '');

/** Verdicts of earlier host boots (other file names: never the one in use), and their said-once markers, go when a new one is written. */
function dropOldVerdicts(keep: string): void {
  try {
    for (const f of readdirSync(verdictDir())) {
      const old =
        (f.endsWith('.json') && join(verdictDir(), f) !== keep) ||
        (f.endsWith('.said') && !f.startsWith(`${bootPart()}-`));
      if (old) rmSync(join(verdictDir(), f), { force: true });
    }
  } catch {
    /* nothing to drop */
  }
}

function readVerdictFile(): AccelVerdict | null {
  try {
    return JSON.parse(readFileSync(verdictFile(), 'utf8')) as AccelVerdict;
  } catch {
    return null;
  }
}

/** The marker that says `message` was said in this host boot (beside the verdict). */
const saidFile = (message: string) => join(verdictDir(), `${bootPart()}-${fnv64(qemuBinary())}-${fnv64(message)}.said`);

/** Remember that `message` was said in this host boot. Returns true when it was new. */
export function markSaid(message: string): boolean {
  try {
    ensurePrivateDir(verdictDir());
    writeFileSync(saidFile(message), '', { flag: 'wx', mode: 0o600 });
    dropOldVerdicts(verdictFile());
    return true;
  } catch (e) {
    // already said; or the cache cannot be written, and then it is said every time rather than never
    return (e as NodeJS.ErrnoException).code !== 'EEXIST';
  }
}

/**
 * An accelerator warning (KVM broken, no /dev/kvm): said once per host boot,
 * the first time a start meets it; later starts only log it at debug level.
 * pim doctor says it every time.
 */
export function warnOncePerBoot(message: string): void {
  if (markSaid(message)) log.warn(`${message} (said once per host boot; pim doctor checks it every time)`);
  else log.debug(message);
}

export function readKvmVerdict(): 'ok' | 'broken' | null {
  const v = readVerdictFile();
  return v && v.boot === bootId() && v.qemu === qemuBinary() && (v.kvm === 'ok' || v.kvm === 'broken') ? v.kvm : null;
}

const record = (kvm: 'ok' | 'broken') =>
  JSON.stringify({ boot: bootId(), qemu: qemuBinary(), kvm } satisfies AccelVerdict) + '\n';

/**
 * KVM failed on some VM: remember it (at once, over any earlier verdict).
 * Returns true when this changed the verdict. Best effort: a cache that cannot
 * be written costs a warning, never the VM.
 */
export function markKvmBroken(): boolean {
  if (readKvmVerdict() === 'broken') return false;
  const file = verdictFile();
  try {
    ensurePrivateDir(dirname(file));
    writeFileAtomic(file, record('broken')); // rename: broken replaces whatever is there
    dropOldVerdicts(file);
    return true;
  } catch (e) {
    log.warn(`cannot remember that KVM is broken here (${(e as Error).message}); the next VM checks again`);
    return false;
  }
}

/**
 * A KVM VM has been seen running for `ranSeconds`: from KVM_PROOF_SECONDS on,
 * KVM counts as working. `ok` is created only where no verdict for this host
 * boot exists (link(), which never replaces a file), so it cannot overwrite a
 * `broken` written meanwhile. Returns true when this wrote `ok`.
 */
export function kvmSeenRunning(ranSeconds: number | null): boolean {
  if (ranSeconds === null || ranSeconds < KVM_PROOF_SECONDS) return false;
  if (readKvmVerdict() !== null) return false;
  const file = verdictFile();
  try {
    ensurePrivateDir(dirname(file));
    writeFileAtomic(file, record('ok'), 0o600, true); // link: fails where a verdict was written meanwhile
    dropOldVerdicts(file);
    return true;
  } catch {
    return false; // someone else wrote a verdict first (or the cache is not writable): theirs stands
  }
}

/**
 * What QMP says about a VM tells pim about KVM: call with the VM's accelerator,
 * its QMP status and how long it has run. Returns the verdict it wrote, if any.
 */
export function noteKvmStatus(
  accel: string | undefined,
  status: string,
  ranSeconds: number | null,
): 'ok' | 'broken' | null {
  if (accel !== 'kvm') return null;
  if (status === 'internal-error') return markKvmBroken() ? 'broken' : null;
  if (status === 'running') return kvmSeenRunning(ranSeconds) ? 'ok' : null;
  return null;
}

export interface AccelChoice {
  accel: Accel;
  /** KVM was chosen by default and is not yet known to work since the host booted: watch this boot */
  probeKvm: boolean;
}

export const KVM_BROKEN_WARNING =
  'KVM failed on this host since it booted (remembered in ~/.cache/pim/accel/): using TCG, which is much slower; set PIM_ACCEL=kvm to try KVM again';

/**
 * The accelerator for a new VM: --accel, else PIM_ACCEL, else KVM/HVF where
 * the host has it, else TCG (with a warning). A KVM default on a host where
 * KVM failed since it booted becomes TCG.
 */
export function chooseAccel(requested?: string): AccelChoice {
  let { accel, warning } = detectAccel(requested);
  let probeKvm = false;
  if (accel === 'kvm' && !requested && !process.env.PIM_ACCEL) {
    const verdict = readKvmVerdict();
    if (verdict === 'broken') {
      accel = 'tcg';
      warning = KVM_BROKEN_WARNING;
    } else probeKvm = verdict === null;
  }
  if (warning) warnOncePerBoot(warning);
  return { accel, probeKvm };
}
