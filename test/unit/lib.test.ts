import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkName, nameProblem } from '../../lib/core/names.ts';
import {
  checkSocketPath,
  ensureRuntimeDir,
  runtimeDirPath,
  vmFiles,
  configDir,
  imagesDir,
  cacheDir,
} from '../../lib/core/paths.ts';
import { buildQemuArgv, qemuEscape, qemuOpt, type VmSpec } from '../../lib/qemu/argv.ts';
import { formatRecords } from '../../lib/cli/output.ts';
import { defineCommand } from 'citty';
import {
  helpColor,
  node,
  parseArgv,
  renderHelp,
  runArgv,
  VERSION,
  type AnyCommand,
  type Words,
} from '../../lib/cli/command.ts';
import { yamlTopKeys } from '../../lib/cli/catalog-names.ts';
import { JsonLines } from '../../lib/qemu/jsonlines.ts';
import { macFor } from '../../lib/qemu/host.ts';

describe('VM names', () => {
  it.each(['dev', 'web-1', 'a.b_c', 'X'.repeat(64), '9lives'])('accepts %s', (n) => {
    expect(nameProblem(n)).toBeNull();
    expect(checkName(n)).toBe(n);
  });
  it.each(['', '..', 'a/b', '-rf', '../etc', 'x'.repeat(65), 'a..b', '.hidden', 'sp ace', 'semi;colon', 'nul\0'])(
    'refuses %j with exit 64',
    (n) => {
      expect(nameProblem(n)).not.toBeNull();
      expect(() => checkName(n)).toThrow(expect.objectContaining({ code: 64 }));
    },
  );
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
      clone: '/r/pim/dev.clone.qcow2',
      stage: '/r/pim/dev.stage',
      ssh: '/r/pim/dev.ssh',
    });
  });

  it('checks a VM name once, when its reference is made (64, nothing created)', async () => {
    const { vmRef } = await import('../../lib/vm/ref.ts');
    expect(vmRef('dev', '/r/pim')).toMatchObject({ name: 'dev', dir: '/r/pim', files: { qmp: '/r/pim/dev.qmp' } });
    for (const bad of ['../x', '', '-x', 'a/b', 'x'.repeat(65)])
      expect(() => vmRef(bad, '/nonexistent')).toThrow(expect.objectContaining({ code: 64 }));
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
    expect(() => ensureRuntimeDir()).toThrow(
      expect.objectContaining({ code: 77, message: expect.stringContaining('writable by others') }),
    );
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
    expect(qemuOpt('socket', { id: 'x', path: '/tmp/a,b', server: true, wait: false })).toBe(
      'socket,id=x,path=/tmp/a,,b,server=on,wait=off',
    );
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
    expect(opt('-chardev')).toContain(
      'socket,id=ser0,path=/r/dev.serial,server=on,wait=off,logfile=/r/dev.log,logappend=on',
    );
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
  const cmd = defineCommand({
    meta: { name: 'pim-x', description: 's', passthrough: 'qemu args' },
    args: {
      name: { type: 'positional', required: true, valueHint: 'NAME' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', alias: 'q' },
      sshPort: { type: 'string' },
      accel: { type: 'enum', options: ['kvm', 'tcg'] },
    },
    run() {},
  });
  const ok = async (argv: string[]) => {
    const p = await parseArgv(cmd, argv);
    if (p.kind !== 'run') throw new Error(p.kind);
    return p;
  };
  it('splits at -- and keeps the words after it untouched', async () => {
    const p = await ok(['dev', '--json', '--', '--help', '-device', 'x,y=1', '--']);
    expect(p.words.positionals).toEqual(['dev']);
    expect(p.words.rest).toEqual(['--help', '-device', 'x,y=1', '--']);
    expect(p.head).toEqual(['dev', '--json']);
  });
  it('treats --help before -- as help, and --version as the version', async () => {
    expect((await parseArgv(cmd, ['dev', '--help'])).kind).toBe('help');
    expect((await parseArgv(cmd, ['--jsno', '--help'])).kind).toBe('help');
    expect((await parseArgv(cmd, ['--version'])).kind).toBe('version');
  });
  it('refuses unknown flags (a typo like --jsno) with exit 64', async () => {
    await expect(parseArgv(cmd, ['dev', '--jsno'])).rejects.toMatchObject({
      code: 64,
      message: expect.stringContaining('--jsno'),
    });
    await expect(parseArgv(cmd, ['dev', '-z'])).rejects.toMatchObject({ code: 64 });
    await expect(parseArgv(cmd, ['dev', '-qz'])).rejects.toMatchObject({
      code: 64,
      message: expect.stringContaining('-z'),
    });
  });
  it('accepts kebab-case and inline values, and counts positionals', async () => {
    expect((await ok(['dev', '--ssh-port=2222', '-q'])).head).toEqual(['dev', '--ssh-port=2222', '-q']);
    await expect(parseArgv(cmd, [])).rejects.toMatchObject({
      code: 64,
      message: 'missing argument; usage: pim-x NAME [options] [-- qemu args]',
    });
    await expect(parseArgv(cmd, ['a', 'b'])).rejects.toMatchObject({ code: 64 });
    await expect(parseArgv(cmd, ['dev', '--ssh-port'])).rejects.toMatchObject({ code: 64 });
  });
  it('checks enum values, as --flag V and --flag=V', async () => {
    await expect(parseArgv(cmd, ['dev', '--accel', 'foo'])).rejects.toMatchObject({
      code: 64,
      message: '--accel must be one of kvm, tcg, not "foo"',
    });
    await expect(parseArgv(cmd, ['dev', '--accel=foo'])).rejects.toMatchObject({ code: 64 });
    await ok(['dev', '--accel=kvm']);
  });
  it('refuses -- for a command that takes no passthrough words', async () => {
    const strict = { ...cmd, meta: { name: 'pim-x', description: 's' } };
    await expect(parseArgv(strict, ['dev', '--', 'x'])).rejects.toMatchObject({ code: 64 });
  });
  it('runs the leaf through citty: its args, the words, and the exit status it returns', async () => {
    let seen: unknown;
    const c = defineCommand({
      meta: { name: 'pim-y', passthrough: 'words' },
      args: {
        name: { type: 'positional', required: true },
        sshPort: { type: 'string' },
        fs: { type: 'enum', options: ['a', 'b'], default: 'a' },
      },
      run: ({ args, data }) => {
        seen = { name: args.name, port: args.sshPort, fs: args.fs, rest: (data as Words).rest };
        return 3;
      },
    });
    expect(await runArgv(c, ['dev', '--ssh-port', '22', '--', '--help'])).toBe(3);
    expect(seen).toEqual({ name: 'dev', port: '22', fs: 'a', rest: ['--help'] });
  });
  it('keeps every value of a repeatable flag (pim-kboot --share)', async () => {
    const { default: kboot } = await import('../../cmds/pim-kboot.ts');
    const p = await parseArgv(kboot, ['--share', 'a', '--exec', 'true', '--share=b:tag', '--', '--share', 'c']);
    if (p.kind !== 'run') throw new Error(p.kind);
    expect(p.words.repeated.share).toEqual(['a', 'b:tag']);
    expect(p.words.rest).toEqual(['--share', 'c']);
  });
});

describe('subcommands', () => {
  it('walks to the leaf, whose args alone apply', async () => {
    const { default: iso } = await import('../../cmds/pim-iso.ts');
    const p = await parseArgv(iso, ['download', 'a', 'b', '--insecure']);
    if (p.kind !== 'run') throw new Error(p.kind);
    expect(p.node.name).toBe('pim-iso download');
    expect(p.words.positionals).toEqual(['a', 'b']);
    await expect(parseArgv(iso, ['list', '--url', 'x'])).rejects.toMatchObject({
      code: 64,
      message: 'unknown option --url; see pim-iso list --help',
    });
    await expect(parseArgv(iso, [])).rejects.toMatchObject({
      code: 64,
      message: expect.stringContaining('list, show, add, download, verify, path or rm'),
    });
    await expect(parseArgv(iso, ['frob'])).rejects.toMatchObject({
      code: 64,
      message: expect.stringContaining('unknown subcommand "frob"'),
    });
    await expect(parseArgv(iso, ['show'])).rejects.toMatchObject({
      code: 64,
      message: 'missing argument; usage: pim-iso show NAME [options]',
    });
    const h = await parseArgv(iso, ['download', '--help']);
    expect(h.kind === 'help' && h.node.name).toBe('pim-iso download');
    expect((await parseArgv(iso, ['--help'])).kind).toBe('help');
  });
});

describe('help', () => {
  it('is rendered from the citty definition: kebab-case flags, defaults, subcommands, examples; colour only when asked', async () => {
    const { default: run } = await import('../../cmds/pim-run.ts');
    const h = await renderHelp(await node(run));
    expect(h.split('\n')[0]).toBe('Usage: pim-run NAME|IMAGE [options] [-- qemu args]');
    expect(h).toContain('  --ssh-port PORT');
    expect(h).toContain('  --accel kvm|hvf|tcg');
    expect(h).toMatch(/--wait-timeout S +seconds --wait waits .*\(default: 120\)/); // citty's default, rendered
    expect(h).toContain('Examples:\n  pim-run dev\n');
    expect(h).not.toContain('sshPort');
    expect(h).not.toContain('\x1b');
    expect(await renderHelp(await node(run), { color: true })).toContain('\x1b[1mUsage:\x1b[22m');
    const { default: build } = await import('../../cmds/pim-build.ts');
    expect(await renderHelp(await node(build))).toMatch(/Commands:\n  run +Build each PROFILE's image/);
  });
  it('has no colour when NO_COLOR is set or TERM=dumb, even on a terminal (cli.bats checks a real one and a pipe)', () => {
    const saved = { ...process.env };
    try {
      process.env.TERM = 'xterm';
      process.env.NO_COLOR = '1';
      expect(helpColor()).toBe(false);
      delete process.env.NO_COLOR;
      process.env.TERM = 'dumb';
      expect(helpColor()).toBe(false);
    } finally {
      process.env = saved;
    }
  });
  it("--version is package.json's", async () => {
    const pkg = JSON.parse(fs.readFileSync(join(__dirname, '../../package.json'), 'utf8')) as { version: string };
    expect(VERSION).toBe(pkg.version);
  });
});

describe('completion', () => {
  const ask = async (cmd: AnyCommand, ...words: string[]) =>
    (await import('../../lib/cli/complete.ts')).answer(await node(cmd), words);
  const saved = { ...process.env };
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(join(tmpdir(), 'pimc-'));
    process.env.XDG_CONFIG_HOME = join(tmp, 'config');
    process.env.XDG_DATA_HOME = join(tmp, 'data');
    fs.mkdirSync(join(tmp, 'config/pim/isos.d'), { recursive: true });
    fs.writeFileSync(
      join(tmp, 'config/pim/isos.d/mine.yml'),
      '# mine\nmyiso:\n  url: https://x/y.iso\n"quoted-iso": {}\ndefault:\n  arch: amd64\n',
    );
  });
  afterEach(() => {
    process.env = { ...saved };
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  it("offers subcommands, then each one's own options and arguments", async () => {
    const { default: iso } = await import('../../cmds/pim-iso.ts');
    expect(await ask(iso, '')).toMatch(/^list\tOne line per catalog entry.*\nshow\t.*\nrm\t.*\n:4\n$/s);
    const dl = await ask(iso, 'download', '');
    expect(dl.split('\n').map((l) => l.split('\t')[0])).toEqual([
      'debian-netinst-amd64',
      'myiso',
      'quoted-iso',
      'ubuntu-24.04-server-amd64',
      ':4',
      '',
    ]);
    expect(await ask(iso, 'download', 'debian-netinst-amd64', 'my')).toBe('myiso\tISO\n:4\n');
    expect(await ask(iso, 'list', '--')).toBe(
      '--json\tprint JSON (one object per line)\n--quiet\tprint names only\n--help\tshow the help\n:4\n',
    );
    expect(await ask(iso, 'frob', '')).toBe(':4\n');
  });
  it('option values: enum values without a TAB (zsh draws an empty description as a stray --), paths for path options', async () => {
    const { default: kboot } = await import('../../cmds/pim-kboot.ts');
    expect(await ask(kboot, '--fs', '')).toBe('auto\n9p\nvirtiofs\n:4\n');
    expect(await ask(kboot, '--fs=v')).toBe('virtiofs\n:4\n');
    expect(await ask(kboot, '--fs', '=', '9')).toBe('9p\n:4\n');
    expect(await ask(kboot, '--kernel', '')).toBe(':0\n');
    expect(await ask(kboot, '--share', 'a', '--initramfs-from', '')).toBe(':16\n');
    expect(await ask(kboot, '--mem', '')).toBe(':4\n');
    expect(await ask(kboot, 'vm', '--', '')).toBe(':0\n');
  });
  it("pim-run NAME|IMAGE: image names, and the shell's file names when none matches", async () => {
    const { default: run } = await import('../../cmds/pim-run.ts');
    expect(await ask(run, './di')).toBe(':0\n');
    expect(await ask(run, 'dev', '')).toBe(':4\n');
  });
  it('profile names and build ids, from files, without YAML', async () => {
    fs.mkdirSync(join(tmp, 'config/pim/profiles.d'), { recursive: true });
    fs.writeFileSync(join(tmp, 'config/pim/profiles.d/a.yml'), 'dev:\n  iso: x\nweb: {}\n  nested: 1\n');
    const id = 'dev-0123456789ab';
    fs.mkdirSync(join(tmp, 'data/pim/builds', id), { recursive: true });
    fs.writeFileSync(
      join(tmp, 'data/pim/builds', id, 'build.json'),
      JSON.stringify({
        id,
        key: '0123456789ab'.padEnd(64, '0'),
        profile: 'dev',
        created: '2026-01-01T00:00:00Z',
        disk: { file: 'disk.qcow2' },
      }),
    );
    const { default: build } = await import('../../cmds/pim-build.ts');
    expect(await ask(build, 'run', '')).toBe('default\tprofile\ndev\tprofile\nweb\tprofile\n:4\n');
    expect(await ask(build, 'show', '')).toBe(`${id}\tdev, 2026-01-01T00:00:00Z\n:4\n`);
    expect(await ask(build, 'rm', id, '')).toBe(`${id}\tdev, 2026-01-01T00:00:00Z\n:4\n`);
    const { default: profile } = await import('../../cmds/pim-profile.ts');
    expect(await ask(profile, 'show', 'w')).toBe('web\tprofile\n:4\n');
    expect(await ask(profile, 'show', 'web', '')).toBe(':4\n');
  });
  it('reads top-level keys only', () => {
    expect(yamlTopKeys('# c\na:\n  b: 1\n"c-d": 2\n\'e\':\n- f\n---\ng: [1]\n<<: *x\nbad key:\n')).toEqual([
      'a',
      'c-d',
      'e',
      'g',
    ]);
  });
});

describe("tab's bash script", () => {
  const tabScript = async () => {
    const { default: t } = await import('@bomb.sh/tab');
    const out: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => void out.push(a.join(' '));
    try {
      t.setup('pim-x', 'pim-x', 'bash');
    } finally {
      console.log = log;
    }
    return out.join('\n') + '\n';
  };
  it('gets every fix: no readonly, no eval, words as arguments, file names when allowed', async () => {
    const { patchBash } = await import('../../lib/cli/complete.ts');
    const s = patchBash(await tabScript(), 'pim-x');
    expect(s).not.toMatch(/^readonly /m);
    expect(s).not.toContain('eval "$requestComp"');
    expect(s).toContain('out=$(pim-x complete -- "${words[@]:1:cword-1}" "$cur" 2>/dev/null)');
    expect(s).toMatch(/^complete -o default -F __pim_x_complete pim-x$/m);
  });
  it('fails loudly when a fix no longer applies (a new tab version)', async () => {
    const { patchBash } = await import('../../lib/cli/complete.ts');
    const script = await tabScript();
    expect(() => patchBash(script.replace('eval "$requestComp"', 'eval "$request"'), 'pim-x')).toThrow(
      /words as arguments, no eval/,
    );
    expect(() => patchBash(script.replace(/^readonly /gm, 'declare -r '), 'pim-x')).toThrow(/no readonly globals/);
    expect(() => patchBash(script.replace(/^complete -F/m, 'complete -o nospace -F'), 'pim-x')).toThrow(
      /file names when the answer allows them/,
    );
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
      // the winner holds the lock until every process has said what it got (FILE.done), however slow their start
      const script = `import { existsSync } from 'node:fs'; import { pidfileLock } from ${JSON.stringify(lockTs)};
        try { const l = await pidfileLock(process.argv[1], 'x'); console.log('got'); while (!existsSync(process.argv[1] + '.done')) await new Promise((r) => setTimeout(r, 20)); await l.release(); }
        catch (e) { console.log(e.code === 75 ? 'busy' : 'error ' + e.message); }`;
      let said = 0;
      const runs = Array.from(
        { length: 6 },
        () =>
          new Promise<string>((resolve) => {
            const c = spawn(process.execPath, ['--input-type=module', '-e', script, file], {
              stdio: ['ignore', 'pipe', 'inherit'],
            });
            let out = '';
            c.stdout!.on('data', (d) => {
              if (!out.includes('\n') && String(d).includes('\n') && ++said === 6) fs.writeFileSync(`${file}.done`, '');
              out += d;
            });
            c.on('close', () => resolve(out.trim()));
          }),
      );
      const results = await Promise.all(runs);
      expect(results.filter((r) => r === 'got')).toHaveLength(1);
      expect(results.filter((r) => r === 'busy')).toHaveLength(5);
      fs.rmSync(file, { force: true });
      fs.rmSync(`${file}.done`, { force: true });
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
    expect([
      mode(base),
      mode(join(base, 'pim')),
      mode(join(base, 'pim', 'kboot')),
      mode(join(base, 'pim', 'kboot', 'x')),
    ]).toEqual([0o755, 0o700, 0o700, 0o700]);
    fs.symlinkSync('/tmp', join(base, 'pim', 'link'));
    expect(() => ensurePrivateDir(join(base, 'pim', 'link'))).toThrow(expect.objectContaining({ code: 73 }));
    fs.rmSync(base, { recursive: true, force: true });
  });
});

describe('run: time limits hold when a grandchild keeps the pipe open', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(join(tmpdir(), 'pim-run-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  /** a program that starts a child holding stdout and stderr, writes its pid, and hangs */
  const hanging = () => {
    const f = join(dir, 'hook');
    fs.writeFileSync(f, `#!/bin/sh\nsleep 1000 &\necho $! >"${dir}/child"\necho started\nsleep 1000\n`, {
      mode: 0o755,
    });
    return f;
  };
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    } catch {
      return false;
    }
  };
  it('a timed-out child and its own children are killed, and run returns at the limit, not when the pipe closes', async () => {
    const { run } = await import('../../lib/core/run.ts');
    const t0 = Date.now();
    const r = await run(hanging(), [], { timeoutMs: 1_000 });
    const took = Date.now() - t0;
    expect(r.timedOut).toBe(true);
    expect(r.code).not.toBe(0);
    expect(took).toBeLessThan(15_000); // 1 s, then a kill: never the grandchild's 1000 s
    const child = Number(fs.readFileSync(join(dir, 'child'), 'utf8'));
    expect(alive(child)).toBe(false);
  }, 30_000);
  it('an abort signal stops the whole group the same way', async () => {
    const { run } = await import('../../lib/core/run.ts');
    const ctl = new AbortController();
    const p = run(hanging(), [], { signal: ctl.signal, timeoutMs: 600_000 });
    while (!fs.existsSync(join(dir, 'child')) || !fs.readFileSync(join(dir, 'child'), 'utf8').endsWith('\n'))
      await new Promise((r) => setTimeout(r, 20));
    ctl.abort();
    const r = await p;
    expect(r.code).not.toBe(0);
    expect(alive(Number(fs.readFileSync(join(dir, 'child'), 'utf8')))).toBe(false);
  }, 30_000);
  it('an abort of a child without a time limit (it keeps the terminal): run returns though a grandchild holds the pipe', async () => {
    const { run } = await import('../../lib/core/run.ts');
    const ctl = new AbortController();
    const p = run(hanging(), [], { signal: ctl.signal });
    while (!fs.existsSync(join(dir, 'child')) || !fs.readFileSync(join(dir, 'child'), 'utf8').endsWith('\n'))
      await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    ctl.abort();
    const r = await p;
    expect(r.code).not.toBe(0);
    expect(Date.now() - t0).toBeLessThan(15_000);
    process.kill(Number(fs.readFileSync(join(dir, 'child'), 'utf8')), 'SIGKILL'); // the grandchild outside any group of its own
  }, 30_000);
  it('a child that finishes in time is read to its end', async () => {
    const { run } = await import('../../lib/core/run.ts');
    const r = await run('sh', ['-c', 'echo out; echo err >&2; exit 3'], { timeoutMs: 20_000 });
    expect(r).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false });
  });
});
