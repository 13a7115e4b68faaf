/**
 * Port forwards of user-mode networking: `[tcp:|udp:][BIND:]HOST:GUEST`
 * (pim-run --forward, pim-forward). At start they are hostfwd rules on the
 * netdev (lib/qemu/argv.ts); on a running VM they are added and removed
 * through QMP's `human-monitor-command` with HMP's `hostfwd_add` and
 * `hostfwd_remove` on netdev `net0`, as QEMU 7.2 has no QMP command of its
 * own for them. The VM's metadata records them (`forwards`), rewritten
 * atomically under the VM's lock, so pim-ps and `pim-forward NAME list`
 * read them without asking QEMU. The SSH forward (`ssh_port`) is pim's own
 * and is not among them.
 */
import { isIPv4 } from 'node:net';
import { EXIT, PimError } from '../core/exit.ts';
import { hostfwdRule, type PortForward } from '../qemu/argv.ts';
import type { RunningVm } from './state.ts';
import { acquireLock } from '../core/lock.ts';
import { readMeta, writeMeta } from './state.ts';
import { withQmp } from './connect.ts';

export type { PortForward };

export const DEFAULT_BIND = '127.0.0.1';

const usage = (msg: string) => new PimError(EXIT.USAGE, msg);

const port = (s: string | undefined, what: string, spec: string): number => {
  const n = Number(s);
  if (!s || !/^\d+$/.test(s) || n < 1 || n > 65535)
    throw usage(`${what} port in ${JSON.stringify(spec)} must be a number from 1 to 65535`);
  return n;
};

const FORM = '[tcp:|udp:][BIND:]HOST:GUEST, such as 8080:80, udp:5353:53 or 0.0.0.0:8080:80';

/** Splits off the protocol: `udp:x` -> ['udp', 'x']; default tcp. */
function proto(spec: string): ['tcp' | 'udp', string] {
  const m = /^(tcp|udp):(.*)$/i.exec(spec);
  return m ? [m[1]!.toLowerCase() as 'tcp' | 'udp', m[2]!] : ['tcp', spec];
}

function bindOf(b: string, spec: string): string {
  if (!isIPv4(b))
    throw usage(
      `the bind address in ${JSON.stringify(spec)} must be an IPv4 address such as 127.0.0.1 or 0.0.0.0 (QEMU 7.2's hostfwd takes IPv4 only)`,
    );
  return b;
}

/** `[tcp:|udp:][BIND:]HOST:GUEST` -> a forward (exit 64 when it is not one). */
export function parseForward(spec: string, flag = '--forward'): PortForward {
  const [p, rest] = proto(spec.trim());
  const parts = rest.split(':');
  if (parts.length === 2)
    return {
      proto: p,
      bind: DEFAULT_BIND,
      host: port(parts[0], 'the host', spec),
      guest: port(parts[1], 'the guest', spec),
    };
  if (parts.length === 3)
    return {
      proto: p,
      bind: bindOf(parts[0]!, spec),
      host: port(parts[1], 'the host', spec),
      guest: port(parts[2], 'the guest', spec),
    };
  throw usage(`${flag} ${JSON.stringify(spec)} is not ${FORM}`);
}

/** What `rm` names: a forward as `add` took it, or only its host side `[tcp:|udp:][BIND:]HOST`. */
export interface ForwardRef {
  proto: 'tcp' | 'udp';
  bind?: string;
  host: number;
  guest?: number;
}

export function parseForwardRef(spec: string): ForwardRef {
  const [p, rest] = proto(spec.trim());
  const parts = rest.split(':');
  if (parts.length === 1) return { proto: p, host: port(parts[0], 'the host', spec) };
  if (parts.length === 2 && isIPv4(parts[0]!))
    return { proto: p, bind: parts[0], host: port(parts[1], 'the host', spec) };
  // HOST:GUEST names no address: it matches the forward on any (unlike add, where it means 127.0.0.1)
  if (parts.length === 2)
    return { proto: p, host: port(parts[0], 'the host', spec), guest: port(parts[1], 'the guest', spec) };
  return parseForward(spec, 'rm');
}

