/**
 * pim-snapshot, pim-log, pim-rm and pim doctor below their commands: snapshot
 * tags and records, the disks a running VM's snapshot covers, the QMP job
 * loop against a stand-in QMP, the tail of a log, the doctor's checks on
 * files made here (runtime dirs, bridge.conf), its sudo verdicts, and its KVM
 * test guest: the bytes are what lib/vm/kvm-probe.S assembles to, and TCG
 * runs them to the end. test/bats/vmcare.bats runs the commands against real
 * guests.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineCommand } from 'citty';
import { checkTag, runJob, toSnapshot, vmDisks, JobFailed, type JobQmp } from '../../lib/vm/snapshot.ts';
import { tailOffset } from '../../lib/vm/log.ts';
import {
  bridgeConfCheck,
  parseVersion,
  PROBE_OK,
  probeFailure,
  probeImage,
  readBridgeAcl,
  runProbe,
  runtimeDirCheck,
  sudoCheck,
  type ProbeResult,
  type SudoFacts,
} from '../../lib/vm/doctor.ts';
import { buildQemuArgv, type VmSpec } from '../../lib/qemu/argv.ts';
import { node, type Completer } from '../../lib/cli/command.ts';
import { answer } from '../../lib/cli/complete.ts';
import type { QmpEvent } from '../../lib/qemu/qmp.ts';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimcare-'));
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

const has = (cmd: string) => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

describe('snapshot tags and records', () => {
  it.each(['clean', 'before-upgrade', 'v1.2_3', 'a1', '1a'])('accepts %s', (t) => expect(checkTag(t)).toBe(t));
  it.each(['', '-x', '../x', 'a b', 'x'.repeat(65), 'a/b'])('refuses %j with 64', (t) =>
    expect(() => checkTag(t)).toThrow(expect.objectContaining({ code: 64 })),
  );
  it('refuses a tag of digits only: QEMU and qemu-img would take it for an ID', () => {
    expect(() => checkTag('12')).toThrow(/taken for a snapshot ID/);
  });
  it('turns QEMU snapshot info into a record: tag, id, state bytes, ISO date, clock seconds', () => {
    expect(
      toSnapshot({
        name: 't1',
        id: '1',
        'vm-state-size': 111272510,
        'date-sec': 1700000000,
        'date-nsec': 190286000,
        'vm-clock-sec': 8,
        'vm-clock-nsec': 788967073,
      }),
    ).toEqual({
      tag: 't1',
      id: '1',
      vm_state: 111272510,
      date: '2023-11-14T22:13:20.190Z',
      vm_clock: 8.789,
    });
  });
});

describe('the disks a running VM snapshot covers (query-block)', () => {
  const disk = (device: string, drv: string, ro = false, node = `#${device}`) => ({
    device,
    inserted: {
      'node-name': node,
      ro,
      drv,
      file: `/img/${device}`,
      image: { filename: `/img/${device}`, snapshots: [] as never[] },
    },
  });
  it('every writable disk, disk0 holding the state; CDs (read-only), pflash and empty drives left out', () => {
    const d = vmDisks(
      'dev',
      [
        disk('pflash0', 'raw', true),
        disk('pflash1', 'raw'),
        disk('data', 'qcow2'),
        disk('disk0', 'qcow2'),
        disk('cd0', 'raw', true),
        { device: 'cd1' },
      ],
      null,
    );
    expect(d.devices).toEqual(['#data', '#disk0']);
    expect(d.vmstate).toBe('#disk0');
  });
  it('refuses a --snapshot VM (69), a VM without a disk (69), a raw disk (65), and says why', () => {
    expect(() => vmDisks('dev', [disk('disk0', 'qcow2')], { snapshot: true })).toThrow(
      expect.objectContaining({
        code: 69,
        message: expect.stringMatching(/--snapshot: its disk writes go to a temporary overlay/),
      }),
    );
    expect(() => vmDisks('k', [disk('pflash1', 'raw')], null)).toThrow(
      expect.objectContaining({ code: 69, message: expect.stringMatching(/no writable disk/) }),
    );
    expect(() => vmDisks('dev', [disk('disk0', 'raw')], null)).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringMatching(/\/img\/disk0 is a raw image/) }),
    );
  });
});

/** A stand-in QMP: records commands; the job's events come when `script` says, query-jobs answers from `jobs`. */
function fakeQmp(
  script: (cmd: string, args: Record<string, unknown>, emit: (ev: QmpEvent) => void) => void,
  jobs: (id: string) => unknown[],
) {
  const listeners = new Set<(ev: QmpEvent) => void>();
  const sent: Array<[string, unknown]> = [];
  let closed: () => void = () => {};
  const closedP = new Promise<boolean>((r) => (closed = () => r(true)));
  let lastId = '';
  const q: JobQmp = {
    subscribe(l) {
      listeners.add(l);
      return () => void listeners.delete(l);
    },
    async execute(cmd: string, args?: unknown) {
      sent.push([cmd, args]);
      const a = (args ?? {}) as Record<string, unknown>;
      if (cmd === 'query-jobs') return jobs(lastId);
      if (cmd === 'job-dismiss') return {};
      lastId = String(a['job-id']);
      setImmediate(() =>
        script(cmd, a, (ev) => {
          for (const l of [...listeners]) l(ev);
        }),
      );
      return {};
    },
    waitClosed: (ms: number) => Promise.race([closedP, new Promise<boolean>((r) => setTimeout(() => r(false), ms))]),
  };
  return { q, sent, listeners, close: () => closed() };
}

