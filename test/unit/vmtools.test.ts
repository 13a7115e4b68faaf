/**
 * pim-wait, pim-forward, pim-exec and pim-ctl below their commands: the
 * parsing of what they take, QEMU's hostfwd rules, and the waits and the
 * guest-exec loop against stand-ins on real sockets (a fake guest agent on a
 * unix socket, TCP servers that behave like QEMU's forward, a runtime dir
 * with a log and a pidfile) — no QEMU here; test/bats/vmtools.bats runs them
 * against real guests.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { slow } from './slow.ts';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildQemuArgv, hostfwdRule, type VmSpec } from '../../lib/qemu/argv.ts';
import {
  checkForwards,
  formatForward,
  matchForwards,
  parseForward,
  parseForwardRef,
  requireUserNet,
  checkHostPortFree,
} from '../../lib/vm/forward.ts';
import { checkWaitable, parseWaitFor, waitSshBanner, waitUp, type WaitFor } from '../../lib/guest/wait.ts';
import { guestExec, readInput, spawnFailure, statusOf, SpawnFailed } from '../../lib/guest/exec.ts';
import { parseAction } from '../../lib/vm/ctl.ts';
import { vmFiles } from '../../lib/core/paths.ts';
import { qemuMarker, writeMeta, type RunningVm, type VmMeta } from '../../lib/vm/state.ts';
import { planNetwork } from '../../lib/vm/plan.ts';

describe('port forward specs', () => {
  it('takes [tcp:|udp:][BIND:]HOST:GUEST, tcp and 127.0.0.1 by default', () => {
    expect(parseForward('8080:80')).toEqual({ proto: 'tcp', bind: '127.0.0.1', host: 8080, guest: 80 });
    expect(parseForward('udp:5353:53')).toEqual({ proto: 'udp', bind: '127.0.0.1', host: 5353, guest: 53 });
    expect(parseForward('tcp:0.0.0.0:2222:22')).toEqual({ proto: 'tcp', bind: '0.0.0.0', host: 2222, guest: 22 });
    expect(parseForward('UDP:10.1.2.3:1:65535')).toEqual({ proto: 'udp', bind: '10.1.2.3', host: 1, guest: 65535 });
  });
  it.each([
    '8080',
    '80:',
    ':80',
    '0:80',
    '8080:65536',
    'sctp:1:2',
    'localhost:8080:80',
    '::1:8080:80',
    '1:2:3:4',
    'a:b',
    '8080:80x',
  ])('refuses %j with exit 64', (s) => {
    expect(() => parseForward(s)).toThrow(expect.objectContaining({ code: 64 }));
  });
  it('rm takes a spec or only its host side', () => {
    expect(parseForwardRef('8080')).toEqual({ proto: 'tcp', host: 8080 });
    expect(parseForwardRef('udp:5353')).toEqual({ proto: 'udp', host: 5353 });
    expect(parseForwardRef('0.0.0.0:8080')).toEqual({ proto: 'tcp', bind: '0.0.0.0', host: 8080 });
    expect(parseForwardRef('8080:80')).toEqual({ proto: 'tcp', host: 8080, guest: 80 });
    expect(parseForwardRef('127.0.0.1:8080:80')).toEqual({ proto: 'tcp', bind: '127.0.0.1', host: 8080, guest: 80 });
    expect(() => parseForwardRef('x')).toThrow(expect.objectContaining({ code: 64 }));
  });
  it('matches recorded forwards by protocol and host port, narrowed by bind and guest port', () => {
    const list = [parseForward('8080:80'), parseForward('0.0.0.0:8080:81'), parseForward('udp:8080:80')];
    expect(matchForwards(list, parseForwardRef('8080'))).toHaveLength(2);
    expect(matchForwards(list, parseForwardRef('0.0.0.0:8080'))).toEqual([list[1]]);
    expect(matchForwards(list, parseForwardRef('udp:8080'))).toEqual([list[2]]);
    expect(matchForwards(list, parseForwardRef('8080:99'))).toEqual([]);
    expect(matchForwards(list, parseForwardRef('8080:81'))).toEqual([list[1]]); // no address given: any
  });
  it('refuses two forwards on one host port and address, and the SSH port (64); udp and tcp may share a number', () => {
    expect(() => checkForwards([parseForward('8080:80'), parseForward('8080:81')])).toThrow(
      expect.objectContaining({ code: 64 }),
    );
    expect(() => checkForwards([parseForward('0.0.0.0:8080:80')], [parseForward('8080:81')])).toThrow(/clashes/);
    expect(() => checkForwards([parseForward('2222:80')], [], 2222)).toThrow(/SSH forward/);
    expect(() =>
      checkForwards([parseForward('8080:80'), parseForward('udp:8080:80'), parseForward('10.0.0.1:8080:80')]),
    ).not.toThrow();
    expect(formatForward(parseForward('udp:5353:53'))).toBe('udp:127.0.0.1:5353:53');
  });
  it('refuses a bridged VM with why (64)', () => {
    const vm = { name: 'b', meta: { bridged: true } } as unknown as RunningVm;
    expect(() => requireUserNet(vm)).toThrow(
      expect.objectContaining({ code: 64, message: expect.stringContaining('bridged') }),
    );
  });
  it('a host port in use is 75, before QEMU is asked', async () => {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as net.AddressInfo).port;
    try {
      await expect(checkHostPortFree(parseForward(`${port}:80`))).rejects.toMatchObject({ code: 75 });
      await expect(planNetwork('x', { forwards: [parseForward(`${port}:80`)] })).rejects.toMatchObject({ code: 75 });
      await expect(checkHostPortFree(parseForward(`udp:${port}:80`))).resolves.toBeUndefined();
    } finally {
      s.close();
    }
    await expect(planNetwork('x', { bridged: true, forwards: [parseForward('8080:80')] })).rejects.toMatchObject({
      code: 64,
    });
  });
});

describe('hostfwd rules in the argv', () => {
  const spec = (net: VmSpec['net']): VmSpec => ({
    name: 'dev',
    accel: 'tcg',
    mem: '256M',
    cpus: 1,
    files: { qmp: '/r/dev.qmp', ga: '/r/dev.ga', serial: '/r/dev.serial', pid: '/r/dev.pid', log: '/r/dev.log' },
    serial: 'socket',
    agent: true,
    net,
    daemonize: true,
    extra: [],
  });
  const netdev = (a: string[]) => a[a.indexOf('-netdev') + 1];
  it('one hostfwd per forward after the SSH one', () => {
    expect(netdev(buildQemuArgv(spec({ mode: 'user', sshPort: 2222 })))).toBe(
      'user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22',
    );
    const a = buildQemuArgv(
      spec({ mode: 'user', sshPort: 2222, forwards: [parseForward('8080:80'), parseForward('udp:0.0.0.0:5353:53')] }),
    );
    expect(netdev(a)).toBe(
      'user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53',
    );
    expect(hostfwdRule(parseForward('udp:5353:53'))).toBe('udp:127.0.0.1:5353-:53');
  });
});

describe('what to wait for', () => {
  it('parses agent, ssh and console:REGEX', () => {
    expect(parseWaitFor('agent')).toEqual({ kind: 'agent' });
    expect(parseWaitFor('ssh')).toEqual({ kind: 'ssh' });
    const c = parseWaitFor('console:login: *$') as Extract<WaitFor, { kind: 'console' }>;
    expect(c.kind).toBe('console');
    expect(c.re.test('debian login: ')).toBe(true);
  });
  it.each(['', 'http', 'console:', 'console:(', 'SSH'])('refuses %j with 64', (s) => {
    expect(() => parseWaitFor(s)).toThrow(expect.objectContaining({ code: 64 }));
  });
  it('refuses what the VM cannot signal (64)', () => {
    expect(() => checkWaitable('b', { agent: true, ssh: false }, [parseWaitFor('ssh')])).toThrow(/bridged/);
    expect(() => checkWaitable('n', { agent: false, ssh: true }, [parseWaitFor('agent')])).toThrow(
      /no guest-agent channel/,
    );
    expect(() => checkWaitable('n', { agent: false, ssh: false }, [parseWaitFor('console:x')])).not.toThrow();
  });
});

describe('pim-ctl actions', () => {
  it('takes the four actions, anything else is 64', () => {
    for (const a of ['pause', 'resume', 'reboot', 'reset']) expect(parseAction(a)).toBe(a);
    expect(() => parseAction('stop')).toThrow(expect.objectContaining({ code: 64 }));
  });
});

/** A TCP server on 127.0.0.1 whose n-th connection (from 0) is handled by `on(n, socket)`. */
async function tcpServer(
  on: (n: number, s: net.Socket) => void,
): Promise<{ port: number; close: () => void; count: () => number }> {
  let n = 0;
  const open = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
    s.on('error', () => undefined);
    on(n++, s);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    count: () => n,
    close: () => {
      srv.close();
      for (const s of open) s.destroy();
    },
  };
}

