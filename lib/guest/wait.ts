/**
 * Waiting for a guest to be really up (pim-wait, pim-run --wait, pim-ctl
 * --wait), on readiness signals, never on sleeps:
 *
 * - agent: the guest agent answers `guest-sync-delimited`. The request is
 *   sent at once; QEMU keeps it in the agent's socket until the guest opens
 *   its end of the virtio port, so the reply is the notification. The sync is
 *   sent again now and then (with a growing interval) in case a first agent
 *   read it and died; replies to older syncs are skipped.
 * - ssh: an SSH banner ("SSH-…") on the forwarded port. QEMU's forward
 *   accepts a TCP connection before anything listens in the guest and then
 *   drops it, so only the banner counts. The host cannot be told when the
 *   guest starts listening: connections are tried with a growing pause.
 * - console:REGEX: a line of the serial console matching REGEX, read from
 *   the VM's log (where QEMU copies the console) as lib/vm/console.ts follows
 *   it: a watcher on the runtime dir, no timer.
 *
 * The VM stopping meanwhile is seen by the same kind of watcher (QEMU removes
 * its pidfile when it exits): exit 69. The timeout is 75, with what was last
 * seen. QMP is not held while waiting (it takes one client at a time, and
 * pim-ps and pim-stop need it); it is asked once, at a timeout, what it sees.
 */
import * as fs from 'node:fs';
import { basename, dirname } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { openRegular } from '../core/fs.ts';
import { isOurProcess } from '../core/proc.ts';
import { qemuMarker, type RunningVm } from '../vm/state.ts';
import { withQmp } from '../vm/connect.ts';
import { GaClient } from '../qemu/ga.ts';

export type WaitFor = { kind: 'agent' } | { kind: 'ssh' } | { kind: 'console'; re: RegExp };

export const WAIT_FORMS = 'ssh, agent or console:REGEX';

/** `agent`, `ssh` or `console:REGEX` (exit 64 otherwise). */
export function parseWaitFor(s: string, flag = '--for'): WaitFor {
  if (s === 'agent' || s === 'ssh') return { kind: s };
  if (s.startsWith('console:')) {
    const src = s.slice('console:'.length);
    if (!src) throw new PimError(EXIT.USAGE, `${flag} console: needs a regular expression, such as console:'login:'`);
    try {
      return { kind: 'console', re: new RegExp(src) };
    } catch (e) {
      throw new PimError(
        EXIT.USAGE,
        `${flag} ${JSON.stringify(s)}: not a valid regular expression: ${(e as Error).message}`,
      );
    }
  }
  throw new PimError(EXIT.USAGE, `${flag} must be ${WAIT_FORMS}, not ${JSON.stringify(s)}`);
}

export const waitLabel = (w: WaitFor) => (w.kind === 'console' ? `console:${w.re.source}` : w.kind);

/** A wait that ended well: what, after how long, and what said so (a banner, the agent's version, a console line). */
export type Ready = {
  name: string;
  for: string;
  seconds: number;
  seen: string;
};

export interface WaitOpts {
  timeoutMs: number;
  /** console: read the log from this offset (default 0: everything this QEMU wrote) */
  logFrom?: number;
  signal?: AbortSignal;
  /** what is still awaited and what each last saw: at the start, when one comes up, and once a second (for a terminal's status line) */
  onProgress?: (waiting: string[], lastSeen: string) => void;
}

/** Exit 64 before anything starts when the VM cannot give one of those signals: no agent channel, no forwarded SSH port. */
export function checkWaitable(name: string, can: { agent: boolean; ssh: boolean }, fors: WaitFor[]): void {
  for (const w of fors) {
    if (w.kind === 'agent' && !can.agent)
      throw new PimError(
        EXIT.USAGE,
        `${name} has no guest-agent channel, so there is no agent to wait for; wait for ssh or console:REGEX`,
      );
    if (w.kind === 'ssh' && !can.ssh) {
      throw new PimError(
        EXIT.USAGE,
        `${name} has no forwarded SSH port (it is bridged), so pim cannot reach its port 22; wait for agent or console:REGEX`,
      );
    }
  }
}

/** What a running VM can signal, from its metadata (none: assume everything). */
export const signalsOf = (vm: RunningVm) => ({
  agent: vm.meta ? vm.meta.agent : true,
  ssh: vm.meta ? Boolean(vm.meta.ssh_port) : false,
});

class Stopped extends Error {}
class TimedOut extends Error {}

interface Probe {
  w: WaitFor;
  last: string;
}

/** Calls `onStop` once QEMU's pidfile is gone (QEMU removes it as it exits). Returns the dispose function. */
function watchStopped(vm: RunningVm, onStop: () => void): () => void {
  const pidName = basename(vm.files.pid);
  const w = fs.watch(dirname(vm.files.pid), (_ev, f) => {
    if ((f === pidName || f === null) && !fs.existsSync(vm.files.pid)) onStop();
  });
  if (!fs.existsSync(vm.files.pid)) onStop();
  return () => w.close();
}