const status = (id: string, s: string): QmpEvent => ({ event: 'JOB_STATUS_CHANGE', data: { id, status: s } });

describe('a QMP job: started, followed by its events to "concluded", its error read, dismissed', () => {
  it('waits for its own job only, then dismisses it', async () => {
    const f = fakeQmp(
      (_c, a, emit) => {
        const id = String(a['job-id']);
        emit(status('someone-else', 'concluded'));
        for (const s of ['created', 'running', 'waiting', 'pending', 'concluded']) emit(status(id, s));
      },
      (id) => [{ id, type: 'snapshot-save', status: 'concluded' }],
    );
    await runJob(f.q, 'snapshot-save', { tag: 't', vmstate: '#d', devices: ['#d'] }, 5_000);
    expect(f.sent.map(([c]) => c)).toEqual(['snapshot-save', 'query-jobs', 'job-dismiss']);
    const args = f.sent[0]![1] as Record<string, unknown>;
    expect(args).toMatchObject({ tag: 't', vmstate: '#d', devices: ['#d'] });
    expect(String(args['job-id'])).toMatch(/^pim-snapshot-save-/);
    expect(f.sent[2]![1]).toEqual({ id: args['job-id'] });
    expect(f.listeners.size).toBe(0); // unsubscribed
  });
  it("a job that failed is QEMU's error (65), and it is dismissed all the same", async () => {
    const f = fakeQmp(
      (_c, a, emit) => {
        for (const s of ['created', 'running', 'aborting', 'concluded']) emit(status(String(a['job-id']), s));
      },
      (id) => [
        { id, type: 'snapshot-load', status: 'concluded', error: "Snapshot 'x' does not exist in one or more devices" },
      ],
    );
    const e = (await runJob(f.q, 'snapshot-load', { tag: 'x' }, 5_000).catch((x) => x)) as JobFailed;
    expect(e).toBeInstanceOf(JobFailed);
    expect(e.code).toBe(65);
    expect(e.message).toBe("snapshot-load failed: Snapshot 'x' does not exist in one or more devices");
    expect(f.sent.map(([c]) => c)).toContain('job-dismiss');
  });
  it('a job that never concludes is 75 after the time limit; QEMU going away is 69', async () => {
    const slow = fakeQmp(
      () => undefined,
      () => [],
    );
    await expect(runJob(slow.q, 'snapshot-save', {}, 50)).rejects.toMatchObject({
      code: 75,
      message: expect.stringMatching(/did not finish within 0.05 s/),
    });
    const gone = fakeQmp(
      () => gone.close(),
      () => [],
    );
    await expect(runJob(gone.q, 'snapshot-save', {}, 5_000)).rejects.toMatchObject({ code: 69 });
  });
});

