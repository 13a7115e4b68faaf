import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { slow } from './slow.ts';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import {
  bootArchive,
  findPanic,
  guestEnv,
  INIT_SCRIPT,
  OutputScanner,
  pimBaseArchive,
  RS,
  shq,
  staticBusybox,
  type GuestSettings,
} from '../../lib/kboot/guest.ts';
import { bzPayload, checkKernel, elfProblem, bufferBytes, hasPvhNote, pvhKernel } from '../../lib/kboot/kernel.ts';
import { checkInitrd, resolveInput } from '../../lib/kboot/input.ts';
import { ninepArgs, parseShare, virtiofsArgs } from '../../lib/qemu/share.ts';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimk-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const has = (cmd: string, args = ['--version']) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
const TESTBED =
  process.env.PIM_TESTBED_DIR ??
  join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '/root', '.cache'), 'pim', 'testbed');
const testbedKernel = join(TESTBED, 'generic', 'vmlinuz');
const mode = (p: string) => fs.statSync(p).mode & 0o777;

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
      const { s, out } = run([all.slice(0, i), all.slice(i)]);
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

// ---- kernels: a synthetic x86-64 ELF with the PVH note, wrapped in a bzImage header

/** An x86-64 ELF: one PT_LOAD (its body) and one PT_NOTE (the PVH entry note unless `pvh` is false). */
function makeElf(opts: { pvh?: boolean; body?: number } = {}): Buffer {
  const body = opts.body ?? 8192;
  const e = Buffer.alloc(0x100 + body, 0x90);
  e.fill(0, 0, 0x100);
  e.writeUInt32BE(0x7f454c46, 0);
  e[4] = 2; // ELFCLASS64
  e[5] = 1; // little-endian
  e.writeUInt16LE(62, 0x12); // x86-64
  e.writeBigUInt64LE(64n, 0x20); // phoff
  e.writeUInt16LE(56, 0x36);
  e.writeUInt16LE(2, 0x38);
  e.writeUInt32LE(1, 64); // PT_LOAD: the body
  e.writeBigUInt64LE(0x100n, 64 + 8);
  e.writeBigUInt64LE(BigInt(body), 64 + 32);
  e.writeUInt32LE(4, 120); // PT_NOTE at 0xb0
  e.writeBigUInt64LE(0xb0n, 120 + 8);
  e.writeBigUInt64LE(24n, 120 + 32);
  e.writeUInt32LE(4, 0xb0);
  e.writeUInt32LE(8, 0xb4);
  e.writeUInt32LE(opts.pvh === false ? 17 : 18, 0xb8);
  e.write('Xen\0', 0xbc, 'latin1');
  return e;
}

/** A bzImage around `payload`: boot protocol 2.15, one setup sector, payload after it, then some trailing bytes. */
function makeBzImage(payload: Buffer, opts: { declared?: number } = {}): Buffer {
  const head = Buffer.alloc(2 * 512);
  head[0x1f1] = 1;
  head.write('HdrS', 0x202, 'latin1');
  head.writeUInt16LE(0x20f, 0x206);
  head.writeUInt32LE(0, 0x248);
  head.writeUInt32LE(opts.declared ?? payload.length, 0x24c);
  return Buffer.concat([head, payload, Buffer.alloc(512, 0xcc)]);
}

const xz = (b: Buffer) => execFileSync('xz', ['-c', '--check=crc32'], { input: b, maxBuffer: 1 << 28 });
const cacheKey = (bz: Buffer) => createHash('sha256').update(bz).digest('hex').slice(0, 32);
const vmlinuxFiles = (cache: string) =>
  fs.existsSync(cache) ? fs.readdirSync(cache).filter((f) => f.startsWith('vmlinux-')) : [];

