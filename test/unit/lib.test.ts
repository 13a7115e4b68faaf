import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkName, nameProblem } from '../../lib/core/names.ts';
import { checkSocketPath, ensureRuntimeDir, runtimeDirPath, vmFiles, configDir, imagesDir, cacheDir } from '../../lib/core/paths.ts';
import { buildQemuArgv, qemuEscape, qemuOpt, type VmSpec } from '../../lib/qemu/argv.ts';
import { formatRecords } from '../../lib/cli/output.ts';
import { parseArgv, defineCmd } from '../../lib/cli/command.ts';
import { JsonLines } from '../../lib/qemu/jsonlines.ts';
import { macFor } from '../../lib/qemu/host.ts';

describe('VM names', () => {
  it.each(['dev', 'web-1', 'a.b_c', 'X'.repeat(64), '9lives'])('accepts %s', (n) => {
    expect(nameProblem(n)).toBeNull();
    expect(checkName(n)).toBe(n);
  });
  it.each(['', '..', 'a/b', '-rf', '../etc', 'x'.repeat(65), 'a..b', '.hidden', 'sp ace', 'semi;colon', 'nul\0'])('refuses %j with exit 64', (n) => {
    expect(nameProblem(n)).not.toBeNull();
    expect(() => checkName(n)).toThrow(expect.objectContaining({ code: 64 }));
  });
});

describe('paths', () => {
  const saved = { ...process.env };
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(join(tmpdir(), 'pimu-'));
  });
  afterEach(() => {
    process.env = { ...saved };
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('follows XDG', () => {
    process.env.XDG_CONFIG_HOME = '/c';
    process.env.XDG_DATA_HOME = '/d';
    process.env.XDG_CACHE_HOME = '/k';
    process.env.XDG_RUNTIME_DIR = '/r';
    expect(configDir()).toBe('/c/pim');
    expect(imagesDir()).toBe('/d/pim/images');
    expect(cacheDir()).toBe('/k/pim');
    expect(runtimeDirPath()).toBe('/r/pim');
  });

  it('falls back to ~/.config etc. and /tmp/pim-$UID', () => {
    for (const k of ['XDG_CONFIG_HOME', 'XDG_DATA_HOME', 'XDG_CACHE_HOME', 'XDG_RUNTIME_DIR']) delete process.env[k];
    process.env.HOME = '/home/u';
    expect(configDir()).toBe('/home/u/.config/pim');
    expect(imagesDir()).toBe('/home/u/.local/share/pim/images');
    expect(cacheDir()).toBe('/home/u/.cache/pim');
    expect(runtimeDirPath()).toBe(`/tmp/pim-${process.getuid!()}`);
  });

  it('names each runtime file with a constant extension', () => {
    expect(vmFiles('dev', '/r/pim')).toEqual({
      qmp: '/r/pim/dev.qmp',
      ga: '/r/pim/dev.ga',
      serial: '/r/pim/dev.serial',
      pid: '/r/pim/dev.pid',
      log: '/r/pim/dev.log',
      meta: '/r/pim/dev.json',
      lock: '/r/pim/dev.lock',
      efivars: '/r/pim/dev.efivars.fd',
      stage: '/r/pim/dev.stage',
    });
  });

  it('checks a VM name once, when its reference is made (64, nothing created)', async () => {
    const { vmRef } = await import('../../lib/vm/ref.ts');
    expect(vmRef('dev', '/r/pim')).toMatchObject({ name: 'dev', dir: '/r/pim', files: { qmp: '/r/pim/dev.qmp' } });
    for (const bad of ['../x', '', '-x', 'a/b', 'x'.repeat(65)]) expect(() => vmRef(bad, '/nonexistent')).toThrow(expect.objectContaining({ code: 64 }));
  });

  it('creates the runtime dir 0700 and tightens a loose one', () => {
    process.env.XDG_RUNTIME_DIR = tmp;
    const d = ensureRuntimeDir();
    expect(d).toBe(join(tmp, 'pim'));
    expect(fs.statSync(d).mode & 0o777).toBe(0o700);
    fs.chmodSync(d, 0o755);
    ensureRuntimeDir();
    expect(fs.statSync(d).mode & 0o777).toBe(0o700);
  });

  it('refuses a runtime dir that others could write to (77), keeping what is in it untouched', () => {
    process.env.XDG_RUNTIME_DIR = tmp;
    const d = ensureRuntimeDir();
    fs.chmodSync(d, 0o777);
    fs.symlinkSync('/etc/passwd', join(d, 'victim.log'));
    expect(() => ensureRuntimeDir()).toThrow(expect.objectContaining({ code: 77, message: expect.stringContaining('writable by others') }));
    expect(fs.statSync(d).mode & 0o777).toBe(0o777);
    fs.chmodSync(d, 0o770);
    expect(() => ensureRuntimeDir()).toThrow(expect.objectContaining({ code: 77 }));
  });

  it('refuses a runtime dir that is not a directory', () => {
    process.env.XDG_RUNTIME_DIR = tmp;
    fs.writeFileSync(join(tmp, 'pim'), '');
    expect(() => ensureRuntimeDir()).toThrow(expect.objectContaining({ code: 73 }));
  });

  it('checks socket paths against the sun_path limit', () => {
    const limit = process.platform === 'darwin' ? 104 : 108;
    expect(checkSocketPath('/' + 'a'.repeat(limit - 2))).toBeTruthy(); // limit-1 bytes + NUL fits
    expect(() => checkSocketPath('/' + 'a'.repeat(limit - 1))).toThrow(expect.objectContaining({ code: 73 }));
  });
});

