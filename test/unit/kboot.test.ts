import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bzPayload, checkKernel, findPanic, guestEnv, hasPvhNote, initScript, OutputScanner, parseShare, RS, shq } from '../../lib/kboot/guest.ts';
import { ninepArgs, virtiofsArgs } from '../../lib/qemu/share.ts';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimk-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('OutputScanner', () => {
  const tok = 'abc123';
  const run = (chunks: string[]) => {
    let out = '';
    const s = new OutputScanner(tok, (x) => (out += x));
    for (const c of chunks) s.push(c);
    return { s, out };
  };
  it('passes output through and finds ready and exit', () => {
    const { s, out } = run([`${RS}PIM-READY-${tok}\nhello\nwor`, `ld${RS}PIM-EXIT-${tok}:3\n`]);
    expect(s.ready).toBe(true);
    expect(s.status).toBe(3);
    expect(out).toBe('hello\nworld');
  });
  it('handles markers split at any byte', () => {
    const all = `${RS}PIM-READY-${tok}\nab\x1ecd${RS}PIM-EXIT-${tok}:42\n`;
    for (let i = 1; i < all.length; i++) {
      const { s, out } = run([...all.slice(0, i)].length ? [all.slice(0, i), all.slice(i)] : [all]);
      expect(s.status).toBe(42);
      expect(out).toBe('ab\x1ecd');
    }
  });
  it('ignores markers with another token', () => {
    const { s, out } = run([`${RS}PIM-EXIT-other:1\n`, `${RS}PIM-EXIT-${tok}:0\n`]);
    expect(s.status).toBe(0);
    expect(out).toBe(`${RS}PIM-EXIT-other:1\n`);
  });
  it('reports a failure', () => {
    const { s } = run([`${RS}PIM-FAIL-${tok}:cannot mount share x\n`]);
    expect(s.failure).toBe('cannot mount share x');
  });
});

describe('kernel checks', () => {
  it('refuses a missing kernel with 66 and a non-bzImage with 65', () => {
    expect(() => checkKernel(join(tmp, 'nope'))).toThrow(expect.objectContaining({ code: 66 }));
    fs.writeFileSync(join(tmp, 'k'), Buffer.alloc(4096, 1));
    expect(() => checkKernel(join(tmp, 'k'))).toThrow(expect.objectContaining({ code: 65 }));
  });
  it('accepts a bzImage header and finds its payload', () => {
    const b = Buffer.alloc(0x400);
    b.write('HdrS', 0x202, 'latin1');
    b.writeUInt16LE(0x20f, 0x206);
    b[0x1f1] = 3;
    b.writeUInt32LE(0x100, 0x248);
    b.writeUInt32LE(0x50, 0x24c);
    fs.writeFileSync(join(tmp, 'bz'), b);
    expect(checkKernel(join(tmp, 'bz'))).toBe('bzimage');
    expect(bzPayload(b)).toEqual({ offset: 4 * 512 + 0x100, length: 0x50 });
  });
  it('finds the PVH note in an ELF', () => {
    const e = Buffer.alloc(256);
    e.writeUInt32BE(0x7f454c46, 0);
    e[4] = 2;
    e.writeBigUInt64LE(64n, 0x20);
    e.writeUInt16LE(56, 0x36);
    e.writeUInt16LE(1, 0x38);
    e.writeUInt32LE(4, 64); // PT_NOTE
    e.writeBigUInt64LE(128n, 64 + 8);
    e.writeBigUInt64LE(24n, 64 + 32);
    e.writeUInt32LE(4, 128);
    e.writeUInt32LE(8, 132);
    e.writeUInt32LE(18, 136);
    e.write('Xen\0', 140, 'latin1');
    expect(hasPvhNote(e)).toBe(true);
    e.writeUInt32LE(17, 136);
    expect(hasPvhNote(e)).toBe(false);
  });
});