describe('kernel checks', () => {
  it('refuses a missing kernel (66), a directory (66, not EISDIR), a device (66), a non-kernel file (65)', () => {
    expect(() => checkKernel(join(tmp, 'nope'))).toThrow(expect.objectContaining({ code: 66 }));
    expect(() => checkKernel(tmp)).toThrow(
      expect.objectContaining({ code: 66, message: expect.stringContaining('is a directory') }),
    );
    expect(() => checkKernel('/dev/null')).toThrow(
      expect.objectContaining({ code: 66, message: expect.stringContaining('is a device') }),
    );
    fs.writeFileSync(join(tmp, 'k'), Buffer.alloc(4096, 1));
    expect(() => checkKernel(join(tmp, 'k'))).toThrow(expect.objectContaining({ code: 65 }));
  });
  it('accepts a bzImage header and finds its payload; a bzImage cut short is 65', () => {
    const bz = makeBzImage(Buffer.alloc(0x50, 7));
    fs.writeFileSync(join(tmp, 'bz'), bz);
    expect(checkKernel(join(tmp, 'bz'))).toBe('bzimage');
    expect(bzPayload(bz)).toEqual({ offset: 2 * 512, length: 0x50 });
    fs.writeFileSync(join(tmp, 'cut'), bz.subarray(0, 2 * 512 + 0x20));
    expect(() => checkKernel(join(tmp, 'cut'))).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringContaining('cut short') }),
    );
  });
  it('finds the PVH note in a whole ELF, and says why another is no PVH kernel', () => {
    expect(hasPvhNote(makeElf())).toBe(true);
    expect(elfProblem(bufferBytes(makeElf({ pvh: false })))).toEqual({
      why: expect.stringContaining('no PVH entry note'),
      whole: true,
    });
    const cut = makeElf().subarray(0, 0x1000);
    expect(hasPvhNote(cut)).toBe(false);
    expect(elfProblem(bufferBytes(cut))).toEqual({ why: expect.stringContaining('cut short'), whole: false });
    expect(elfProblem(bufferBytes(makeElf().subarray(0, 100)))).toEqual({
      why: expect.stringContaining('program headers'),
      whole: false,
    });
  });
  it('takes an ELF vmlinux with the PVH note, refuses an ELF without one with 65 (--kernel /bin/true)', () => {
    fs.writeFileSync(join(tmp, 'vmlinux'), makeElf());
    expect(checkKernel(join(tmp, 'vmlinux'))).toBe('elf');
    fs.writeFileSync(join(tmp, 'nopvh'), makeElf({ pvh: false }));
    expect(() => checkKernel(join(tmp, 'nopvh'))).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringContaining('no PVH entry note') }),
    );
  });
  it.skipIf(process.arch !== 'x64')('refuses /bin/true as a kernel with 65', () => {
    expect(() => checkKernel('/bin/true')).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringContaining('ELF file but no kernel') }),
    );
  });
});