describe('the tail of a log', () => {
  const offsetOf = (text: string, n: number) => {
    const p = join(tmp, 'log');
    fs.writeFileSync(p, text);
    const fd = fs.openSync(p, 'r');
    try {
      return text.slice(tailOffset(fd, n));
    } finally {
      fs.closeSync(fd);
    }
  };
  it('starts at the last N lines, with or without a final newline', () => {
    expect(offsetOf('a\nb\nc\n', 2)).toBe('b\nc\n');
    expect(offsetOf('a\nb\nc', 2)).toBe('b\nc');
    expect(offsetOf('a\nb\nc\n', 1)).toBe('c\n');
    expect(offsetOf('a\nb\nc\n', 9)).toBe('a\nb\nc\n');
    expect(offsetOf('a\nb\n', 0)).toBe('');
    expect(offsetOf('', 3)).toBe('');
  });
  it('across reads of 64 KiB', () => {
    const line = 'x'.repeat(1000) + '\n';
    const text = line.repeat(200) + 'last\n';
    expect(offsetOf(text, 3)).toBe(line + line + 'last\n');
  });
});

describe("QEMU's stderr reaches the VM's log once daemonized", () => {
  const spec = (daemonize: boolean): VmSpec => ({
    name: 'dev',
    accel: 'tcg',
    mem: '256M',
    cpus: 1,
    files: { qmp: '/r/dev.qmp', ga: '/r/dev.ga', serial: '/r/dev.serial', pid: '/r/dev.pid', log: '/r/dev.log' },
    serial: daemonize ? 'socket' : 'stdio',
    agent: false,
    net: { mode: 'none' },
    daemonize,
    extra: [],
  });
  it('-D names the log (with a -d item, or QEMU would not open it) before -daemonize; not in the foreground', () => {
    const a = buildQemuArgv(spec(true));
    const i = a.indexOf('-D');
    expect(a.slice(i - 2, i + 3)).toEqual(['-d', 'guest_errors', '-D', '/r/dev.log', '-daemonize']);
    expect(buildQemuArgv(spec(false))).not.toContain('-D');
  });
});

describe('pim doctor: the KVM test guest', () => {
  it('is a 64 KiB firmware image with a far jump at the reset vector', () => {
    const img = probeImage();
    expect(img.length).toBe(0x10000);
    expect([...img.subarray(0xfff0, 0xfff5)]).toEqual([0xea, 0x00, 0x00, 0x00, 0xf0]);
  });
  it.skipIf(!has('as') || !has('ld'))('is what lib/vm/kvm-probe.S assembles to', () => {
    const o = join(tmp, 'p.o');
    const bin = join(tmp, 'p.bin');
    execFileSync('as', ['--32', '-o', o, join(__dirname, '../../lib/vm/kvm-probe.S')]);
    execFileSync('ld', ['-m', 'elf_i386', '-Ttext', '0', '-e', '0', '--oformat', 'binary', '-o', bin, o]);
    expect(fs.readFileSync(bin).equals(probeImage())).toBe(true);
  });
  it.skipIf(!has('qemu-system-x86_64'))(
    'runs to its end under TCG: QEMU exits 85 (0x2a through isa-debug-exit)',
    async () => {
      const r = await runProbe('tcg', 20_000, 'qemu-system-x86_64');
      expect(r).toMatchObject({ status: PROBE_OK, timedOut: false, internalError: false });
    },
  );
  it('a QEMU that hangs with a child holding its stderr is killed at the limit: the probe does not wait for the pipe', async () => {
    const q = join(tmp, 'hanging-qemu');
    fs.writeFileSync(q, `#!/bin/sh\nsleep 1000 &\necho $! >"${tmp}/qemu-child"\nsleep 1000\n`, { mode: 0o755 });
    const t0 = Date.now();
    const r = await runProbe('tcg', 1_000, q);
    expect(r.timedOut).toBe(true);
    expect(Date.now() - t0).toBeLessThan(15_000);
    const child = Number(fs.readFileSync(join(tmp, 'qemu-child'), 'utf8'));
    const state = fs.existsSync(`/proc/${child}/status`)
      ? fs.readFileSync(`/proc/${child}/status`, 'utf8')
      : 'State: gone';
    expect(state).toMatch(/^State:\s+(Z|gone)/m); // killed (a zombie counts: pid 1 here does not reap)
  }, 30_000);
  it('a missing QEMU is said so, not thrown', async () => {
    const r = await runProbe('tcg', 5_000, join(tmp, 'no-such-qemu'));
    expect(r.status).toBeNull();
    expect(r.errors[0]).toMatch(/cannot run .*no-such-qemu: not found/);
  });
  it('says what went wrong in one phrase', () => {
    const base: ProbeResult = { status: null, signal: null, errors: [], ms: 1, timedOut: false, internalError: false };
    expect(
      probeFailure(
        {
          ...base,
          signal: 'SIGABRT',
          errors: [
            'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
            'qemu-system-x86_64: ../kvm.c:3183: Assertion failed.',
          ],
        },
        10_000,
      ),
    ).toBe('QEMU died (SIGABRT) starting a test guest: failed to set MSR 0x10a to 0x69');
    expect(
      probeFailure(
        { ...base, signal: 'SIGKILL', internalError: true, errors: ['KVM internal error. Suberror: 1'] },
        10_000,
      ),
    ).toBe('a test guest stopped with "KVM internal error. Suberror: 1"');
    expect(probeFailure({ ...base, signal: 'SIGKILL', timedOut: true }, 10_000)).toMatch(/did not finish within 10 s/);
    expect(
      probeFailure(
        { ...base, status: 1, errors: ['qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied'] },
        10_000,
      ),
    ).toBe('QEMU exited with status 1 starting a test guest: -accel kvm: failed to initialize kvm: Permission denied');
  });
  it('reads versions', () => {
    expect(parseVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)')).toEqual([7, 2, 22]);
    expect(parseVersion('qemu-img version 8.1 (x)')).toEqual([8, 1, 0]);
    expect(parseVersion('nothing')).toBeNull();
  });
});