describe('waitSshBanner, against servers that behave like QEMU forwards', () => {
  it('skips connections that are accepted and closed, and returns the banner', async () => {
    const srv = await tcpServer((n, s) => (n < 3 ? s.destroy() : s.write('SSH-2.0-test_1\r\n')));
    try {
      const seen: string[] = [];
      await expect(
        waitSshBanner('127.0.0.1', srv.port, Date.now() + 10_000, undefined, (w) => seen.push(w)),
      ).resolves.toBe('SSH-2.0-test_1');
      expect(seen.some((w) => /closed without a banner/.test(w))).toBe(true);
    } finally {
      srv.close();
    }
  });
  it('does not wait on a connection that hangs (slirp retrying its SYN): a newer one gets the banner', async () => {
    // the first two connections stay silent forever; a sequential 10 s attempt would time out here
    const srv = await tcpServer((n, s) => (n < 2 ? undefined : s.write('SSH-2.0-late\r\n')));
    try {
      const t0 = Date.now();
      await expect(waitSshBanner('127.0.0.1', srv.port, Date.now() + 3_000)).resolves.toBe('SSH-2.0-late');
      expect(Date.now() - t0).toBeLessThan(slow(2_000));
    } finally {
      srv.close();
    }
  });
  it('probes a guest that takes long less and less often (a slow sshd is not made to fork for probe after probe)', async () => {
    // every connection is taken and left silent, as a slow guest's sshd does while it forks:
    // a probe every 500 ms would make 11 connections in 4 s; the growing hold makes about 6
    const srv = await tcpServer(() => undefined);
    try {
      const e = await waitSshBanner('127.0.0.1', srv.port, Date.now() + 4_000).catch((x) => x);
      expect(e).toMatchObject({ code: 75 });
      expect(srv.count()).toBeGreaterThanOrEqual(2);
      expect(srv.count()).toBeLessThanOrEqual(7);
    } finally {
      srv.close();
    }
  });
  it('something that is not SSH does not count; the deadline is 75 with what was seen', async () => {
    const srv = await tcpServer((_n, s) => s.end('HTTP/1.0 400 Bad Request\r\n\r\n'));
    try {
      const e = await waitSshBanner('127.0.0.1', srv.port, Date.now() + 800).catch((x) => x);
      expect(e).toMatchObject({ code: 75 });
      expect(e.message).toMatch(/answered "HTTP\/1.0 400 Bad Request", not an SSH banner/);
    } finally {
      srv.close();
    }
  });
  it('stops when the signal aborts, and leaves no connection open', async () => {
    const srv = await tcpServer(() => undefined);
    const ctl = new AbortController();
    const p = waitSshBanner('127.0.0.1', srv.port, Date.now() + 60_000, ctl.signal);
    setTimeout(() => ctl.abort(new Error('stop')), 300);
    await expect(p).rejects.toThrow('stop');
    srv.close();
  });
});