describe('panic detection', () => {
  it('finds the panic and the lines before it', () => {
    const log = ['boot', 'a', 'Kernel panic - not syncing: Attempted to kill init!', 'Kernel Offset: x'].join('\r\n');
    expect(findPanic(log)).toEqual(['boot', 'a', 'Kernel panic - not syncing: Attempted to kill init!', 'Kernel Offset: x']);
    expect(findPanic('all fine\n')).toBeNull();
  });
});

describe('shares', () => {
  it('parses DIR[:TAG], refuses a missing dir (66) and duplicate tags', () => {
    const used = new Set<string>();
    fs.mkdirSync(join(tmp, 'my dir'));
    expect(parseShare(join(tmp, 'my dir'), used)).toEqual({ dir: join(tmp, 'my dir'), tag: 'my_dir' });
    expect(parseShare(`${join(tmp, 'my dir')}:src`, used).tag).toBe('src');
    expect(parseShare(join(tmp, 'my dir'), used).tag).toBe('my_dir2');
    expect(() => parseShare(`${tmp}:src`, used)).toThrow(expect.objectContaining({ code: 64 }));
    expect(() => parseShare(join(tmp, 'nope'), used)).toThrow(expect.objectContaining({ code: 66 }));
  });
  it('builds 9p and virtiofs arguments with commas escaped', () => {
    expect(ninepArgs([{ dir: '/a,b', tag: 't' }])).toEqual(['-virtfs', 'local,path=/a,,b,mount_tag=t,security_model=none,id=fs0']);
    const v = virtiofsArgs([{ dir: '/a', tag: 't', socket: '/r/s' }], '512M');
    expect(v).toContain('memory-backend-memfd,id=pimmem,size=512M,share=on');
    expect(v).toContain('vhost-user-fs-pci,chardev=vfs0,tag=t,queue-size=1024');
  });
});

describe('guest init', () => {
  it('quotes settings for sh', () => {
    expect(shq("it's")).toBe(`'it'\\''s'`);
    const env = guestEnv({ token: 't', mode: 'exec', out: '/dev/ttyS1', fs: '9p', shares: [{ dir: '/x', tag: 'a' }, { dir: '/y', tag: 'b' }] });
    expect(env).toContain("PIM_SHARES='a b'");
    expect(env).toContain("PIM_ROOT=''");
  });
  it('is a shell script with the markers', () => {
    const s = initScript('/pim/bin/sh');
    expect(s.startsWith('#!/pim/bin/sh\n')).toBe(true);
    expect(s).toContain('PIM-EXIT-%s:%d');
    expect(s).toContain('poweroff -f');
  });
});

describe('VmSpec additions for kboot', async () => {
  const { buildQemuArgv } = await import('../../lib/qemu/argv.ts');
  const base = {
    name: 'k',
    accel: 'tcg' as const,
    mem: '256M',
    cpus: 1,
    files: { qmp: '/r/k.qmp', ga: '/r/k.ga', serial: '/r/k.serial', pid: '/r/k.pid', log: '/r/k.log' },
    serial: 'socket' as const,
    agent: false,
    net: { mode: 'none' as const },
    daemonize: true,
    extra: [],
  };
  it('keeps virtio-rng and reboots by default (pim-run unchanged)', () => {
    const a = buildQemuArgv(base);
    expect(a).toContain('virtio-rng-pci');
    expect(a).not.toContain('-no-reboot');
  });
  it('drops virtio-rng and adds -no-reboot when asked', () => {
    const a = buildQemuArgv({ ...base, rng: false, noReboot: true, machine: 'microvm', kernel: { kernel: '/k', initrd: '/i', append: 'quiet' } });
    expect(a).not.toContain('virtio-rng-pci');
    expect(a).toContain('-no-reboot');
    expect(a.join(' ')).toContain('-machine microvm,accel=tcg');
    expect(a.join(' ')).toContain('-kernel /k -initrd /i -append quiet');
  });
});
