/**
 * pim-ps: list VMs. Plumbing: one line per VM, name first, tab-separated
 * (state, pid, ssh port, uptime, image, bridged, kind, accel, forwards);
 * --json for JSON lines; -q for names alone; --table for the aligned table
 * with a header that a terminal gets (fzf --header-lines=1 reads it).
 *
 * STATE is what QEMU says (QMP query-status) for a VM whose QEMU is alive:
 * running, paused, internal-error, shutdown, guest-panicked, ...; `unknown`
 * when QMP does not answer within PS_QMP_TIMEOUT_MS (a stopped QEMU, or
 * another client holding its QMP socket); `starting` while a start holds the
 * VM's lock. Every VM is asked at once, so the wait is one timeout at most;
 * -q asks none (names need no QMP). Stale runtime entries are cleaned up as
 * they are seen, and what QMP or a dead VM's log says about KVM is remembered
 * (lib/vm/health.ts). --all adds the images in the store and the VMs whose
 * log is kept in the runtime dir, as `stopped`.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { formatRecords, humanDuration, printRecords, writeOut, type Rec } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { existingRuntimeDir } from '../lib/core/paths.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { cleanupFiles, listVms, type VmInfo, loggedNames } from '../lib/vm/state.ts';
import type { PortForward } from '../lib/qemu/argv.ts';
import { loadVmCatalog, definition } from '../lib/config/vms.ts';
import { entryNames } from '../lib/config/catalog.ts';

/** How long pim-ps waits for all the VMs' QMP answers together. */
export const PS_QMP_TIMEOUT_MS = 1_000;

export function uptime(started: string | undefined, now = Date.now()): number | null {
  if (!started) return null;
  const t = Date.parse(started);
  return Number.isNaN(t) ? null : Math.max(0, Math.round((now - t) / 1000));
}

/** uptime as people read it (lib/cli/output.ts: pim-status shows it the same way) */
export { humanDuration } from '../lib/cli/output.ts';

/** Forwards in a column: `8080:80,0.0.0.0:5353:53/udp` (the bind address when not 127.0.0.1), or null for none. */
export function compactForwards(fw: PortForward[] | undefined): string | null {
  if (!fw?.length) return null;
  return fw
    .map(
      (f) =>
        `${f.bind && f.bind !== '127.0.0.1' ? `${f.bind}:` : ''}${f.host}:${f.guest}${f.proto === 'udp' ? '/udp' : ''}`,
    )
    .join(',');
}

/** The fields after the name, in order: plumbing, so new ones go at the end. */
export const FIELDS = ['state', 'pid', 'ssh_port', 'uptime', 'image', 'bridged', 'kind', 'accel', 'forwards'];

/** A VM's record; `state` is QMP's status when known. */
export function vmRecord(v: VmInfo, state: string, json: boolean | undefined, now = Date.now()): Rec {
  const up = uptime(v.meta?.started, now);
  return {
    name: v.name,
    state,
    pid: v.pid,
    ssh_port: v.meta?.ssh_port ?? null,
    uptime: json ? up : humanDuration(up),
    image: v.meta?.image ?? null,
    bridged: v.meta?.bridged ?? false,
    kind: v.meta?.kind ?? null,
    accel: v.meta?.accel ?? null,
    forwards: json ? (v.meta?.forwards ?? []) : compactForwards(v.meta?.forwards),
  };
}

export const stoppedRecord = (name: string, image: string | null, json: boolean | undefined): Rec => ({
  name,
  state: 'stopped',
  pid: null,
  ssh_port: null,
  uptime: json ? null : humanDuration(null),
  image,
  bridged: false,
  kind: null,
  accel: null,
  forwards: json ? [] : null,
});

/** VM definitions and the image each names; a broken vms.d costs a warning, not the listing. */
async function definedVms(): Promise<Map<string, string | null>> {
  try {
    const cat = await loadVmCatalog();
    return new Map(entryNames(cat).map((n) => [n, definition(cat, n).image ?? null]));
  } catch (e) {
    const { log } = await import('../lib/core/log.ts');
    log.warn(`VM definitions left out: ${(e as Error).message}`);
    return new Map();
  }
}