// --- a VM made of files: a runtime dir, a pidfile naming a process whose
// command line carries the VM's marker (as QEMU's does), a log, metadata and
// a fake guest agent on the VM's agent socket.

interface FakeVm {
  vm: RunningVm;
  dir: string;
  child: ChildProcess;
}

let tmp: string;
const saved = { ...process.env };
const children: ChildProcess[] = [];
const servers: net.Server[] = [];

beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimv-'));
  process.env.XDG_RUNTIME_DIR = tmp;
});
afterEach(() => {
  process.env = { ...saved };
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const s of servers.splice(0)) s.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function fakeVm(name = 'v1', meta: Partial<VmMeta> = {}): FakeVm {
  const dir = join(tmp, 'pim');
  fs.mkdirSync(dir, { mode: 0o700, recursive: true });
  const files = vmFiles(name, dir);
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)', qemuMarker(files)], { stdio: 'ignore' });
  children.push(child);
  fs.writeFileSync(files.pid, `${child.pid}\n`);
  fs.writeFileSync(files.log, '');
  const m: VmMeta = {
    name,
    kind: 'run',
    image: '/x.qcow2',
    pid: child.pid!,
    ssh_port: null,
    bridged: false,
    root: false,
    agent: true,
    accel: 'tcg',
    mem: '256M',
    cpus: 1,
    snapshot: true,
    owner: { uid: 0, user: 'root' },
    started: new Date().toISOString(),
    ...meta,
  };
  writeMeta(files, m);
  return { vm: { name, dir, files, state: 'running', pid: child.pid!, meta: m }, dir, child };
}

