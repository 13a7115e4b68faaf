/**
 * Facts about the host: which QEMU binary, which accelerator, where the
 * firmware and bridge helper are, and free TCP ports. Settings come from
 * flags, then environment (PIM_QEMU, PIM_ACCEL, PIM_BRIDGE), then defaults.
 */
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import * as net from 'node:net';
import { EXIT, PimError } from '../core/exit.ts';
import type { Accel } from './argv.ts';

export function qemuBinary(): string {
  if (process.env.PIM_QEMU) return process.env.PIM_QEMU;
  return process.arch === 'arm64' ? 'qemu-system-aarch64' : 'qemu-system-x86_64';
}

export const ACCELS: readonly Accel[] = ['kvm', 'hvf', 'tcg'];

/** KVM on Linux when /dev/kvm opens read-write, HVF on macOS, else TCG (with a warning). */
export function detectAccel(requested?: string): { accel: Accel; warning?: string } {
  const want = requested || process.env.PIM_ACCEL;
  if (want) {
    if (!ACCELS.includes(want as Accel))
      throw new PimError(EXIT.USAGE, `unknown accelerator ${JSON.stringify(want)}; use kvm, hvf or tcg`);
    return { accel: want as Accel };
  }
  if (process.platform === 'linux') {
    try {
      closeSync(openSync('/dev/kvm', 'r+'));
      return { accel: 'kvm' };
    } catch (e) {
      const why =
        (e as NodeJS.ErrnoException).code === 'ENOENT'
          ? '/dev/kvm does not exist'
          : `/dev/kvm cannot be opened (${(e as NodeJS.ErrnoException).code}); add yourself to the kvm group`;
      return { accel: 'tcg', warning: `${why}: using TCG, which is much slower` };
    }
  }
  if (process.platform === 'darwin') return { accel: 'hvf' };
  return { accel: 'tcg', warning: 'no hardware accelerator on this platform: using TCG, which is much slower' };
}

const OVMF_CODE = [
  '/usr/share/OVMF/OVMF_CODE_4M.fd',
  '/usr/share/OVMF/OVMF_CODE.fd',
  '/usr/share/edk2/ovmf/OVMF_CODE.fd',
  '/usr/share/qemu/edk2-x86_64-code.fd',
  '/opt/homebrew/share/qemu/edk2-x86_64-code.fd',
  '/usr/local/share/qemu/edk2-x86_64-code.fd',
];

export function ovmfCode(): string {
  const p = process.env.PIM_OVMF_CODE ?? OVMF_CODE.find((f) => existsSync(f));
  if (!p)
    throw new PimError(
      EXIT.NOINPUT,
      'this image needs UEFI but no OVMF firmware was found; install ovmf (Debian) or qemu (Homebrew), or set PIM_OVMF_CODE',
    );
  return p;
}

const OVMF_VARS = [
  '/usr/share/OVMF/OVMF_VARS_4M.fd',
  '/usr/share/OVMF/OVMF_VARS.fd',
  '/usr/share/edk2/ovmf/OVMF_VARS.fd',
  '/usr/share/qemu/edk2-i386-vars.fd',
  '/opt/homebrew/share/qemu/edk2-i386-vars.fd',
  '/usr/local/share/qemu/edk2-i386-vars.fd',
];

/** The empty UEFI vars store that goes with ovmfCode() (a new UEFI disk gets a copy). */
export function ovmfVarsTemplate(): string {
  const code = ovmfCode();
  const beside = code.replace(/CODE/g, 'VARS').replace(/x86_64-code/, 'i386-vars');
  const p =
    process.env.PIM_OVMF_VARS ??
    (existsSync(beside) && beside !== code ? beside : OVMF_VARS.find((f) => existsSync(f)));
  if (!p)
    throw new PimError(
      EXIT.NOINPUT,
      'a UEFI build needs an empty OVMF vars file but none was found; install ovmf (Debian), or set PIM_OVMF_VARS',
    );
  return p;
}

export const BRIDGE_HELPERS = [
  '/usr/lib/qemu/qemu-bridge-helper',
  '/usr/libexec/qemu-bridge-helper',
  '/usr/local/libexec/qemu-bridge-helper',
];

export function bridgeHelper(): { path: string; setuid: boolean } | null {
  for (const p of BRIDGE_HELPERS) {
    try {
      const st = statSync(p);
      return { path: p, setuid: (st.mode & 0o4000) !== 0 && st.uid === 0 };
    } catch {
      /* next */
    }
  }
  return null;
}

/** A free TCP port on 127.0.0.1 (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Throws exit 75 when `port` on 127.0.0.1 is taken. */
export function checkPortFree(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'EADDRINUSE'
          ? new PimError(
              EXIT.TEMPFAIL,
              `port ${port} on 127.0.0.1 is in use; choose another with --ssh-port, or leave it out to get a free one`,
            )
          : new PimError(EXIT.USAGE, `cannot use port ${port}: ${e.message}`),
      ),
    );
    s.listen(port, '127.0.0.1', () => s.close(() => resolve()));
  });
}

/** A stable locally-administered MAC for a VM name (distinct VMs on one bridge need distinct MACs). */
export function macFor(name: string): string {
  let h = 2166136261;
  for (const c of Buffer.from(name)) h = Math.imul(h ^ c, 16777619) >>> 0;
  const b = [(h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff];
  return ['52', '54', '00', ...b.map((x) => x.toString(16).padStart(2, '0'))].join(':');
}