describe('pim doctor: the runtime dir (looked at, never changed)', () => {
  const uid = process.getuid!();
  it('missing, with its parent: ok (pim makes it); without its parent: fail', () => {
    expect(runtimeDirCheck(join(tmp, 'pim'), uid)).toMatchObject({
      status: 'ok',
      detail: expect.stringMatching(/does not exist yet/),
    });
    expect(runtimeDirCheck(join(tmp, 'no', 'pim'), uid)).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(/XDG_RUNTIME_DIR/),
    });
    expect(fs.existsSync(join(tmp, 'pim'))).toBe(false);
  });
  it('0700: ok; 0755: warn, left as it is; 0777: fail, left as it is; not ours: fail; a file: fail', () => {
    const d = join(tmp, 'pim');
    fs.mkdirSync(d, { mode: 0o700 });
    fs.chmodSync(d, 0o700);
    expect(runtimeDirCheck(d, uid).status).toBe('ok');
    fs.chmodSync(d, 0o755);
    expect(runtimeDirCheck(d, uid)).toMatchObject({ status: 'warn', detail: expect.stringMatching(/mode 755/) });
    fs.chmodSync(d, 0o777);
    expect(runtimeDirCheck(d, uid)).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(/writable by others \(mode 777\)/),
    });
    expect(fs.statSync(d).mode & 0o777).toBe(0o777);
    fs.chmodSync(d, 0o700);
    expect(runtimeDirCheck(d, uid + 1)).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(/owned by uid/),
    });
    const f = join(tmp, 'file');
    fs.writeFileSync(f, '');
    expect(runtimeDirCheck(f, uid)).toMatchObject({ status: 'fail', detail: expect.stringMatching(/not a directory/) });
  });
  it('a path that leaves VM names too little room in a socket path: warn', () => {
    const d = join(tmp, 'x'.repeat(60), 'pim');
    fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    expect(runtimeDirCheck(d, uid)).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/VM names over \d+ characters do not fit/),
    });
  });
});