describe('QEMU argv', () => {
  it('doubles commas in option values', () => {
    expect(qemuEscape('/a,b,,c')).toBe('/a,,b,,,,c');
    expect(qemuOpt('socket', { id: 'x', path: '/tmp/a,b', server: true, wait: false })).toBe('socket,id=x,path=/tmp/a,,b,server=on,wait=off');
  });

  const spec = (over: Partial<VmSpec> = {}): VmSpec => ({
    name: 'dev',
    accel: 'tcg',
    mem: '256M',
    cpus: 1,
    files: { qmp: '/r/dev.qmp', ga: '/r/dev.ga', serial: '/r/dev.serial', pid: '/r/dev.pid', log: '/r/dev.log' },
    disk: { path: '/img/my,disk.qcow2', format: 'qcow2', snapshot: true },
    serial: 'socket',
    agent: true,
    net: { mode: 'user', sshPort: 2222 },
    daemonize: true,
    extra: ['-device', 'virtio-balloon'],
    ...over,
  });

  it('builds a headless user-mode VM', () => {
    const a = buildQemuArgv(spec());
    const opt = (flag: string) => a.filter((_, i) => a[i - 1] === flag);
    expect(opt('-machine')).toEqual(['q35,accel=tcg']);
    expect(opt('-display')).toEqual(['none']);
    expect(opt('-qmp')).toEqual(['unix:/r/dev.qmp,server=on,wait=off']);
    expect(opt('-chardev')).toContain('socket,id=ser0,path=/r/dev.serial,server=on,wait=off,logfile=/r/dev.log,logappend=on');
    expect(opt('-chardev')).toContain('socket,id=ga0,path=/r/dev.ga,server=on,wait=off');
    expect(opt('-device')).toContain('virtserialport,bus=vser0.0,chardev=ga0,name=org.qemu.guest_agent.0');
    expect(opt('-drive')).toEqual(['file=/img/my,,disk.qcow2,format=qcow2,if=none,id=disk0,snapshot=on']);
    expect(opt('-netdev')).toEqual(['user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22']);
    expect(a).toContain('-daemonize');
    expect(a.slice(-2)).toEqual(['-device', 'virtio-balloon']); // passthrough words last, untouched
    expect(a).not.toContain('-cpu'); // no -cpu host under TCG
  });

  it('uses -cpu host with KVM, pflash for UEFI, the bridge helper, stdio for --console', () => {
    const a = buildQemuArgv(
      spec({
        accel: 'kvm',
        uefi: { code: '/fw/CODE.fd', vars: '/img/dev.efivars.fd' },
        net: { mode: 'bridge', bridge: 'pimbr0', helper: '/usr/lib/qemu/qemu-bridge-helper', mac: '52:54:00:01:02:03' },
        serial: 'stdio',
        daemonize: false,
      }),
    );
    expect(a.join(' ')).toContain('-cpu host');
    expect(a).toContain('if=pflash,format=raw,readonly=on,file=/fw/CODE.fd');
    expect(a).toContain('if=pflash,format=raw,file=/img/dev.efivars.fd');
    expect(a).toContain('bridge,id=net0,br=pimbr0,helper=/usr/lib/qemu/qemu-bridge-helper');
    expect(a).toContain('virtio-net-pci,netdev=net0,mac=52:54:00:01:02:03');
    expect(a).toContain('stdio,id=ser0,mux=on,signal=off,logfile=/r/dev.log,logappend=on');
    expect(a).not.toContain('-daemonize');
  });

  it('gives each VM name a stable, distinct, locally administered MAC', () => {
    expect(macFor('dev')).toBe(macFor('dev'));
    expect(macFor('dev')).not.toBe(macFor('web'));
    expect(macFor('dev')).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
  });
});