export default defineCommand({
  meta: {
    name: 'pim-ps',
    version: VERSION,
    description: 'List VMs: name, state, pid, SSH port, uptime, image, bridged, kind, accel, forwards.',
    details: `
One line per VM, name first, fields separated by tabs (a table with a header on a
terminal, or with --table). STATE is QEMU's own (QMP query-status): running, paused,
internal-error, shutdown, ...; "unknown" when QMP does not answer within a second,
"starting" while a start holds the VM. KIND is run, kboot or build; ACCEL kvm, hvf or
tcg; FORWARDS the port forwards besides SSH (HOST:GUEST, /udp for UDP). -q prints names
only and asks no VM anything. --all also lists, as "stopped", the images in the store, the
VMs defined in vms.d (pim-vm), and the VMs whose log is kept in the runtime dir. Runtime entries of VMs that died are
cleaned up.`,
    examples: [
      'pim-ps',
      'pim-ps -q | fzf | pim-stop',
      'pim-ps --table | fzf -m --header-lines=1 | pim-stop',
      'pim-ps --json | jq -r .ssh_port',
      'pim-ps --all',
    ],
  },
  args: {
    ...jsonArgs,
    ...quietArgs,
    all: { type: 'boolean', alias: 'a', description: 'also list stopped VMs: store images, VM definitions, kept logs' },
    table: {
      type: 'boolean',
      description: 'an aligned table with a header, also in a pipe (for fzf --header-lines=1)',
    },
  },
  async run({ args }) {
    if (args.table && (args.json || args.quiet))
      throw new PimError(EXIT.USAGE, '--table shows every field; leave out --json and -q');
    const dir = existingRuntimeDir();
    const found = dir ? await listVms(dir, { keepStale: true }) : [];
    const vms: VmInfo[] = [];
    for (const v of found) {
      if (v.state !== 'stale') vms.push(v);
      else {
        // a KVM VM that died: its log may say that KVM failed (QEMU aborted)
        if (v.meta?.accel === 'kvm') await (await import('../lib/vm/health.ts')).noteDeadVm(v);
        cleanupFiles(v.files);
      }
    }
    const now = Date.now();
    let recs: Rec[];
    if (args.quiet) recs = vms.map((v) => ({ name: v.name }));
    else {
      const live = vms.filter((v) => v.state === 'running');
      const states = new Map<string, string>();
      if (live.length) {
        const health = await import('../lib/vm/health.ts');
        const kvm = live.some((v) => v.meta?.accel === 'kvm');
        const { readKvmVerdict } = kvm ? await import('../lib/qemu/accel.ts') : { readKvmVerdict: () => null };
        const before = readKvmVerdict();
        await Promise.all(
          live.map(async (v) => {
            const st = await health.queryStatus(v, PS_QMP_TIMEOUT_MS);
            states.set(v.name, st?.status ?? 'unknown');
          }),
        );
        if (kvm && before !== 'broken') {
          const failed = live.filter((v) => v.meta?.accel === 'kvm' && states.get(v.name) === 'internal-error');
          if (failed.length && readKvmVerdict() === 'broken') {
            const { log } = await import('../lib/core/log.ts');
            for (const v of failed) log.warn(health.kvmErrorHint(v.name));
          }
        }
      }
      recs = vms.map((v) => vmRecord(v, states.get(v.name) ?? v.state, args.json, now));
    }
    if (args.all) {
      const { storeImages } = await import('../lib/image/store.ts');
      const seen = new Set(recs.map((r) => r.name));
      const images = new Map<string, string | null>(storeImages().map((i) => [i.name, i.path]));
      // defined VMs (vms.d) that do not run, with the image their definition names
      const defined = await definedVms();
      for (const [n, img] of defined) if (!images.has(n)) images.set(n, img);
      const stopped = new Set([...images.keys(), ...(dir ? loggedNames(dir) : [])]);
      for (const n of [...stopped].sort()) {
        if (!seen.has(n)) recs.push(args.quiet ? { name: n } : stoppedRecord(n, images.get(n) ?? null, args.json));
      }
    }
    if (args.table)
      writeOut(formatRecords(recs, FIELDS, { tty: true })); // the header even with no VMs
    else printRecords(recs, FIELDS, { json: args.json, quiet: args.quiet });
  },
});