/** As the user writes it (and pim-ps shows it): `tcp:127.0.0.1:8080:80`. */
export const formatForward = (f: PortForward): string => `${f.proto}:${f.bind}:${f.host}:${f.guest}`;

const overlaps = (a: { proto: string; bind: string; host: number }, b: { proto: string; bind: string; host: number }) =>
  a.proto === b.proto && a.host === b.host && (a.bind === b.bind || a.bind === '0.0.0.0' || b.bind === '0.0.0.0');

/**
 * Forwards that cannot all be set up: two on the same host port and address
 * (0.0.0.0 covers every address), or one on the SSH forward's port. Exit 64.
 */
export function checkForwards(list: PortForward[], existing: PortForward[] = [], sshPort: number | null = null): void {
  const seen = [...existing];
  for (const f of list) {
    if (sshPort !== null && overlaps(f, { proto: 'tcp', bind: DEFAULT_BIND, host: sshPort })) {
      throw usage(`host port ${f.host} is the VM's SSH forward; choose another`);
    }
    const clash = seen.find((g) => overlaps(f, g));
    if (clash) throw usage(`${formatForward(f)} clashes with ${formatForward(clash)}: the same host port and address`);
    seen.push(f);
  }
}

/** Exit 75 when a forward's host side is taken by another program (checked before QEMU starts, for a clear message). */
export async function checkHostPortFree(f: PortForward, hint = 'choose another host port'): Promise<void> {
  const busy = () => new PimError(EXIT.TEMPFAIL, `${f.proto} port ${f.host} on ${f.bind} is in use; ${hint}`);
  const fail = (e: NodeJS.ErrnoException) =>
    e.code === 'EADDRINUSE'
      ? busy()
      : e.code === 'EACCES'
        ? new PimError(EXIT.NOPERM, `${f.proto} port ${f.host} on ${f.bind}: ${e.message} (ports below 1024 need root)`)
        : new PimError(EXIT.USAGE, `cannot use ${f.proto} port ${f.host} on ${f.bind}: ${e.message}`);
  if (f.proto === 'tcp') {
    const net = await import('node:net');
    await new Promise<void>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', (e) => reject(fail(e)));
      s.listen({ port: f.host, host: f.bind, exclusive: true }, () => s.close(() => resolve()));
    });
  } else {
    const dgram = await import('node:dgram');
    await new Promise<void>((resolve, reject) => {
      const s = dgram.createSocket('udp4');
      s.once('error', (e) => (s.close(), reject(fail(e))));
      s.bind({ port: f.host, address: f.bind, exclusive: true }, () => s.close(() => resolve()));
    });
  }
}

/** Bridged VMs have no user-mode netdev to forward from (exit 64, with why). */
export function requireUserNet(vm: RunningVm): void {
  if (!vm.meta)
    throw new PimError(EXIT.UNAVAILABLE, `${vm.name} has no metadata (${vm.files.meta}); cannot tell its network`);
  if (vm.meta.bridged) {
    throw usage(
      `${vm.name} is bridged: it has its own address on the bridge (pim-ip ${vm.name}), and port forwards are for user-mode networking only`,
    );
  }
}

/** Update the metadata under the VM's lock (it is free while the VM runs; a concurrent update is waited for, briefly). */
async function updateMeta(
  vm: RunningVm,
  fn: (list: PortForward[]) => PortForward[],
  deadline: number,
): Promise<PortForward[]> {
  let pause = 20;
  for (;;) {
    try {
      const lock = await acquireLock(vm.files.lock, `VM ${vm.name}`);
      try {
        const meta = readMeta(vm.files);
        if (!meta) throw new PimError(EXIT.UNAVAILABLE, `${vm.name}'s metadata is gone: did it stop?`);
        meta.forwards = fn(meta.forwards ?? []);
        writeMeta(vm.files, meta);
        return meta.forwards;
      } finally {
        await lock.release();
      }
    } catch (e) {
      // another pim-forward holds the lock for a moment: try again, within the deadline
      if (
        !(e instanceof PimError) ||
        e.code !== EXIT.TEMPFAIL ||
        !/busy/.test(e.message) ||
        Date.now() + pause > deadline
      )
        throw e;
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 200);
    }
  }
}