describe('output', () => {
  const recs = [
    { name: 'dev', state: 'running', pid: 42, bridged: false },
    { name: 'web', state: 'running', pid: null, bridged: true },
  ];
  it('prints tab-separated lines, name first, in a pipe', () => {
    expect(formatRecords(recs, ['state', 'pid', 'bridged'])).toBe('dev\trunning\t42\tno\nweb\trunning\t-\tyes\n');
  });
  it('prints names only with -q and JSON lines with --json', () => {
    expect(formatRecords(recs, ['state'], { quiet: true })).toBe('dev\nweb\n');
    const lines = formatRecords(recs, ['state'], { json: true }).trim().split('\n');
    expect(lines.map((l) => JSON.parse(l))).toEqual(recs);
  });
  it('aligns a table with a header on a terminal', () => {
    const out = formatRecords(recs, ['state', 'pid'], { tty: true }).split('\n');
    expect(out[0]).toMatch(/^NAME\s+STATE\s+PID$/);
    expect(out[1]).toMatch(/^dev\s+running\s+42$/);
  });
  it('prints nothing for no records', () => {
    expect(formatRecords([], ['state'])).toBe('');
  });
});

describe('argv parsing', () => {
  const cmd = defineCmd({
    name: 'pim-x',
    summary: 's',
    usage: 'NAME [-- qemu args]',
    args: {
      json: { type: 'boolean' },
      quiet: { type: 'boolean', alias: 'q' },
      sshPort: { type: 'string' },
    },
    positionals: { min: 1, max: 1 },
    passthrough: true,
    run() {},
  });
  it('splits at -- and keeps the words after it untouched', () => {
    const ctx = parseArgv(cmd, ['dev', '--json', '--', '--help', '-device', 'x,y=1', '--']);
    expect(ctx).not.toBe('help');
    if (ctx === 'help') return;
    expect(ctx.positionals).toEqual(['dev']);
    expect(ctx.rest).toEqual(['--help', '-device', 'x,y=1', '--']);
    expect(ctx.args.json).toBe(true);
  });
  it('treats --help before -- as help', () => {
    expect(parseArgv(cmd, ['dev', '--help'])).toBe('help');
  });
  it('refuses unknown flags (a typo like --jsno) with exit 64', () => {
    expect(() => parseArgv(cmd, ['dev', '--jsno'])).toThrow(expect.objectContaining({ code: 64, message: expect.stringContaining('--jsno') }));
    expect(() => parseArgv(cmd, ['dev', '-z'])).toThrow(expect.objectContaining({ code: 64 }));
  });
  it('accepts kebab-case and inline values, and counts positionals', () => {
    const ctx = parseArgv(cmd, ['dev', '--ssh-port=2222', '-q']);
    if (ctx === 'help') throw new Error('help');
    expect(ctx.args.sshPort).toBe('2222');
    expect(ctx.args.quiet).toBe(true);
    expect(() => parseArgv(cmd, [])).toThrow(expect.objectContaining({ code: 64 }));
    expect(() => parseArgv(cmd, ['a', 'b'])).toThrow(expect.objectContaining({ code: 64 }));
    expect(() => parseArgv(cmd, ['dev', '--ssh-port'])).toThrow(expect.objectContaining({ code: 64 }));
  });
  it('refuses -- for a command that takes no passthrough words', () => {
    expect(() => parseArgv({ ...cmd, passthrough: false }, ['dev', '--', 'x'])).toThrow(expect.objectContaining({ code: 64 }));
  });
});

describe('JsonLines', () => {
  it('splits lines across chunks and reports garbage', () => {
    const d = new JsonLines();
    expect(d.push(Buffer.from('{"a":')).messages).toEqual([]);
    const r = d.push(Buffer.from('1}\r\nnot json\n{"b":2}\n'));
    expect(r.messages).toEqual([{ a: 1 }, { b: 2 }]);
    expect(r.garbage).toEqual(['not json']);
  });
});