/** A guest agent on `path`: syncs as qemu-ga does; other commands go to `handle` (undefined: no reply). */
async function fakeAgent(
  path: string,
  handle: (m: { execute: string; arguments?: Record<string, unknown> }) => unknown,
  opts: { silentSyncs?: number } = {},
): Promise<{ log: Array<{ execute: string; arguments?: Record<string, unknown> }> }> {
  const log: Array<{ execute: string; arguments?: Record<string, unknown> }> = [];
  let syncs = 0;
  const srv = net.createServer((c) => {
    let buf = '';
    c.on('error', () => undefined);
    c.on('data', (d) => {
      buf += d.toString('latin1').replace(/\xff/g, '');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const m = JSON.parse(line);
        log.push(m);
        if (m.execute === 'guest-sync-delimited' || m.execute === 'guest-sync') {
          if (syncs++ < (opts.silentSyncs ?? 0)) continue; // an agent that is not up yet
          const reply = Buffer.from(JSON.stringify({ return: m.arguments.id }) + '\n');
          c.write(m.execute === 'guest-sync-delimited' ? Buffer.concat([Buffer.from([0xff]), reply]) : reply);
          continue;
        }
        const r = handle(m);
        if (r !== undefined) c.write(JSON.stringify(r) + '\n');
      }
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(path, r));
  return { log };
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('guestExec against a fake agent', () => {
  it('starts with capture-output and the input, polls with a growing back-off, decodes both streams', async () => {
    const { vm } = fakeVm();
    let polls = 0;
    const times: number[] = [];
    const { log } = await fakeAgent(vm.files.ga, (m) => {
      if (m.execute === 'guest-exec') return { return: { pid: 42 } };
      if (m.execute === 'guest-exec-status') {
        times.push(Date.now());
        return {
          return:
            ++polls < 6
              ? { exited: false }
              : { exited: true, exitcode: 3, 'out-data': b64('out\n'), 'err-data': b64('err\n') },
        };
      }
      return { error: { class: 'CommandNotFound', desc: m.execute } };
    });
    const r = await guestExec(vm, { path: 'sh', args: ['-c', 'x'], input: Buffer.from('stdin bytes') });
    expect(r).toMatchObject({ status: 3, exitcode: 3, signal: null, pid: 42, polls: 6 });
    expect(r.stdout.toString()).toBe('out\n');
    expect(r.stderr.toString()).toBe('err\n');
    const exec = log.find((m) => m.execute === 'guest-exec')!;
    expect(exec.arguments).toEqual({
      path: 'sh',
      arg: ['-c', 'x'],
      'capture-output': true,
      'input-data': b64('stdin bytes'),
    });
    // the pauses between polls grow
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    expect(gaps[gaps.length - 1]!).toBeGreaterThan(gaps[0]!);
  });

  it('a signal is 128+N; a program that is not there is 127', async () => {
    const { vm } = fakeVm();
    await fakeAgent(vm.files.ga, (m) => {
      if (m.execute === 'guest-exec') {
        if (m.arguments!.path === 'nosuch')
          return {
            error: {
              class: 'GenericError',
              desc: "Guest agent command failed, error was 'Failed to execute child process “nosuch” (No such file or directory)'",
            },
          };
        return { return: { pid: 7 } };
      }
      return { return: { exited: true, signal: 15 } };
    });
    expect((await guestExec(vm, { path: 'sh', args: [] })).status).toBe(143);
    const e = await guestExec(vm, { path: 'nosuch', args: [] }).catch((x) => x);
    expect(e).toBeInstanceOf(SpawnFailed);
    expect(e.status).toBe(127);
  });

  it("a timeout kills the command with the guest's kill through guest-exec, and is 75", async () => {
    const { vm } = fakeVm();
    let killed = false;
    const { log } = await fakeAgent(vm.files.ga, (m) => {
      if (m.execute === 'guest-exec') {
        if (m.arguments!.path === 'kill') {
          killed = true;
          return { return: { pid: 99 } };
        }
        return { return: { pid: 42 } };
      }
      const pid = m.arguments!.pid;
      if (pid === 99) return { return: { exited: true, exitcode: 0 } };
      return { return: killed ? { exited: true, signal: 9 } : { exited: false } };
    });
    const t0 = Date.now();
    const e = await guestExec(vm, { path: 'sleep', args: ['60'], timeoutMs: 600 }).catch((x) => x);
    expect(e).toMatchObject({ code: 75 });
    expect(e.message).toMatch(/sent SIGKILL to it \(pid 42 in the guest\).*it ended/);
    expect(Date.now() - t0).toBeLessThan(slow(3_000));
    expect(log.find((m) => m.arguments?.path === 'kill')!.arguments!.arg).toEqual(['-KILL', '42']);
  });

  it('a long command does not hold the agent: after the quick polls each poll connects anew', async () => {
    const { vm } = fakeVm();
    let polls = 0;
    const { log } = await fakeAgent(vm.files.ga, (m) => {
      if (m.execute === 'guest-exec') return { return: { pid: 1 } };
      return { return: ++polls < 12 ? { exited: false } : { exited: true, exitcode: 0 } };
    });
    await guestExec(vm, { path: 'sleep', args: ['2'] });
    const syncs = log.filter((m) => m.execute === 'guest-sync-delimited').length;
    expect(syncs).toBeGreaterThan(2); // one connection for the start and quick polls, then one per poll
  });

  it('reads stdin up to the limit; over it is 65', async () => {
    const { Readable } = await import('node:stream');
    await expect(readInput(Readable.from([Buffer.from('ab'), Buffer.from('c')]), 3)).resolves.toEqual(
      Buffer.from('abc'),
    );
    await expect(readInput(Readable.from([Buffer.from('ab'), Buffer.from('cd')]), 3)).rejects.toMatchObject({
      code: 65,
    });
  });

  it('maps statuses and spawn errors', () => {
    expect(statusOf({ exited: true, exitcode: 0 })).toBe(0);
    expect(statusOf({ exited: true, signal: 9 })).toBe(137);
    expect(spawnFailure('x', new Error('Failed to execute child process “x” (Permission denied)'))!.status).toBe(126);
    expect(spawnFailure('x', new Error('something else'))).toBeNull();
  });
});

describe('waitUp on a VM made of files', () => {
  it('console: a line written later matches; the line being written counts too', async () => {
    const { vm } = fakeVm();
    fs.appendFileSync(vm.files.log, 'booting\n');
    const p = waitUp(vm, [parseWaitFor('console:login: $')], { timeoutMs: 5_000 });
    setTimeout(() => fs.appendFileSync(vm.files.log, 'Debian\r\nhost login: '), 200);
    const [r] = await p;
    expect(r).toMatchObject({ name: 'v1', for: 'console:login: $', seen: 'host login:' });
  });

  it('console: logFrom skips what was written before (pim-ctl reboot --wait)', async () => {
    const { vm } = fakeVm();
    fs.appendFileSync(vm.files.log, 'ready\n');
    const from = fs.statSync(vm.files.log).size;
    const e = await waitUp(vm, [parseWaitFor('console:ready')], { timeoutMs: 500, logFrom: from }).catch((x) => x);
    expect(e).toMatchObject({ code: 75 });
    await expect(waitUp(vm, [parseWaitFor('console:ready')], { timeoutMs: 500 })).resolves.toHaveLength(1);
  });

  it('the timeout is 75 with the last console line', async () => {
    const { vm } = fakeVm();
    fs.appendFileSync(vm.files.log, 'Starting \x1b[1mthings\x1b[0m\n');
    const e = await waitUp(vm, [parseWaitFor('console:never')], { timeoutMs: 400 }).catch((x) => x);
    expect(e).toMatchObject({ code: 75 });
    expect(e.message).toContain('last seen: console: "Starting things"');
  });

  it('the VM stopping meanwhile (its pidfile goes) is 69, for every kind of wait', async () => {
    const { vm, child } = fakeVm();
    await fakeAgent(vm.files.ga, () => undefined, { silentSyncs: 1000 });
    const p = waitUp(vm, [parseWaitFor('console:never'), parseWaitFor('agent')], { timeoutMs: 10_000 });
    setTimeout(() => (child.kill('SIGKILL'), fs.rmSync(vm.files.pid)), 300);
    const t0 = Date.now();
    const e = await p.catch((x) => x);
    expect(e).toMatchObject({ code: 69 });
    expect(e.message).toMatch(/stopped while waiting for console:never and agent/);
    expect(Date.now() - t0).toBeLessThan(slow(3_000));
  });

  it('agent: a sync sent before the agent is up is answered once it is (the reply is the signal)', async () => {
    const { vm } = fakeVm();
    await fakeAgent(vm.files.ga, (m) => (m.execute === 'guest-info' ? { return: { version: '7.2.0' } } : undefined), {
      silentSyncs: 1,
    });
    const [r] = await waitUp(vm, [parseWaitFor('agent')], { timeoutMs: 8_000 });
    expect(r!.seen).toBe('qemu-ga 7.2.0');
  });

  it('ssh and agent together: both must answer', async () => {
    const srv = await tcpServer((n, s) => (n < 1 ? s.destroy() : s.write('SSH-2.0-x\r\n')));
    try {
      const { vm } = fakeVm('v2', { ssh_port: srv.port });
      await fakeAgent(vm.files.ga, (m) => (m.execute === 'guest-info' ? { return: { version: '9' } } : undefined));
      const r = await waitUp(vm, [parseWaitFor('ssh'), parseWaitFor('agent')], { timeoutMs: 5_000 });
      expect(r.map((x) => [x.for, x.seen])).toEqual([
        ['ssh', 'SSH-2.0-x'],
        ['agent', 'qemu-ga 9'],
      ]);
    } finally {
      srv.close();
    }
  });
});
