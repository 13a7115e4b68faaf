/**
 * pim doctor's checks of the host: what pim needs and what it uses when it
 * is there. Each check is one record, `NAME ok|warn|fail DETAIL`, and the
 * detail says what to do when it is not ok. `fail` is something pim relies
 * on that is missing or broken (QEMU, Node 22, a runtime dir it must refuse,
 * a KVM that opens but does not run guests); `warn` is something optional
 * (virtiofsd, OVMF, a bridge) that only some commands need.
 *
 * The checks only look: nothing is created, chmod'ed or remembered (not
 * even the KVM verdict pim-run keeps), no sudo ever prompts (`sudo -n`),
 * every child gets no stdin and a time limit, and they all run at once, so
 * the whole takes about as long as the slowest (the KVM test run).
 *
 * The KVM test run: /dev/kvm that opens proves little. On some hosts (nested
 * virtualisation) it opens and QEMU then dies setting the vCPU's MSRs, stops
 * with "KVM internal error", or runs guest code so slowly that nothing boots.
 * So QEMU boots a 64 KiB firmware image of pim's own with the accelerator
 * and CPU model pim-run uses (`-cpu host`): from the reset vector it goes
 * to protected mode, then long mode with paging, runs a loop of 2^20
 * iterations that writes and reads RAM, checks the sum, and writes 0x2a to
 * the isa-debug-exit port, which makes QEMU exit with status 85. Anything
 * else within the time limit is a KVM that does not work. Its source is
 * lib/vm/kvm-probe.S; the unit tests check that these bytes are what it
 * assembles to, and that TCG runs it to status 85.
 */