describe('the VM lock', () => {
  it('is held while taken, refuses a second taker with exit 75, and is free once released', async () => {
    const { acquireLock, lockHeld } = await import('../../lib/core/lock.ts');
    const file = join(tmpdir(), `pimu-lock-${process.pid}-${Date.now()}.lock`);
    expect(await lockHeld(file)).toBe(false);
    const lock = await acquireLock(file, 'VM x');
    expect(await lockHeld(file)).toBe(true);
    await expect(acquireLock(file, 'VM x')).rejects.toMatchObject({ code: 75 });
    expect(await lockHeld(file + '.other')).toBe(false);
    await lock.release();
    expect(await lockHeld(file)).toBe(false);
    const again = await acquireLock(file, 'VM x');
    await again.release();
  });
});

describe('the pidfile lock (the VM lock off Linux)', () => {
  const lockTs = new URL('../../lib/core/lock.ts', import.meta.url).pathname;
  it('holds our pid, refuses a second taker, takes over a dead holder, and frees on release', async () => {
    const { pidfileLock } = await import('../../lib/core/lock.ts');
    const fs = await import('node:fs');
    const file = join(tmpdir(), `pimu-plock-${process.pid}-${Date.now()}.lock`);
    const lock = await pidfileLock(file, 'ISO x');
    expect(fs.readFileSync(file, 'utf8').trim()).toBe(String(process.pid));
    await expect(pidfileLock(file, 'ISO x')).rejects.toMatchObject({ code: 75 });
    await lock.release();
    expect(fs.existsSync(file)).toBe(false);
    // a holder that died: its pid is in the file, nothing is alive there
    const { spawnSync } = await import('node:child_process');
    const dead = spawnSync('sh', ['-c', 'echo $$'], { encoding: 'utf8' }).stdout.trim();
    fs.writeFileSync(file, dead + '\n');
    const taken = await pidfileLock(file, 'ISO x');
    expect(fs.readFileSync(file, 'utf8').trim()).toBe(String(process.pid));
    await taken.release();
  });
  it('is taken by exactly one of several processes racing for it, also when the old holder is dead', async () => {
    const { spawn } = await import('node:child_process');
    const fs = await import('node:fs');
    for (const stale of [false, true]) {
      const file = join(tmpdir(), `pimu-race-${process.pid}-${Date.now()}-${stale}.lock`);
      if (stale) fs.writeFileSync(file, '999999999\n');
      const script = `import { pidfileLock } from ${JSON.stringify(lockTs)};
        try { const l = await pidfileLock(process.argv[1], 'x'); console.log('got'); await new Promise((r) => setTimeout(r, 400)); await l.release(); }
        catch (e) { console.log(e.code === 75 ? 'busy' : 'error ' + e.message); }`;
      const runs = Array.from({ length: 6 }, () =>
        new Promise<string>((resolve) => {
          const c = spawn(process.execPath, ['--input-type=module', '-e', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          c.stdout!.on('data', (d) => (out += d));
          c.on('close', () => resolve(out.trim()));
        }),
      );
      const results = await Promise.all(runs);
      expect(results.filter((r) => r === 'got')).toHaveLength(1);
      expect(results.filter((r) => r === 'busy')).toHaveLength(5);
      fs.rmSync(file, { force: true });
    }
  }, 20_000);
});

describe('private storage', () => {
  it("makes a pim directory 0700, and tightens pim's own root above it, never what is above that", async () => {
    const { ensurePrivateDir } = await import('../../lib/core/fs.ts');
    const fs = await import('node:fs');
    const base = fs.mkdtempSync(join(tmpdir(), 'pimu-priv-'));
    fs.chmodSync(base, 0o755);
    fs.mkdirSync(join(base, 'pim'), { mode: 0o755 });
    fs.chmodSync(join(base, 'pim'), 0o755);
    ensurePrivateDir(join(base, 'pim', 'kboot', 'x'));
    const mode = (p: string) => fs.statSync(p).mode & 0o777;
    expect([mode(base), mode(join(base, 'pim')), mode(join(base, 'pim', 'kboot')), mode(join(base, 'pim', 'kboot', 'x'))]).toEqual([0o755, 0o700, 0o700, 0o700]);
    fs.symlinkSync('/tmp', join(base, 'pim', 'link'));
    expect(() => ensurePrivateDir(join(base, 'pim', 'link'))).toThrow(expect.objectContaining({ code: 73 }));
    fs.rmSync(base, { recursive: true, force: true });
  });
});