const alive = (vm: RunningVm) => isOurProcess(vm.pid, qemuMarker(vm.files));

/** Until the VM is seen gone (the stop watcher aborts `signal`, or its process ends), at most `ms`. */
function stopShows(vm: RunningVm, signal: AbortSignal, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const end = Date.now() + ms;
    let timer: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done, { once: true });
    // a QEMU killed with SIGKILL leaves its pidfile: then only its process tells
    const look = () => (!alive(vm) || Date.now() >= end ? done() : (timer = setTimeout(look, 50)));
    look();
  });
}

/**
 * Wait until every one of `fors` says the guest is up. Exit 75 on timeout
 * (with what was last seen), 69 when the VM stops meanwhile.
 */
export async function waitUp(vm: RunningVm, fors: WaitFor[], o: WaitOpts): Promise<Ready[]> {
  checkWaitable(vm.name, signalsOf(vm), fors);
  const t0 = Date.now();
  const ctl = new AbortController();
  const stopWatch = watchStopped(vm, () => ctl.abort(new Stopped()));
  const timer = setTimeout(() => ctl.abort(new TimedOut()), o.timeoutMs);
  const onOuter = () => ctl.abort(o.signal!.reason);
  o.signal?.addEventListener('abort', onOuter, { once: true });
  const probes: Probe[] = fors.map((w) => ({ w, last: 'nothing yet' }));
  const pending = new Set(probes);
  const progress = () =>
    o.onProgress?.(
      [...pending].map((p) => waitLabel(p.w)),
      [...pending].map((p) => p.last).join('; '),
    );
  // a clock for the display only: nothing waits on it
  const ticker = o.onProgress ? setInterval(progress, 1000) : undefined;
  ticker?.unref();
  progress();
  try {
    return await Promise.all(
      probes.map(async (p) => {
        const seen = await probe(vm, p, ctl.signal, o.logFrom ?? 0);
        pending.delete(p);
        progress();
        return { name: vm.name, for: waitLabel(p.w), seconds: Math.round((Date.now() - t0) / 100) / 10, seen };
      }),
    );
  } catch (e) {
    // a probe's connection closes a moment before QEMU is gone (it closes its sockets,
    // then removes its pidfile and exits): give the stop a moment to show, so that a VM
    // that stopped is told as such, not as a connection that closed
    if (!ctl.signal.aborted && e instanceof PimError && e.code === EXIT.UNAVAILABLE)
      await stopShows(vm, ctl.signal, 2_000);
    const why = ctl.signal.aborted ? ctl.signal.reason : e;
    const open = [...pending];
    const what = open.map((p) => waitLabel(p.w)).join(' and ') || fors.map(waitLabel).join(' and ');
    const last = open.map((p) => (open.length > 1 ? `${waitLabel(p.w)}: ${p.last}` : p.last)).join('; ');
    if (why instanceof Stopped || (!(why instanceof TimedOut) && why === e && !alive(vm))) {
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${vm.name} stopped while waiting for ${what} (last seen: ${last}); its log: ${vm.files.log}`,
      );
    }
    if (why instanceof TimedOut) {
      if (!alive(vm))
        throw new PimError(
          EXIT.UNAVAILABLE,
          `${vm.name} stopped while waiting for ${what} (last seen: ${last}); its log: ${vm.files.log}`,
        );
      const qmp = await qmpView(
        vm,
        open.some((p) => p.w.kind === 'agent'),
      );
      throw new PimError(
        EXIT.TEMPFAIL,
        `${vm.name}: ${what} not up within ${o.timeoutMs / 1000} s; last seen: ${last}${qmp ? `; ${qmp}` : ''}`,
      );
    }
    throw why;
  } finally {
    clearInterval(ticker);
    clearTimeout(timer);
    stopWatch();
    o.signal?.removeEventListener('abort', onOuter);
    if (!ctl.signal.aborted) ctl.abort(new Stopped()); // ends the probes still running
  }
}

/** At a timeout: what QMP sees (a paused VM; whether the guest opened the agent's port). '' when all looks normal. */
async function qmpView(vm: RunningVm, agent: boolean): Promise<string> {
  try {
    return await withQmp(vm, 3_000, async (q) => {
      const out: string[] = [];
      const st = (await q.execute('query-status')) as { status: string; running: boolean };
      if (!st.running)
        out.push(
          `the VM is not running inside QEMU (status ${st.status}${st.status === 'paused' ? `: pim-ctl ${vm.name} resume` : ''})`,
        );
      if (agent) {
        const ch = (await q.execute('query-chardev')) as Array<{ label: string; 'frontend-open'?: boolean }>;
        const ga = ch.find((c) => c.label === 'ga0');
        if (ga && ga['frontend-open'] === false)
          out.push(
            "the guest never opened the agent's virtio port (is qemu-guest-agent installed and started in the guest?)",
          );
        else if (ga) out.push("the guest opened the agent's port, but the agent did not answer");
      }
      return out.join('; ');
    });
  } catch {
    return '';
  }
}

function probe(vm: RunningVm, p: Probe, signal: AbortSignal, logFrom: number): Promise<string> {
  if (p.w.kind === 'agent') return agentProbe(vm, p, signal);
  if (p.w.kind === 'ssh') {
    const port = vm.meta!.ssh_port!;
    return waitSshBanner('127.0.0.1', port, Number.POSITIVE_INFINITY, signal, (s) => (p.last = s));
  }
  return consoleProbe(vm, p, p.w.re, logFrom, signal);
}

async function agentProbe(vm: RunningVm, p: Probe, signal: AbortSignal): Promise<string> {
  p.last = 'no reply to guest-sync from the guest agent';
  const g = await GaClient.connect(vm.files.ga, 5_000);
  const onAbort = () => g.close();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    // each sync is sent again after a growing interval; the reply to the
    // latest one (the agent answers them in order) ends the wait
    let attemptMs = 1_000;
    for (;;) {
      if (signal.aborted) throw signal.reason;
      try {
        await g.proto.sync(attemptMs);
        break;
      } catch (e) {
        if (signal.aborted) throw signal.reason;
        if (!(e instanceof PimError) || e.code !== EXIT.TEMPFAIL) throw e;
        attemptMs = Math.min(attemptMs * 2, 8_000);
      }
    }
    p.last = 'the agent answered guest-sync';
    const info = (await g.proto.request('guest-info', undefined, 5_000)) as { version?: string };
    return `qemu-ga ${info?.version ?? '?'}`;
  } finally {
    signal.removeEventListener('abort', onAbort);
    g.close();
  }
}

// eslint-disable-next-line no-control-regex
const clean = (s: string) => s.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, '').replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');

/** Follow the log from `from` until a line matches `re` (the line being written counts too: a prompt has no newline). */
function consoleProbe(vm: RunningVm, p: Probe, re: RegExp, from: number, signal: AbortSignal): Promise<string> {
  const fd = openRegular(vm.files.log);
  if (fd === null)
    return Promise.reject(new PimError(EXIT.UNAVAILABLE, `${vm.name} has no console log ${vm.files.log}`));
  p.last = 'no console output yet';
  const rx = new RegExp(re.source, re.flags.replace(/[gy]/g, '')); // no lastIndex state between lines
  return new Promise<string>((resolve, reject) => {
    let pos = from;
    let partial = '';
    let finished = false;
    const buf = Buffer.alloc(65536);
    const end = (err: unknown, line?: string) => {
      if (finished) return;
      finished = true;
      watcher.close();
      fs.closeSync(fd);
      signal.removeEventListener('abort', onAbort);
      if (line !== undefined) resolve(line);
      else reject(err);
    };
    const onAbort = () => end(signal.reason);
    const test = (line: string): boolean => {
      const c = clean(line); // matched as written, but for escape sequences and CRs
      const shown = c.trim();
      if (shown) p.last = `console: ${JSON.stringify(shown.slice(0, 160))}`;
      if (rx.test(c)) {
        end(null, shown);
        return true;
      }
      return false;
    };
    const pump = () => {
      if (finished) return;
      try {
        if (fs.fstatSync(fd).size < pos) pos = 0; // the log was started anew
        let n: number;
        while (!finished && (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0) {
          pos += n;
          const lines = (partial + buf.toString('utf8', 0, n)).split('\n');
          partial = lines.pop()!.slice(-65536);
          for (const l of lines) if (test(l)) return;
        }
        if (partial) test(partial);
      } catch (e) {
        end(e);
      }
    };
    const logName = basename(vm.files.log);
    const watcher = fs.watch(dirname(vm.files.log), (_ev, f) => {
      if (f === logName || f === null) pump();
    });
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) return end(signal.reason);
    pump();
  });
}

const NOTHING_YET = 'nothing yet';
/** At most this many probes are open at once (the oldest is closed for the newest). */
const MAX_OPEN_PROBES = 10;

/**
 * Wait until an SSH server answers on host:port with its banner ("SSH-2.0-…"):
 * QEMU's port forward accepts a TCP connection before the guest listens, so
 * only the banner says sshd is up. Attempts overlap: a new connection every
 * `interval` (100 ms, growing to 500 ms), up to MAX_OPEN_PROBES at once, the oldest
 * closed for the newest. An old one is kept because it may still succeed
 * (QEMU's slirp retries its SYN to the guest with TCP's back-off, so a forward
 * made while the guest booted answers seconds late), and new ones are made
 * because each sends a fresh SYN the moment the guest listens. The first
 * banner wins. Exit 75 at `deadline`; when `signal` aborts its reason is
 * thrown. `seen` hears what each attempt found. (pim-build's provisioning
 * uses it too, through lib/builder/ssh.ts.)
 */
export async function waitSshBanner(
  host: string,
  port: number,
  deadline: number,
  signal?: AbortSignal,
  seen?: (what: string) => void,
): Promise<string> {
  const net = await import('node:net');
  return new Promise<string>((resolve, reject) => {
    const open: import('node:net').Socket[] = [];
    // sockets the guest's side took (QEMU's forward reached a listening sshd): when they were
    const waiting = new Map<import('node:net').Socket, number>();
    let interval = 100;
    const t0 = Date.now();
    let last = NOTHING_YET;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: unknown, banner?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearTimeout(end);
      signal?.removeEventListener('abort', onAbort);
      for (const s of open.splice(0)) s.destroy();
      if (banner !== undefined) resolve(banner);
      else reject(err);
    };
    const note = (what: string) => {
      last = what;
      seen?.(what);
    };
    const onAbort = () => finish(signal!.reason);
    const left = deadline - Date.now();
    const end = setTimeout(
      () => finish(new PimError(EXIT.TEMPFAIL, `SSH on ${host}:${port} did not answer in time (last seen: ${last})`)),
      Number.isFinite(left) ? Math.max(0, left) : 2 ** 31 - 1,
    );
    const attempt = () =>
      bannerAttempt(net, { host, port, open, waiting, isFinished: () => finished, last: () => last, note, finish });
    const tick = () => {
      // a connection still open is one the guest may answer on: under TCG an sshd takes
      // seconds to fork and send its banner, and every connection dropped meanwhile costs
      // it another fork (a slow guest, probed twice a second, never caught up): no new
      // attempt while one is open and younger than the hold. The hold grows with the wait
      // (half the time waited so far, at most 5 s): early on a forward that slirp still
      // retries is soon passed over by a fresh SYN; a guest that takes long gets few probes
      const now = Date.now();
      const hold = Math.min(5_000, (now - t0) / 2);
      const pending = [...waiting.values()].some((t) => now - t < hold);
      if (!pending) attempt();
      timer = setTimeout(tick, interval);
      interval = Math.min(Math.round(interval * 1.5), 500);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) return onAbort();
    tick();
  });
}

/** What one SSH banner probe shares with the wait that makes it. */
interface BannerWait {
  host: string;
  port: number;
  /** the probes still open, oldest first */
  open: import('node:net').Socket[];
  /** probes the guest's side took (QEMU's forward reached a listening sshd): when they were */
  waiting: Map<import('node:net').Socket, number>;
  isFinished: () => boolean;
  /** what the wait saw last */
  last: () => string;
  note: (what: string) => void;
  finish: (err: unknown, banner?: string) => void;
}

/** One probe of waitSshBanner: a connection that reads the first line and says what it found. */
function bannerAttempt(net: typeof import('node:net'), w: BannerWait): void {
  const { host, port, open, waiting, note } = w;
  if (w.isFinished()) return;
  if (open.length >= MAX_OPEN_PROBES) open.shift()!.destroy();
  const s = net.createConnection({ host, port });
  open.push(s);
  let buf = '';
  let connected = false;
  const drop = () => {
    const i = open.indexOf(s);
    if (i >= 0) open.splice(i, 1);
    waiting.delete(s);
    s.destroy();
  };
  s.on('connect', () => {
    connected = true;
    waiting.set(s, Date.now());
    if (w.last() === NOTHING_YET)
      note(
        `${host}:${port} accepted a connection but sent no banner yet (QEMU's forward is up; the guest's port 22 is not answering yet)`,
      );
  });
  s.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    const nl = buf.indexOf('\n');
    if (nl < 0 && buf.length < 256) return;
    const line = (nl >= 0 ? buf.slice(0, nl) : buf).trim();
    if (line.startsWith('SSH-')) return w.finish(null, line);
    note(`${host}:${port} answered ${JSON.stringify(line.slice(0, 80))}, not an SSH banner`);
    drop();
  });
  s.on('error', (e: NodeJS.ErrnoException) => {
    note(`${host}:${port}: ${e.code ?? e.message}`);
    drop();
  });
  s.on('close', () => {
    if (w.isFinished()) return;
    if (connected && !buf)
      note(
        `${host}:${port} accepted and closed without a banner (QEMU's forward is up; nothing listens on the guest's port 22 yet)`,
      );
    drop();
  });
}