import { spawn } from 'node:child_process';
import { closeSync, lstatSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { runtimeDirPath, runtimeDirProblem, SOCKET_PATH_MAX, RUNTIME_EXT } from '../core/paths.ts';
import { NAME_MAX } from '../core/names.ts';
import { which } from '../core/which.ts';
import { bridgeHelper, ovmfCode, qemuBinary } from '../qemu/host.ts';
import { findVirtiofsd } from '../qemu/share.ts';
import { qemuImg } from '../image/qemu-img.ts';
import { unwatchGroup, watchGroup, run } from '../core/run.ts';

export type Status = 'ok' | 'warn' | 'fail';

export interface Check {
  name: string;
  status: Status;
  detail: string;
  [k: string]: unknown;
}

const check = (name: string, status: Status, detail: string): Check => ({ name, status, detail });

// --- the KVM test run ----------------------------------------------------------

/** lib/vm/kvm-probe.S assembled: its code at offset 0 of the image ... */
export const PROBE_CODE =
  'fa31c08ed88cc88ed8660f0116e8000f20c06683c8010f22c066ea21000f00080066b810008ed88ec08ed0bc00800000bf00100000b9000c000031c0f3abc7050010000003200000c7050020000003300000c7050030000083000000b8001000000f22d80f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d000000800f22c0ea8d000f001800b9000010004831c048c7c7000001004801c8488907488b17ffc975f348bb00000800800000004839dab02a7402b015e6f4f4ebfd8db400008d74000000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00c8000f';
/** ... and the reset vector at 0xfff0: ljmp $0xf000, $0 */
export const PROBE_RESET = 'ea0000' + '00f0';
/** QEMU's exit status when the probe ran to its end: (0x2a << 1) | 1 */
export const PROBE_OK = 85;

/** The 64 KiB firmware image for `-bios`. */
export function probeImage(): Buffer {
  const img = Buffer.alloc(0x10000);
  Buffer.from(PROBE_CODE, 'hex').copy(img, 0);
  Buffer.from(PROBE_RESET, 'hex').copy(img, 0xfff0);
  return img;
}

export interface ProbeResult {
  /** QEMU's exit status (null: killed by a signal) */
  status: number | null;
  /** the signal that ended QEMU (SIGKILL: pim's, at the time limit or an internal error) */
  signal: string | null;
  /** what QEMU said, warnings left out */
  errors: string[];
  ms: number;
  timedOut: boolean;
  internalError: boolean;
}

/**
 * Boot the probe with `accel` and wait for QEMU to exit, at most `timeoutMs`.
 * QEMU is started with node:child_process, not lib/core/run.ts: on "KVM
 * internal error" QEMU stops the guest and waits for ever, so its stderr is
 * read as it comes and QEMU killed at that line.
 */
export async function runProbe(
  accel: 'kvm' | 'hvf' | 'tcg',
  timeoutMs: number,
  qemu = qemuBinary(),
): Promise<ProbeResult> {
  const dir = mkdtempSync(join(tmpdir(), 'pim-probe-'));
  const bios = join(dir, 'probe.bin');
  writeFileSync(bios, probeImage(), { mode: 0o600 });
  const cpu = accel === 'tcg' ? [] : ['-cpu', 'host'];
  const argv = [
    '-machine',
    `q35,accel=${accel}`,
    ...cpu,
    '-m',
    '16',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'none',
    '-monitor',
    'none',
  ];
  argv.push('-bios', bios, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04', '-no-reboot');
  const t0 = performance.now();
  try {
    return await new Promise<ProbeResult>((resolve) => {
      // its own process group: at the limit the whole group is killed, whatever QEMU (or a wrapper script) started
      const child = spawn(qemu, argv, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
      if (child.pid !== undefined) watchGroup(child.pid);
      let text = '';
      let timedOut = false;
      let internalError = false;
      let cut: NodeJS.Timeout | undefined;
      const kill = () => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        // a grandchild that escaped the group may hold stderr open: stop waiting on the pipe soon
        cut ??= setTimeout(() => {
          child.stderr?.destroy();
          end(child.exitCode, child.signalCode ?? 'SIGKILL');
        }, 1_000);
      };
      const timer = setTimeout(() => {
        timedOut = true;
        kill();
      }, timeoutMs);
      child.stderr!.on('data', (d: Buffer) => {
        if (text.length < 65536) text += d.toString('utf8');
        if (/KVM internal error/i.test(text)) {
          internalError = true;
          kill();
        }
      });
      let ended = false;
      const end = (status: number | null, signal: string | null, err?: Error) => {
        if (ended) return;
        ended = true;
        if (child.pid !== undefined) unwatchGroup(child.pid);
        clearTimeout(timer);
        clearTimeout(cut);
        const errors = text
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l && !/warning:/i.test(l));
        if (err)
          errors.unshift(
            `cannot run ${qemu}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : err.message}`,
          );
        resolve({ status, signal, errors, ms: Math.round(performance.now() - t0), timedOut, internalError });
      };
      child.on('error', (e) => end(null, null, e));
      child.on('close', (code, sig) => end(sig ? null : code, sig));
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What a failed probe says, in one phrase. */
export function probeFailure(r: ProbeResult, timeoutMs: number): string {
  const said = (r.errors.find((l) => /internal error|error|failed|abort|assert/i.test(l)) ?? r.errors[0] ?? '').replace(
    /^qemu-system-\w+: (error: )?/,
    '',
  );
  if (r.internalError) return `a test guest stopped with "${said}"`;
  if (r.timedOut) return `a test guest did not finish within ${timeoutMs / 1000} s (a working KVM takes milliseconds)`;
  return `QEMU ${r.status === null ? `died (${r.signal})` : `exited with status ${r.status}`} starting a test guest${said ? `: ${said}` : ''}`;
}

async function accelCheck(timeoutMs: number): Promise<Check> {
  const forced = process.env.PIM_ACCEL;
  if (process.platform === 'darwin') {
    const r = await run('sysctl', ['-n', 'kern.hv_support'], { timeoutMs: 5_000 }).catch(() => null);
    if (r?.stdout.trim() !== '1')
      return check(
        'hvf',
        'warn',
        'the Hypervisor framework is not available (sysctl kern.hv_support): VMs run under TCG, which is much slower',
      );
    if (process.arch !== 'x64')
      return check('hvf', 'ok', 'available (kern.hv_support=1; the test run is for x86-64 hosts)');
    const p = await runProbe('hvf', timeoutMs);
    if (p.status === PROBE_OK) return check('hvf', 'ok', `ran a test guest to its end in ${p.ms} ms`);
    return check(
      'hvf',
      forced === 'tcg' ? 'warn' : 'fail',
      `available, but ${probeFailure(p, timeoutMs)}; set PIM_ACCEL=tcg`,
    );
  }
  if (process.platform !== 'linux')
    return check(
      'accel',
      'warn',
      `no hardware accelerator on ${process.platform}: VMs run under TCG, which is much slower`,
    );
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      return check(
        'kvm',
        'warn',
        'no /dev/kvm: VMs run under TCG, which is much slower; enable virtualisation in the firmware (or nested virtualisation on a VM host) and load kvm_intel or kvm_amd',
      );
    return check(
      'kvm',
      'warn',
      `/dev/kvm does not open (${code}): VMs run under TCG; add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again`,
    );
  }
  if (process.arch !== 'x64')
    return check('kvm', 'ok', `/dev/kvm opens (the test run is for x86-64 hosts; this is ${process.arch})`);
  const p = await runProbe('kvm', timeoutMs);
  if (p.status === PROBE_OK)
    return check('kvm', 'ok', `/dev/kvm opens and ran a test guest (long mode, 2^20 loops) to its end in ${p.ms} ms`);
  if (p.errors[0]?.startsWith('cannot run')) return check('kvm', 'warn', `/dev/kvm opens; not tested: ${p.errors[0]}`);
  const { readKvmVerdict } = await import('../qemu/accel.ts');
  const remembered =
    readKvmVerdict() === 'broken' ? ' (pim-run remembers it until the host reboots, and warns once per boot)' : '';
  const what = `/dev/kvm opens, but KVM fails at run time${remembered}: ${probeFailure(p, timeoutMs)}`;
  if (forced === 'tcg') return check('kvm', 'warn', `${what}; PIM_ACCEL=tcg is set, so pim uses TCG`);
  return check(
    'kvm',
    'fail',
    `${what}; set PIM_ACCEL=tcg so that pim runs VMs under TCG (much slower) without trying KVM, or fix the host's KVM (nested virtualisation)`,
  );
}

// --- programs --------------------------------------------------------------------

/** "QEMU emulator version 7.2.22 (...)" -> [7, 2, 22] */
export function parseVersion(text: string): number[] | null {
  const m = /version (\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : null;
}

async function versionOf(bin: string, timeoutMs: number): Promise<{ version: number[] | null; error?: string }> {
  try {
    const r = await run(bin, ['--version'], { timeoutMs });
    if (r.timedOut) return { version: null, error: `${bin} --version did not answer within ${timeoutMs / 1000} s` };
    return {
      version: parseVersion(r.stdout + r.stderr),
      error: r.code === 0 ? undefined : `${bin} --version exited ${r.code}`,
    };
  } catch {
    return { version: null, error: 'not found' };
  }
}

async function qemuCheck(timeoutMs: number): Promise<Check> {
  const bin = qemuBinary();
  const { version, error } = await versionOf(bin, timeoutMs);
  if (!version) {
    const how =
      error === 'not found' ? 'install it (apt-get install qemu-system-x86; brew install qemu) or set PIM_QEMU' : error;
    return check('qemu', 'fail', `${bin}: ${error === 'not found' ? 'not found' : 'no version'}; ${how}`);
  }
  const v = version.join('.');
  const path = which(bin) ?? bin;
  if (version[0]! < 6)
    return check(
      'qemu',
      'warn',
      `${path} ${v}: pim-snapshot of a running VM needs QEMU 6 or newer (its snapshot-save job)`,
    );
  return check('qemu', 'ok', `${path} ${v}`);
}

async function qemuImgCheck(timeoutMs: number): Promise<Check> {
  const bin = qemuImg();
  const { version, error } = await versionOf(bin, timeoutMs);
  if (!version)
    return check(
      'qemu-img',
      'fail',
      `${bin}: ${error ?? 'no version'}; install qemu-utils (Debian) or qemu (Homebrew), or set PIM_QEMU_IMG`,
    );
  return check('qemu-img', 'ok', `${which(bin) ?? bin} ${version.join('.')}`);
}

function nodeCheck(): Check {
  const v = process.versions.node;
  const major = Number(v.split('.')[0]);
  if (major < 22)
    return check(
      'node',
      'fail',
      `${process.execPath} is Node ${v}; pim needs 22 or newer: ./install.sh brings one, or put Node 22 first on PATH`,
    );
  return check('node', 'ok', `${v} (${process.execPath})`);
}

// --- the runtime dir ---------------------------------------------------------------

/** The runtime dir as pim would use it (read-only: nothing is made or tightened). */
export function runtimeDirCheck(dir = runtimeDirPath(), uid = process.getuid?.()): Check {
  const name = 'runtime-dir';
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    try {
      lstatSync(dirname(dir));
    } catch {
      return check(name, 'fail', `${dir} cannot be made: ${dirname(dir)} does not exist; check XDG_RUNTIME_DIR`);
    }
    return socketRoom(dir) ?? check(name, 'ok', `${dir} does not exist yet; pim makes it (0700) on first use`);
  }
  const problem = runtimeDirProblem(dir, st, uid);
  if (problem) return check(name, 'fail', problem.message);
  const mode = (st.mode & 0o777).toString(8);
  if ((st.mode & 0o077) !== 0) return check(name, 'warn', `${dir} is mode ${mode}; pim makes it 0700 on its next use`);
  return socketRoom(dir) ?? check(name, 'ok', `${dir}, mode ${mode}, yours`);
}

/** A runtime dir whose path leaves no room for a VM name in a socket path (108 bytes with the NUL). */
function socketRoom(dir: string): Check | null {
  const longest = Math.max(...[RUNTIME_EXT.qmp, RUNTIME_EXT.ga, RUNTIME_EXT.serial].map((e) => e.length));
  const room = SOCKET_PATH_MAX - 1 - Buffer.byteLength(dir) - 1 - longest;
  if (room >= NAME_MAX) return null;
  if (room < 1)
    return check(
      'runtime-dir',
      'fail',
      `${dir} is too long for any socket path (${SOCKET_PATH_MAX - 1} bytes); set a shorter XDG_RUNTIME_DIR`,
    );
  return check(
    'runtime-dir',
    'warn',
    `${dir}: VM names over ${room} characters do not fit a socket path (${SOCKET_PATH_MAX - 1} bytes); a shorter XDG_RUNTIME_DIR allows ${NAME_MAX}`,
  );
}

// --- bridged networking -----------------------------------------------------------

export const BRIDGE_CONFS = [
  '/etc/qemu/bridge.conf',
  '/usr/local/etc/qemu/bridge.conf',
  '/opt/homebrew/etc/qemu/bridge.conf',
];

export interface BridgeAcl {
  allow: string[];
  deny: string[];
  /** a file that could not be read, and why */
  unreadable: string[];
}

/** qemu-bridge-helper's ACL: `allow NAME|all`, `deny NAME|all`, `include FILE`, `#` comments. */
export function readBridgeAcl(
  file: string,
  acl: BridgeAcl = { allow: [], deny: [], unreadable: [] },
  depth = 0,
): BridgeAcl {
  let text: string;
  try {
    // a regular file only: reading a FIFO put there would block for ever
    if (!statSync(file).isFile()) {
      acl.unreadable.push(`${file} (not a regular file)`);
      return acl;
    }
    text = readFileSync(file, 'utf8');
  } catch (e) {
    acl.unreadable.push(`${file} (${(e as NodeJS.ErrnoException).code})`);
    return acl;
  }
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^(allow|deny|include)\s+(\S+)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'include') {
      if (depth < 8) readBridgeAcl(m[2]!, acl, depth + 1);
    } else acl[m[1] as 'allow' | 'deny'].push(m[2]!);
  }
  return acl;
}

const bridgeExists = (br: string) => {
  try {
    lstatSync(`/sys/class/net/${br}/bridge`);
    return true;
  } catch {
    return false;
  }
};

export function bridgeConfCheck(confs = BRIDGE_CONFS, exists = bridgeExists): Check {
  const name = 'bridge.conf';
  const conf = confs.find((f) => {
    try {
      lstatSync(f);
      return true;
    } catch {
      return false;
    }
  });
  const add = `echo 'allow br0' | sudo tee -a ${confs[0]}`;
  if (!conf)
    return check(
      name,
      'warn',
      `no ${confs[0]}: --bridged needs the bridge allowed there (${add}); user networking needs nothing`,
    );
  const acl = readBridgeAcl(conf);
  if (acl.unreadable.length && !acl.allow.length) {
    return check(
      name,
      'warn',
      `cannot read ${acl.unreadable.join(', ')}; qemu-bridge-helper reads it as root: check it with sudo cat ${conf}`,
    );
  }
  const allowed = acl.allow.filter((b) => !acl.deny.includes(b) && !acl.deny.includes('all'));
  if (!allowed.length) return check(name, 'warn', `${conf} allows no bridge; --bridged needs one (${add})`);
  if (allowed.includes('all')) return check(name, 'ok', `${conf} allows every bridge`);
  const shown = allowed.map((b) => (exists(b) ? b : `${b} (no such bridge)`));
  const status: Status = allowed.some(exists) ? 'ok' : 'warn';
  const hint =
    status === 'warn' ? `; make one (sudo ip link add ${allowed[0]} type bridge) or allow one that exists` : '';
  return check(name, status, `${conf} allows ${shown.join(', ')}${hint}`);
}

function bridgeHelperCheck(uid = process.getuid?.()): Check {
  const h = bridgeHelper();
  if (!h)
    return check(
      'bridge-helper',
      'warn',
      'qemu-bridge-helper not found: --bridged needs it; install qemu-system-common',
    );
  if (h.setuid) return check('bridge-helper', 'ok', `${h.path} is setuid root: --bridged runs QEMU as you`);
  if (uid === 0)
    return check(
      'bridge-helper',
      'ok',
      `${h.path} (not setuid root; you are root, so --bridged needs neither it nor sudo)`,
    );
  return check(
    'bridge-helper',
    'warn',
    `${h.path} is not setuid root: --bridged runs QEMU as root through sudo (or: sudo chmod u+s ${h.path})`,
  );
}

export interface SudoFacts {
  uid: number;
  /** the bridge helper is setuid root: QEMU runs as the user, no sudo */
  helperSetuid: boolean;
  sudo: string | null;
  /** the commands pim runs through sudo for a bridged VM, by absolute path */
  commands: string[];
  /** may `sudo -n` run this command (no password, no prompt)? */
  allowed(cmd: string): Promise<boolean>;
}

/** Whether a bridged VM's sudo commands (QEMU, chown, kill) run without a prompt. */
export async function sudoCheck(f: SudoFacts): Promise<Check> {
  if (f.uid === 0) return check('sudo', 'ok', 'running as root: bridged VMs need no sudo');
  if (f.helperSetuid)
    return check('sudo', 'ok', 'not needed: the bridge helper is setuid root, so bridged VMs run as you');
  if (!f.sudo)
    return check(
      'sudo',
      'warn',
      'sudo not found: --bridged needs it to run QEMU as root (or a setuid qemu-bridge-helper)',
    );
  const refused: string[] = [];
  for (const c of f.commands) if (!(await f.allowed(c))) refused.push(c);
  if (!refused.length) return check('sudo', 'ok', `sudo -n may run ${f.commands.join(', ')}`);
  const user = process.env.USER ?? process.env.LOGNAME ?? 'you';
  return check(
    'sudo',
    'warn',
    `sudo -n may not run ${refused.join(', ')}: --bridged asks for your password on a terminal and fails (77) in scripts; a sudoers rule for it: ${user} ALL=(root) NOPASSWD: ${f.commands.join(', ')}`,
  );
}

async function hostSudoCheck(timeoutMs: number): Promise<Check> {
  const sudo = which('sudo');
  const commands = [
    which(qemuBinary()) ?? qemuBinary(),
    which('chown') ?? '/usr/bin/chown',
    which('kill') ?? '/usr/bin/kill',
  ];
  return sudoCheck({
    uid: process.getuid?.() ?? 0,
    helperSetuid: process.platform === 'linux' ? (bridgeHelper()?.setuid ?? false) : false,
    sudo,
    commands,
    allowed: async (cmd) => (await run(sudo!, ['-n', '-l', cmd], { timeoutMs })).code === 0,
  });
}

// --- optional tools ------------------------------------------------------------------

function virtiofsdCheck(): Check {
  const p = findVirtiofsd();
  if (p) return check('virtiofsd', 'ok', `${p}: pim-kboot --share uses virtiofs`);
  return check(
    'virtiofsd',
    'warn',
    'not found: pim-kboot --share uses 9p instead (slower); for virtiofs install virtiofsd (or qemu-system-common up to QEMU 7.2), or set PIM_VIRTIOFSD',
  );
}

function ovmfCheck(): Check {
  try {
    return check('ovmf', 'ok', `${ovmfCode()}: UEFI images and builds can boot`);
  } catch {
    return check(
      'ovmf',
      'warn',
      'no OVMF firmware: UEFI images and builds (firmware: uefi) cannot boot; install ovmf (Debian) or qemu (Homebrew), or set PIM_OVMF_CODE',
    );
  }
}

function isoToolsCheck(): Check {
  const t = which('xorriso') ?? which('bsdtar');
  if (t) return check('iso-tools', 'ok', `${t}: pim-build reads installer ISOs with it`);
  return check(
    'iso-tools',
    'warn',
    'neither xorriso nor bsdtar: pim-build cannot read an installer ISO; install xorriso (or libarchive-tools)',
  );
}

/** Every check, in a fixed order; each bounded by `timeoutMs`, all at once. */
export async function runChecks(timeoutMs: number): Promise<Check[]> {
  const guard = async (name: string, f: () => Check | Promise<Check>): Promise<Check> => {
    try {
      return await f();
    } catch (e) {
      return check(name, 'fail', `the check itself failed: ${(e as Error).message}`);
    }
  };
  const linux = process.platform === 'linux';
  return Promise.all([
    guard('node', nodeCheck),
    guard('qemu', () => qemuCheck(timeoutMs)),
    guard('qemu-img', () => qemuImgCheck(timeoutMs)),
    guard('kvm', () => accelCheck(timeoutMs)),
    guard('runtime-dir', () => runtimeDirCheck()),
    ...(linux
      ? [guard('bridge.conf', () => bridgeConfCheck()), guard('bridge-helper', () => bridgeHelperCheck())]
      : []),
    guard('sudo', () => hostSudoCheck(timeoutMs)),
    guard('virtiofsd', virtiofsdCheck),
    guard('ovmf', ovmfCheck),
    guard('iso-tools', isoToolsCheck),
  ]);
}