describe("pim doctor: qemu-bridge-helper's bridge.conf", () => {
  it('reads allow, deny and include lines, and comments', () => {
    const inc = join(tmp, 'more.conf');
    fs.writeFileSync(inc, 'allow br1\n');
    const conf = join(tmp, 'bridge.conf');
    fs.writeFileSync(
      conf,
      `# bridges\nallow br0   # the LAN\ndeny br9\ninclude ${inc}\ninclude ${join(tmp, 'missing.conf')}\nnonsense\n`,
    );
    const acl = readBridgeAcl(conf);
    expect(acl.allow).toEqual(['br0', 'br1']);
    expect(acl.deny).toEqual(['br9']);
    expect(acl.unreadable).toEqual([`${join(tmp, 'missing.conf')} (ENOENT)`]);
  });
  it.skipIf(!has('mkfifo'))('never blocks on a FIFO named there', () => {
    const fifo = join(tmp, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const conf = join(tmp, 'bridge.conf');
    fs.writeFileSync(conf, `allow br0\ninclude ${fifo}\n`);
    expect(readBridgeAcl(conf)).toEqual({ allow: ['br0'], deny: [], unreadable: [`${fifo} (not a regular file)`] });
  });
  it('ok when an allowed bridge exists; warn when none does, when nothing is allowed, when there is no file', () => {
    const conf = join(tmp, 'bridge.conf');
    fs.writeFileSync(conf, 'allow br0\nallow pimbr0\n');
    expect(bridgeConfCheck([conf], (b) => b === 'pimbr0')).toMatchObject({
      status: 'ok',
      detail: `${conf} allows br0 (no such bridge), pimbr0`,
    });
    expect(bridgeConfCheck([conf], () => false)).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/ip link add br0 type bridge/),
    });
    fs.writeFileSync(conf, 'allow all\n');
    expect(bridgeConfCheck([conf], () => false)).toMatchObject({
      status: 'ok',
      detail: expect.stringMatching(/every bridge/),
    });
    fs.writeFileSync(conf, '# nothing\n');
    expect(bridgeConfCheck([conf], () => true)).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/allows no bridge/),
    });
    expect(bridgeConfCheck([join(tmp, 'none.conf')], () => true)).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/^no .*none\.conf: --bridged needs/),
    });
  });
});

describe('pim doctor: sudo for bridged VMs, never prompting', () => {
  const facts = (o: Partial<SudoFacts>): SudoFacts => ({
    uid: 1000,
    helperSetuid: false,
    sudo: '/usr/bin/sudo',
    commands: ['/usr/bin/qemu-system-x86_64', '/usr/bin/chown', '/usr/bin/kill'],
    allowed: async () => true,
    ...o,
  });
  it('root and a setuid helper need none; all allowed is ok', async () => {
    expect((await sudoCheck(facts({ uid: 0, allowed: async () => false }))).status).toBe('ok');
    expect((await sudoCheck(facts({ helperSetuid: true, allowed: async () => false }))).detail).toMatch(/not needed/);
    expect(await sudoCheck(facts({}))).toMatchObject({
      status: 'ok',
      detail: 'sudo -n may run /usr/bin/qemu-system-x86_64, /usr/bin/chown, /usr/bin/kill',
    });
  });
  it('names what sudo -n refuses and the sudoers rule that allows it; no sudo at all is a warn too', async () => {
    const c = await sudoCheck(facts({ allowed: async (cmd) => !cmd.endsWith('chown') }));
    expect(c.status).toBe('warn');
    expect(c.detail).toMatch(
      /^sudo -n may not run \/usr\/bin\/chown: .*NOPASSWD: \/usr\/bin\/qemu-system-x86_64, \/usr\/bin\/chown, \/usr\/bin\/kill$/,
    );
    expect((await sudoCheck(facts({ sudo: null }))).status).toBe('warn');
  });
});

describe('completion: a positional completer sees the positionals before it', () => {
  it('hands the words typed so far to the completer of the next positional', async () => {
    const seen: string[][] = [];
    const tags: Completer = (c, positionals) => {
      seen.push([...(positionals ?? [])]);
      c(`tag-of-${positionals?.[0]}`, '');
    };
    const cmd = defineCommand({
      meta: { name: 'snap' },
      args: {
        name: { type: 'positional', required: true },
        action: { type: 'positional', required: true },
        tag: { type: 'positional', required: false, complete: tags } as never,
        json: { type: 'boolean' },
      },
    });
    const out = await answer(await node(cmd), ['dev', '--json', 'load', '']);
    expect(out).toBe('tag-of-dev\n:4\n');
    expect(seen).toEqual([['dev', 'load']]);
  });
});