describe('PVH extraction: only a whole kernel is cached', () => {
  const cache = () => join(tmp, 'cache');
  it.skipIf(!has('xz'))('extracts an xz payload once, 0600 in a 0700 cache, and reuses it', async () => {
    const elf = makeElf();
    const bz = makeBzImage(xz(elf));
    fs.writeFileSync(join(tmp, 'bz'), bz);
    const out = await pvhKernel(join(tmp, 'bz'), cache());
    expect(out).toBe(join(cache(), `vmlinux-${cacheKey(bz)}`));
    expect(fs.readFileSync(out!).equals(elf)).toBe(true);
    expect(mode(out!)).toBe(0o600);
    expect(mode(cache())).toBe(0o700);
    expect(await pvhKernel(join(tmp, 'bz'), cache())).toBe(out);
  });
  it.skipIf(!has('xz'))(
    'caches nothing for a payload cut short (xz fails): the bzImage is booted as it is',
    async () => {
      const payload = xz(makeElf({ body: 64 * 1024 }));
      // the header says the payload is half as long: xz sees a stream that stops in the middle
      fs.writeFileSync(join(tmp, 'bz'), makeBzImage(payload, { declared: payload.length >> 1 }));
      expect(await pvhKernel(join(tmp, 'bz'), cache())).toBeNull();
      expect(vmlinuxFiles(cache())).toEqual([]); // nor a .none: it is not a verdict on a whole kernel
    },
  );
  it.skipIf(!has('xz'))('caches nothing when xz succeeds on a vmlinux that is itself cut short', async () => {
    fs.writeFileSync(join(tmp, 'bz'), makeBzImage(xz(makeElf().subarray(0, 0x1000))));
    expect(await pvhKernel(join(tmp, 'bz'), cache())).toBeNull();
    expect(vmlinuxFiles(cache())).toEqual([]);
  });
  it.skipIf(!has('xz'))('remembers a whole kernel without the PVH note (.none, 0600)', async () => {
    const bz = makeBzImage(xz(makeElf({ pvh: false })));
    fs.writeFileSync(join(tmp, 'bz'), bz);
    expect(await pvhKernel(join(tmp, 'bz'), cache())).toBeNull();
    expect(vmlinuxFiles(cache())).toEqual([`vmlinux-${cacheKey(bz)}.none`]);
    expect(mode(join(cache(), `vmlinux-${cacheKey(bz)}.none`))).toBe(0o600);
  });
  it.skipIf(!has('xz'))('replaces a damaged cache entry instead of booting it', async () => {
    const elf = makeElf();
    const bz = makeBzImage(xz(elf));
    fs.writeFileSync(join(tmp, 'bz'), bz);
    fs.mkdirSync(cache(), { recursive: true });
    fs.writeFileSync(join(cache(), `vmlinux-${cacheKey(bz)}`), elf.subarray(0, 0x800)); // what the old code could leave
    const out = await pvhKernel(join(tmp, 'bz'), cache());
    expect(fs.readFileSync(out!).equals(elf)).toBe(true);
  });
  it('extracts a gzip payload', async () => {
    const elf = makeElf();
    fs.writeFileSync(join(tmp, 'bz'), makeBzImage(gzipSync(elf)));
    expect(fs.readFileSync((await pvhKernel(join(tmp, 'bz'), cache()))!).equals(elf)).toBe(true);
  });
  // (the whole test bed kernel is extracted and booted by test/bats/kboot.bats)
  it.skipIf(!fs.existsSync(testbedKernel) || !has('xz'))(
    'the test bed kernel with its payload cut short: nothing is cached; the file cut short is 65',
    async () => {
      const bz = fs.readFileSync(testbedKernel);
      const pl = bzPayload(bz)!;
      const cut = Buffer.from(bz);
      cut.writeUInt32LE(1 << 20, 0x24c); // the xz stream stops after 1 MiB (cut near its end it fails the same way, only slower: see decompressWith)
      fs.writeFileSync(join(tmp, 'cut'), cut);
      expect(await pvhKernel(join(tmp, 'cut'), cache())).toBeNull();
      expect(vmlinuxFiles(cache())).toEqual([]);
      fs.writeFileSync(join(tmp, 'short'), bz.subarray(0, pl.offset + pl.length - 4096));
      expect(() => checkKernel(join(tmp, 'short'))).toThrow(expect.objectContaining({ code: 65 }));
    },
    60_000,
  );
});