/** Run an HMP command through QMP; returns what it printed (HMP reports errors as text). */
async function hmp(vm: RunningVm, line: string, timeoutMs: number): Promise<string> {
  return String(
    (await withQmp(vm, timeoutMs, (q) => q.execute('human-monitor-command', { 'command-line': line }))) ?? '',
  ).trim();
}

/** Add forwards to a running VM: QEMU first (a busy port is 75), then the metadata. Returns the VM's forwards. */
export async function addForwards(vm: RunningVm, list: PortForward[], timeoutMs: number): Promise<PortForward[]> {
  requireUserNet(vm);
  checkForwards(list, vm.meta!.forwards ?? [], vm.meta!.ssh_port);
  const deadline = Date.now() + timeoutMs;
  let all = vm.meta!.forwards ?? [];
  for (const f of list) {
    const out = await hmp(vm, `hostfwd_add net0 ${hostfwdRule(f)}`, timeoutMs);
    if (out) {
      if (/could not set up host forwarding rule/i.test(out)) {
        throw new PimError(
          EXIT.TEMPFAIL,
          `${f.proto} port ${f.host} on ${f.bind} is in use (QEMU: ${out.split('\n')[0]}); choose another host port`,
        );
      }
      throw new PimError(EXIT.DATAERR, `QEMU refused hostfwd_add ${hostfwdRule(f)}: ${out.split('\n')[0]}`);
    }
    all = await updateMeta(vm, (l) => [...l, f], deadline);
  }
  return all;
}

/** The recorded forwards that `ref` names (all matching ones; its bind and guest port narrow it when given). */
export function matchForwards(list: PortForward[], ref: ForwardRef): PortForward[] {
  return list.filter(
    (f) =>
      f.proto === ref.proto &&
      f.host === ref.host &&
      (ref.bind === undefined || f.bind === ref.bind) &&
      (ref.guest === undefined || f.guest === ref.guest),
  );
}

/** Remove forwards from a running VM; one that is not recorded is exit 66. Returns the VM's forwards. */
export async function removeForwards(vm: RunningVm, refs: ForwardRef[], timeoutMs: number): Promise<PortForward[]> {
  requireUserNet(vm);
  const deadline = Date.now() + timeoutMs;
  const recorded = vm.meta!.forwards ?? [];
  const targets: PortForward[] = [];
  for (const r of refs) {
    if (r.proto === 'tcp' && r.host === vm.meta!.ssh_port)
      throw usage(`tcp port ${r.host} is ${vm.name}'s SSH forward (ssh_port); it stays while the VM runs`);
    const m = matchForwards(recorded, r);
    if (!m.length)
      throw new PimError(
        EXIT.NOINPUT,
        `${vm.name} has no forward ${r.proto}:${r.bind ? r.bind + ':' : ''}${r.host}${r.guest ? ':' + r.guest : ''}; see pim-forward ${vm.name} list`,
      );
    for (const f of m) if (!targets.includes(f)) targets.push(f);
  }
  let all = recorded;
  for (const f of targets) {
    const out = await hmp(vm, `hostfwd_remove net0 ${f.proto}:${f.bind}:${f.host}`, timeoutMs);
    // HMP says "host forwarding rule for tcp:127.0.0.1:8080 removed" or "... not found"
    if (!/removed/.test(out) && !/not found/.test(out))
      throw new PimError(EXIT.DATAERR, `QEMU refused hostfwd_remove for ${formatForward(f)}: ${out.split('\n')[0]}`);
    all = await updateMeta(
      vm,
      (l) => l.filter((g) => !(g.proto === f.proto && g.bind === f.bind && g.host === f.host)),
      deadline,
    );
  }
  return all;
}
