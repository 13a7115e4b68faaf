/**
 * Issue 9's defects, below the BATS tests (test/bats/everyday.bats): the KVM
 * verdict (broken at once, ok only after a minute of running, never ok over
 * broken), the bounded QMP status query that pim-ps and pim-status use,
 * pim-ps's records, words that look like pim-ps fields, QEMU's failures
 * (a KVM abort, a bridge that bridge.conf refuses), pim-console's --timeout,
 * and the missing /boot kernel.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { slow } from './slow.ts';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  chooseAccel,
  isKvmFailure,
  KVM_BROKEN_WARNING,
  KVM_PROOF_SECONDS,
  kvmSeenRunning,
  markKvmBroken,
  markSaid,
  noteKvmStatus,
  readKvmVerdict,
  verdictDir,
  verdictFile,
} from '../../lib/qemu/accel.ts';
import { noteStatus, queryStatus, runSeconds } from '../../lib/vm/health.ts';
import { checkName, fieldHint, looksLikeField } from '../../lib/core/names.ts';
import { vmFiles } from '../../lib/core/paths.ts';
import { writeFileAtomic } from '../../lib/core/fs.ts';
import { KvmFailed, qemuFailure } from '../../lib/vm/launch.ts';
import { followConsole } from '../../lib/vm/console.ts';
import { compactForwards, FIELDS, stoppedRecord, vmRecord } from '../../cmds/pim-ps.ts';
import type { RunningVm, VmInfo, VmMeta } from '../../lib/vm/state.ts';

let tmp: string;
const saved = { ...process.env };
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pime-'));
  process.env.XDG_CACHE_HOME = join(tmp, 'cache');
});
afterEach(() => {
  process.env = { ...saved };
  fs.rmSync(tmp, { recursive: true, force: true });
});

const meta = (over: Partial<VmMeta> = {}): VmMeta => ({
  name: 'vm',
  kind: 'run',
  image: '/img/vm.qcow2',
  pid: 1,
  ssh_port: 2222,
  bridged: false,
  root: false,
  agent: true,
  accel: 'kvm',
  mem: '256M',
  cpus: 1,
  snapshot: true,
  owner: { uid: 0, user: 'root' },
  started: new Date().toISOString(),
  ...over,
});

const info = (name: string, m: VmMeta | null, dir = tmp): VmInfo => ({
  name,
  dir,
  files: vmFiles(name, dir),
  state: 'running',
  pid: 1,
  meta: m,
});

describe('the KVM verdict', () => {
  it('is ok only after KVM_PROOF_SECONDS of running, and broken at once', () => {
    expect(KVM_PROOF_SECONDS).toBe(60);
    expect(noteKvmStatus('kvm', 'running', 3)).toBeNull();
    expect(noteKvmStatus('kvm', 'running', 59)).toBeNull();
    expect(readKvmVerdict()).toBeNull();
    expect(fs.existsSync(verdictFile())).toBe(false);
    expect(noteKvmStatus('kvm', 'running', 60)).toBe('ok');
    expect(readKvmVerdict()).toBe('ok');
    expect(noteKvmStatus('kvm', 'internal-error', 61)).toBe('broken');
    expect(readKvmVerdict()).toBe('broken');
    expect(JSON.parse(fs.readFileSync(verdictFile(), 'utf8')).kvm).toBe('broken');
  });

  it('never writes ok over broken, and ignores what TCG VMs and paused VMs say', () => {
    expect(noteKvmStatus('tcg', 'internal-error', 5)).toBeNull();
    expect(noteKvmStatus('kvm', 'paused', 500)).toBeNull();
    expect(readKvmVerdict()).toBeNull();
    expect(markKvmBroken()).toBe(true);
    expect(markKvmBroken()).toBe(false); // already
    expect(kvmSeenRunning(3600)).toBe(false);
    expect(noteKvmStatus('kvm', 'running', 3600)).toBeNull();
    expect(readKvmVerdict()).toBe('broken');
  });

  it('a verdict from another host boot counts for nothing, and goes once this boot has one', () => {
    const old = join(verdictDir(), '00000000-0000-0000-0000-000000000000-0123456789abcdef.json');
    fs.mkdirSync(verdictDir(), { recursive: true });
    fs.writeFileSync(
      old,
      JSON.stringify({ boot: '00000000-0000-0000-0000-000000000000', qemu: 'qemu-system-x86_64', kvm: 'broken' }),
    );
    expect(readKvmVerdict()).toBeNull();
    expect(kvmSeenRunning(61)).toBe(true);
    expect(readKvmVerdict()).toBe('ok');
    expect(fs.existsSync(old)).toBe(false);
  });

  it('ok never replaces a broken that another process wrote after the check', () => {
    // the race: an ok-writer read "no verdict", then a broken was written, then ok is written
    expect(readKvmVerdict()).toBeNull();
    expect(markKvmBroken()).toBe(true);
    // kvmSeenRunning checks first and returns; write as a racing writer would, past the check
    expect(() => writeFileAtomic(verdictFile(), '{"kvm":"ok"}\n', 0o600, true)).toThrow(/already exists/);
    expect(readKvmVerdict()).toBe('broken');
  });

  it('the KVM-broken warning is said once per host boot, not at every start (issue 19)', () => {
    let kvmOpens = true;
    try {
      fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
    } catch {
      kvmOpens = false;
    }
    delete process.env.PIM_ACCEL;
    const said: string[] = [];
    const spy = vi
      .spyOn(process.stderr, 'write')
      .mockImplementation((c: string | Uint8Array) => (said.push(String(c)), true));
    try {
      expect(markKvmBroken()).toBe(true);
      const a = chooseAccel();
      const b = chooseAccel();
      const c = chooseAccel();
      if (kvmOpens) expect([a.accel, b.accel, c.accel]).toEqual(['tcg', 'tcg', 'tcg']);
      const warnings = said.filter((l) => l.includes('warning:'));
      expect(warnings).toHaveLength(1);
      if (kvmOpens) expect(warnings[0]).toContain(KVM_BROKEN_WARNING);
      // a marker beside the verdict says it was said; another boot's markers go
      expect(fs.readdirSync(verdictDir()).filter((f) => f.endsWith('.said'))).toHaveLength(1);
      fs.writeFileSync(join(verdictDir(), '00000000-0000-0000-0000-000000000000-0-0.said'), '');
      expect(markSaid('something else')).toBe(true);
      expect(fs.existsSync(join(verdictDir(), '00000000-0000-0000-0000-000000000000-0-0.said'))).toBe(false);
      expect(markSaid('something else')).toBe(false);
    } finally {
      spy.mockRestore();
    }
  });

  it("recognizes QEMU's KVM failures, and only those", () => {
    expect(
      isKvmFailure(
        "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
      ),
    ).toBe(true);
    expect(isKvmFailure('qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69')).toBe(true);
    expect(isKvmFailure('KVM internal error. Suberror: 1')).toBe(true);
    expect(isKvmFailure('Could not access KVM kernel module: Permission denied')).toBe(true);
    expect(isKvmFailure('qemu-system-x86_64: -drive file=x: Could not open x: No such file or directory')).toBe(false);
  });

  it('counts run time from the metadata', async () => {
    const now = Date.parse('2026-01-01T00:01:00Z');
    expect(runSeconds({ started: '2026-01-01T00:00:00Z' }, now)).toBe(60);
    expect(runSeconds({ started: 'nonsense' }, now)).toBeNull();
    expect(runSeconds(null, now)).toBeNull();
    expect(
      await noteStatus(info('a', meta({ started: '2026-01-01T00:00:30Z' })), { status: 'running', running: true }, now),
    ).toBeNull();
    expect(
      await noteStatus(info('a', meta({ started: '2026-01-01T00:00:00Z' })), { status: 'running', running: true }, now),
    ).toBe('ok');
  });
});

/** A fake QEMU QMP server on a unix socket: greets, negotiates, answers query-status with `status`; or is silent. */
async function fakeQmp(path: string, status: string | null): Promise<net.Server> {
  const server = net.createServer((c) => {
    if (status === null) return; // accepts, says nothing (a stopped QEMU)
    c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        const ret = m.execute === 'query-status' ? { status, running: status === 'running', singlestep: false } : {};
        c.write(JSON.stringify({ return: ret, id: m.id }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return server;
}

describe('queryStatus (pim-ps, pim-status, a start)', () => {
  it('returns QMP status and remembers an internal error of a KVM VM', async () => {
    const vm = info('ie', meta());
    const server = await fakeQmp(vm.files.qmp, 'internal-error');
    try {
      expect(await queryStatus(vm, 2_000)).toMatchObject({ status: 'internal-error', running: false });
      expect(readKvmVerdict()).toBe('broken');
    } finally {
      server.close();
    }
  });

  it('gives null within its timeout when QMP does not answer, or is not there', async () => {
    const vm = info('silent', meta({ accel: 'tcg' }));
    const server = await fakeQmp(vm.files.qmp, null);
    try {
      const t0 = Date.now();
      expect(await queryStatus(vm, 300)).toBeNull();
      expect(Date.now() - t0).toBeLessThan(slow(1_500));
    } finally {
      server.close();
    }
    expect(await queryStatus(info('gone', meta()), 300)).toBeNull();
    expect(readKvmVerdict()).toBeNull();
  });
});

describe('pim-ps records', () => {
  it('keeps the old fields first, then kind, accel and forwards', () => {
    expect(FIELDS).toEqual(['state', 'pid', 'ssh_port', 'uptime', 'image', 'bridged', 'kind', 'accel', 'forwards']);
    const m = meta({
      forwards: [
        { proto: 'tcp', bind: '127.0.0.1', host: 8080, guest: 80 },
        { proto: 'udp', bind: '0.0.0.0', host: 5353, guest: 53 },
      ],
    });
    const now = Date.parse(m.started) + 75_000;
    expect(vmRecord(info('a', m), 'paused', false, now)).toMatchObject({
      state: 'paused',
      uptime: '1m15s',
      kind: 'run',
      accel: 'kvm',
      forwards: '8080:80,0.0.0.0:5353:53/udp',
    });
    expect(vmRecord(info('a', m), 'running', true, now)).toMatchObject({ uptime: 75, forwards: m.forwards });
    expect(vmRecord(info('b', meta()), 'running', false).forwards).toBeNull();
    expect(vmRecord(info('b', meta()), 'running', true).forwards).toEqual([]);
    expect(compactForwards(undefined)).toBeNull();
    expect(stoppedRecord('old', null, true)).toMatchObject({
      name: 'old',
      state: 'stopped',
      pid: null,
      image: null,
      forwards: [],
    });
  });
});

describe('words that look like pim-ps fields', () => {
  it.each([
    '/root/img.qcow2',
    '12345',
    '2222',
    '5s',
    '1m15s',
    '2h3m',
    '1d4h',
    'running',
    'internal-error',
    'no',
    '-',
    'tcg',
    'dev\trunning',
    'disk.qcow2',
    '8080:80',
  ])('%j looks like a field', (w) => {
    expect(looksLikeField(w)).toBe(true);
  });
  it.each(['dev', 'web-1', 'scratch', 'kboot-2', 'a.b_c'])('%j is a name', (w) => {
    expect(looksLikeField(w)).toBe(false);
    expect(fieldHint(w)).toBe('');
  });
  it('a bad name that is a path says to use pim-ps -q', () => {
    expect(() => checkName('/root/img.qcow2')).toThrow(/contains "\/".*pim-ps -q/);
  });
});

describe("QEMU's failures as it starts", () => {
  const ref = () => ({ name: 'f', dir: tmp, files: vmFiles('f', tmp) });
  const log = (lines: string[]) => fs.writeFileSync(ref().files.log, lines.join('\n') + '\n');

  it("a bridge that bridge.conf refuses: which bridge, the helper's reason, what to do, 77", () => {
    log([
      'access denied by acl file',
      'qemu-system-x86_64: -netdev bridge,id=net0,br=pimev0,helper=/usr/lib/qemu/qemu-bridge-helper: bridge helper failed',
    ]);
    const e = qemuFailure(ref(), 1, false, { accel: 'tcg', net: { mode: 'bridge', bridge: 'pimev0' } });
    expect(e.code).toBe(77);
    expect(e.message).toMatch(/bridge pimev0.*access denied by acl file.*"allow pimev0" to \/etc\/qemu\/bridge\.conf/);
    log([
      "failed to parse default acl file `/etc/qemu/bridge.conf'",
      'qemu-system-x86_64: -netdev bridge,id=net0,br=pimev0: bridge helper failed',
    ]);
    const e2 = qemuFailure(ref(), 1, false, { accel: 'tcg', net: { mode: 'bridge', bridge: 'pimev0' } });
    expect(e2.code).toBe(77);
    expect(e2.message).toMatch(/bridge pimev0.*failed to parse default acl file '\/etc\/qemu\/bridge.conf'/);
    expect(e2.message).not.toContain('\n');
  });

  it('QEMU aborting on KVM: KvmFailed, and KVM is marked broken', () => {
    log([
      'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
      "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
    ]);
    const e = qemuFailure(ref(), 134, false, { accel: 'kvm', net: { mode: 'user' } });
    expect(e).toBeInstanceOf(KvmFailed);
    expect(e.code).toBe(69);
    expect(readKvmVerdict()).toBe('broken');
  });

  it('the same words under TCG are no verdict on KVM', () => {
    log(['qemu-system-x86_64: something about kvm_foo: Assertion failed']);
    expect(qemuFailure(ref(), 1, false, { accel: 'tcg', net: { mode: 'user' } })).not.toBeInstanceOf(KvmFailed);
    expect(readKvmVerdict()).toBeNull();
  });
});

describe('pim-console --ro --timeout', () => {
  it('ends with 75 when the time runs out, with or without --until', async () => {
    const files = vmFiles('con', tmp);
    fs.writeFileSync(files.log, 'booting\n');
    fs.writeFileSync(files.pid, '1\n');
    const vm = { name: 'con', dir: tmp, files, state: 'running', pid: 1, meta: null } as RunningVm;
    const out = { write: () => true } as unknown as NodeJS.WritableStream;
    const err = process.stderr.write;
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      expect(await followConsole(vm, { replay: true, waitMs: 200, out })).toBe(75);
      expect(await followConsole(vm, { replay: true, until: /never/, waitMs: 200, out })).toBe(75);
      expect(await followConsole(vm, { replay: true, until: /boot/, waitMs: 2_000, out })).toBe(0);
    } finally {
      process.stderr.write = err;
    }
  });
});

describe('pim-kboot without --kernel', () => {
  it('a missing /boot kernel is missing input (66)', async () => {
    const { release } = await import('node:os');
    if (fs.existsSync(`/boot/vmlinuz-${release()}`)) return; // the BATS test hides /boot for this case
    const { hostKernel } = await import('../../lib/kboot/kernel.ts');
    expect(() => hostKernel()).toThrow(expect.objectContaining({ code: 66 }));
  });
});