describe('kernel and initrd inputs', () => {
  const opts = () => ({ cache: join(tmp, 'cache'), idleMs: 10_000 });
  it('refuses a directory as initrd with 66 (not EISDIR), and a non-archive with 65', () => {
    expect(() => checkInitrd(tmp)).toThrow(
      expect.objectContaining({ code: 66, message: expect.stringContaining('is a directory') }),
    );
    fs.writeFileSync(join(tmp, 'bad'), 'hello world');
    expect(() => checkInitrd(join(tmp, 'bad'))).toThrow(expect.objectContaining({ code: 65 }));
    expect(() => checkInitrd(join(tmp, 'none'))).toThrow(expect.objectContaining({ code: 66 }));
  });
  it('uses a regular file as it is', async () => {
    fs.writeFileSync(join(tmp, 'k'), 'x');
    expect(await resolveInput(join(tmp, 'k'), 'kernel', opts())).toEqual({
      path: join(tmp, 'k'),
      shown: join(tmp, 'k'),
      temp: null,
    });
  });
  it('refuses a FIFO with no writer at once (66), without hanging', async () => {
    execFileSync('mkfifo', [join(tmp, 'fifo')]);
    const t0 = performance.now();
    await expect(resolveInput(join(tmp, 'fifo'), 'kernel', opts())).rejects.toMatchObject({
      code: 66,
      message: expect.stringContaining('no one writing'),
    });
    expect(performance.now() - t0).toBeLessThan(slow(5_000));
    expect(fs.existsSync(join(tmp, 'cache')) ? fs.readdirSync(join(tmp, 'cache')) : []).toEqual([]);
  });
  it('copies what a pipe gives into a private file in the cache', async () => {
    const data = Buffer.alloc(300_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    fs.writeFileSync(join(tmp, 'src'), data);
    execFileSync('mkfifo', [join(tmp, 'fifo')]);
    const w = fs.openSync(join(tmp, 'fifo'), fs.constants.O_RDWR); // a writer, until the child has it
    const got = resolveInput(join(tmp, 'fifo'), 'initrd', opts());
    const child = spawn('sh', ['-c', 'sleep 0.2; cat "$0"', join(tmp, 'src')], { stdio: ['ignore', w, 'inherit'] });
    fs.closeSync(w);
    const r = await got;
    child.kill();
    expect(r.shown).toBe(join(tmp, 'fifo'));
    expect(r.temp).toBe(r.path);
    expect(r.path.startsWith(join(tmp, 'cache', 'pipe-'))).toBe(true);
    expect(fs.readFileSync(r.path).equals(data)).toBe(true);
    expect(mode(r.path)).toBe(0o600);
    expect(mode(join(tmp, 'cache'))).toBe(0o700);
  });
  it('gives up on a pipe whose writer stays silent (75), and on Ctrl-C, leaving no copy', async () => {
    execFileSync('mkfifo', [join(tmp, 'fifo')]);
    const w = fs.openSync(join(tmp, 'fifo'), fs.constants.O_RDWR);
    try {
      await expect(resolveInput(join(tmp, 'fifo'), 'kernel', { ...opts(), idleMs: 300 })).rejects.toMatchObject({
        code: 75,
      });
      const ctl = new AbortController();
      const p = resolveInput(join(tmp, 'fifo'), 'kernel', { ...opts(), signal: ctl.signal });
      setTimeout(() => ctl.abort(new Error('interrupted')), 100);
      await expect(p).rejects.toThrow('interrupted');
      expect(fs.readdirSync(join(tmp, 'cache'))).toEqual([]);
    } finally {
      fs.closeSync(w);
    }
  });
  it('refuses a pipe that gives more than the bound (65)', async () => {
    fs.writeFileSync(join(tmp, 'src'), Buffer.alloc(1000, 1));
    execFileSync('mkfifo', [join(tmp, 'fifo')]);
    const w = fs.openSync(join(tmp, 'fifo'), fs.constants.O_RDWR);
    const got = resolveInput(join(tmp, 'fifo'), 'kernel', { ...opts(), maxBytes: 100 });
    spawn('cat', [join(tmp, 'src')], { stdio: ['ignore', w, 'inherit'] });
    fs.closeSync(w);
    await expect(got).rejects.toMatchObject({ code: 65 });
    expect(fs.readdirSync(join(tmp, 'cache'))).toEqual([]);
  });
});

describe('panic detection', () => {
  it('finds the panic and the lines before it', () => {
    const log = ['boot', 'a', 'Kernel panic - not syncing: Attempted to kill init!', 'Kernel Offset: x'].join('\r\n');
    expect(findPanic(log)).toEqual([
      'boot',
      'a',
      'Kernel panic - not syncing: Attempted to kill init!',
      'Kernel Offset: x',
    ]);
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
    expect(ninepArgs([{ dir: '/a,b', tag: 't' }])).toEqual([
      '-virtfs',
      'local,path=/a,,b,mount_tag=t,security_model=none,id=fs0',
    ]);
    const v = virtiofsArgs([{ dir: '/a', tag: 't', socket: '/r/s' }], '512M');
    expect(v).toContain('memory-backend-memfd,id=pimmem,size=512M,share=on');
    expect(v).toContain('vhost-user-fs-pci,chardev=vfs0,tag=t,queue-size=1024');
  });
});

describe('settings', () => {
  it('quotes settings for sh', () => {
    expect(shq("it's")).toBe(`'it'\\''s'`);
    const env = guestEnv({
      token: 't',
      mode: 'exec',
      out: '/dev/ttyS1',
      fs: '9p',
      shares: [
        { dir: '/x', tag: 'a' },
        { dir: '/y', tag: 'b' },
      ],
    });
    expect(env).toContain("PIM_SHARES='a b'");
    expect(env).toContain("PIM_ROOT=''");
  });
});

// ---- pim's /init, run for real: the base archive and this boot's archive unpacked by
// GNU cpio into a directory, and /pim/init run there by the static busybox as PID 1 of
// its own user, mount, PID, UTS and network namespaces (unshare -r, chroot). There,
// what a guest's init does is real and harmless to the host: proc, sysfs and tmpfs
// mount; devtmpfs, 9p, virtiofs and modprobe are refused; `poweroff -f` ends the PID
// namespace (reboot(2) there kills its init: the runner sees SIGINT, 130). ttyS1 is a
// FIFO, read the way pim reads the output port: through OutputScanner. (Stubs in PATH
// cannot stand in for mount or poweroff: busybox sh runs its own applets first.)

const busybox = staticBusybox();
const NS = ['unshare', '--user', '--map-root-user', '--mount', '--pid', '--fork', '--uts', '--net', 'chroot'];
const canRunInit = Boolean(busybox) && has('cpio') && spawnSync(NS[0]!, [...NS.slice(1), '/', 'true']).status === 0;

/** A guest root: what pim's two archives hold, unpacked. */
async function guestRoot(g: GuestSettings, cmd: string): Promise<string> {
  const root = join(tmp, 'root');
  fs.mkdirSync(join(root, 'dev'), { recursive: true });
  const base = await pimBaseArchive(join(tmp, 'cache'), busybox);
  fs.writeFileSync(join(tmp, 'boot.cpio'), bootArchive(g, cmd));
  for (const a of [base, join(tmp, 'boot.cpio')]) execFileSync('cpio', ['-idm', '--quiet', '-F', a], { cwd: root });
  return root;
}

/** Run /pim/init in `root`; what came out of ttyS1 (scanned), and whether it powered off. */
async function runInit(
  root: string,
  token: string,
): Promise<{ scanner: OutputScanner; out: string; poweredOff: boolean; stderr: string }> {
  const port = join(root, 'dev', 'ttyS1');
  execFileSync('mkfifo', [port]);
  const rfd = fs.openSync(port, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const wfd = fs.openSync(port, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); // no EOF between the init's writes
  const sock = new net.Socket({ fd: rfd, readable: true, writable: false });
  let out = '';
  const scanner = new OutputScanner(token, (s) => (out += s));
  sock.on('data', (d: Buffer) => scanner.push(d.toString('latin1')));
  const drained = new Promise((r) => sock.once('close', r));
  const child = spawn(NS[0]!, [...NS.slice(1), root, '/pim/init'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 20_000,
    killSignal: 'SIGKILL',
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const [code, signal] = (await new Promise((r) => child.once('exit', (...a) => r(a)))) as [
    number | null,
    string | null,
  ];
  fs.closeSync(wfd);
  await drained;
  return { scanner, out, stderr, poweredOff: code === 130 || signal === 'SIGINT' };
}

const settings = (over: Partial<GuestSettings> = {}): GuestSettings => ({
  token: 'tok42',
  mode: 'exec',
  out: '/dev/ttyS1',
  fs: '9p',
  shares: [],
  ...over,
});

describe.skipIf(!canRunInit)("pim's /init (lib/kboot/init.sh) under busybox sh", () => {
  it('mounts proc, sysfs and /tmp, says ready, runs the command with its output on ttyS1, sends its status, powers off', async () => {
    const cmd = `echo "it's $HOME in $(pwd)"; echo to-stderr >&2; cut -d' ' -f2,3 /proc/mounts | grep -E '^/(proc|sys|tmp) '; exit 7`;
    const r = await runInit(await guestRoot(settings(), cmd), 'tok42');
    expect(r.scanner.ready).toBe(true);
    expect(r.out).toBe("it's /root in /\nto-stderr\n/proc proc\n/sys sysfs\n/tmp tmpfs\n");
    expect(r.scanner.status).toBe(7);
    expect(r.poweredOff).toBe(true);
  }, 30_000);

  it('ignores output that only looks like a marker: the token is per boot', async () => {
    const r = await runInit(await guestRoot(settings(), `printf '\\036PIM-EXIT-other:3\\n'; exit 0`), 'tok42');
    expect(r.out).toBe('\x1ePIM-EXIT-other:3\n');
    expect(r.scanner.status).toBe(0);
  }, 30_000);

  it('sends the fail marker, and runs nothing, when a share cannot be mounted (9p and virtiofs)', async () => {
    for (const fsType of ['9p', 'virtiofs'] as const) {
      fs.rmSync(join(tmp, 'root'), { recursive: true, force: true });
      const r = await runInit(
        await guestRoot(settings({ fs: fsType, shares: [{ dir: '/h/a', tag: 'src' }] }), 'echo never'),
        'tok42',
      );
      expect(r.scanner.failure).toBe('cannot mount share src (no 9p/virtiofs in this kernel or initramfs?)');
      expect(r.scanner.ready).toBe(false);
      expect(r.out).toBe('');
      expect(r.poweredOff).toBe(true);
    }
  }, 30_000);

  it('sends the fail marker when the root share cannot be mounted', async () => {
    const r = await runInit(await guestRoot(settings({ root: 'pimroot' }), 'echo never'), 'tok42');
    expect(r.scanner.failure).toBe('cannot mount root share pimroot (no 9p/virtiofs in this kernel or initramfs?)');
    expect(r.poweredOff).toBe(true);
  }, 30_000);

  it("without --exec, says ready and hands over to the initramfs's own /init, /proc unmounted", async () => {
    const root = await guestRoot(settings({ mode: 'handoff' }), '');
    fs.writeFileSync(
      join(root, 'init'),
      '#!/pim/bin/sh\n{ echo "handed over as pid $$"; test -e /proc/self || echo "no /proc"; } >/handoff.log\n',
      { mode: 0o755 },
    );
    const r = await runInit(root, 'tok42');
    expect(r.scanner.ready).toBe(true);
    expect(r.scanner.status).toBeNull();
    expect(fs.readFileSync(join(root, 'handoff.log'), 'utf8')).toBe('handed over as pid 1\nno /proc\n');
  }, 30_000);
});

describe('archives pim adds', () => {
  it.skipIf(!has('cpio'))("this boot's archive holds /pim/env and /pim/cmd", () => {
    fs.writeFileSync(join(tmp, 'b.cpio'), bootArchive(settings(), 'uname -r'));
    expect(execFileSync('cpio', ['-it', '--quiet', '-F', join(tmp, 'b.cpio')], { encoding: 'utf8' })).toBe(
      'pim\npim/env\npim/cmd\n',
    );
  });
  it.skipIf(!has('cpio'))(
    'the base without a static busybox: init.sh as it is, /pim/bin/sh -> /bin/sh; cached 0600',
    async () => {
      const cache = join(tmp, 'cache');
      fs.mkdirSync(cache, { mode: 0o700 });
      const a = await pimBaseArchive(cache, null);
      expect(mode(a)).toBe(0o600);
      const out = join(tmp, 'x');
      fs.mkdirSync(out);
      execFileSync('cpio', ['-idm', '--quiet', '-F', a], { cwd: out });
      expect(fs.readFileSync(join(out, 'pim', 'init'), 'utf8')).toBe(INIT_SCRIPT);
      expect(INIT_SCRIPT.startsWith('#!/pim/bin/sh\n')).toBe(true);
      expect(mode(join(out, 'pim', 'init'))).toBe(0o755);
      expect(fs.readlinkSync(join(out, 'pim', 'bin', 'sh'))).toBe('/bin/sh');
      const st = fs.statSync(a);
      expect(await pimBaseArchive(cache, null)).toBe(a);
      expect(fs.statSync(a).ino).toBe(st.ino); // a hit: not written again (that renames a new file into place)
    },
  );
});

describe('a cache left by an older pim', () => {
  it('loses its base trees and its loose modes when a new base is written', async () => {
    const cache = join(tmp, 'cache');
    fs.mkdirSync(join(cache, 'base-0123456789abcdef', 'pim'), { recursive: true, mode: 0o755 });
    fs.writeFileSync(join(cache, 'initramfs-old.cpio'), 'x', { mode: 0o644 });
    fs.chmodSync(join(cache, 'initramfs-old.cpio'), 0o644);
    await pimBaseArchive(cache, null);
    expect(fs.existsSync(join(cache, 'base-0123456789abcdef'))).toBe(false);
    expect(mode(join(cache, 'initramfs-old.cpio'))).toBe(0o600);
    expect(fs.readdirSync(cache).every((f) => mode(join(cache, f)) === 0o600)).toBe(true);
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
    const a = buildQemuArgv({
      ...base,
      rng: false,
      noReboot: true,
      machine: 'microvm',
      kernel: { kernel: '/k', initrd: '/i', append: 'quiet' },
    });
    expect(a).not.toContain('virtio-rng-pci');
    expect(a).toContain('-no-reboot');
    expect(a.join(' ')).toContain('-machine microvm,accel=tcg');
    expect(a.join(' ')).toContain('-kernel /k -initrd /i -append quiet');
  });
});
