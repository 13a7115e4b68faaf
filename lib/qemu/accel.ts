/**
 * Which accelerator a VM gets, and what pim has learnt about KVM on this host.
 * Some hosts expose /dev/kvm but fail at run time ("KVM internal error"); pim
 * finds out on the first KVM boot and remembers it in ~/.cache/pim/accel.json,
 * keyed by the host's boot id and the QEMU binary.
 */
import { readFileSync } from 'node:fs';
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

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

const verdictFile = () => join(cacheDir(), 'accel.json');

export function readKvmVerdict(): 'ok' | 'broken' | null {
  try {
    const v = JSON.parse(readFileSync(verdictFile(), 'utf8')) as AccelVerdict;
    return v.boot === bootId() && v.qemu === qemuBinary() ? v.kvm : null;
  } catch {
    return null;
  }
}

/** Remember what KVM did. Best effort: a cache that cannot be written costs a warning, never the VM. */
export function writeKvmVerdict(kvm: 'ok' | 'broken'): void {
  const file = verdictFile();
  try {
    ensurePrivateDir(dirname(file));
    writeFileAtomic(file, JSON.stringify({ boot: bootId(), qemu: qemuBinary(), kvm } satisfies AccelVerdict) + '\n');
  } catch (e) {
    log.warn(`cannot remember that KVM is ${kvm} here (${(e as Error).message}); the next VM checks again`);
  }
}

export interface AccelChoice {
  accel: Accel;
  /** KVM was chosen by default and is not yet known to work since the host booted: watch this boot */
  probeKvm: boolean;
}

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
      warning = 'KVM failed on this host earlier (internal error): using TCG, which is much slower; set PIM_ACCEL=kvm to try KVM again';
    } else probeKvm = verdict === null;
  }
  if (warning) log.warn(warning);
  return { accel, probeKvm };
}
