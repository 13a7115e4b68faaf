/**
 * A VM's serial console: attached two-way through its serial socket (QEMU
 * serves one client at a time), or followed read-only through the log QEMU
 * copies the console into, which misses no byte between a replay and what
 * comes next and leaves the socket free for a person attached meanwhile.
 * Both end with a status: 0 (detached, matched, or the VM stopped without an
 * --until), 69 (the VM stopped before --until matched), 75 (--timeout ran
 * out: the wait for a match, or without --until the session itself; a
 * script that bounds a session learns that the VM still runs).
 */
import * as fs from 'node:fs';
import { basename, dirname } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { openRegular } from '../core/fs.ts';
import { prog } from '../core/prog.ts';
import { guestSink } from '../core/termsafe.ts';
import type { RunningVm } from './state.ts';

const DETACH = 0x1d; // Ctrl-]

export interface ConsoleOpts {
  /** print what the console already wrote first */
  replay?: boolean;
  /** follow (read-only) from this byte offset of the log: wins over `replay` (pim-log -n) */
  from?: number;
  /** end with 0 once the output matches */
  until?: RegExp;
  /** end after this long, with 75 (the wait ran out) */
  waitMs?: number | null;
  /** where the console's bytes go (stdout) */
  out: NodeJS.WritableStream;
  /**
   * show control bytes escaped, pass only text and colour (lib/core/termsafe.ts):
   * the default when `out` is a terminal, for the read-only console (the
   * attached one stays raw)
   */
  safe?: boolean;
}

/**
 * Where to cut chunk `d` when `until` matches the text seen so far (`seen`)
 * followed by it: the byte after the newline that ends the matching line (the
 * whole chunk when that line has no end yet); null when nothing matches.
 */
export function untilCut(seen: string, d: Buffer, until: RegExp): number | null {
  const text = d.toString('utf8');
  const m = until.exec(seen + text);
  if (!m) return null;
  const endInChunk = Math.max(0, m.index + m[0].length - seen.length);
  const from = Buffer.byteLength(text.slice(0, endInChunk), 'utf8');
  // a match that ends with the line's own newline ends that line there
  const nl = m[0].endsWith('\n') && from > 0 ? from - 1 : d.indexOf(0x0a, from);
  return nl < 0 ? d.length : nl + 1;
}

/** The end of a console session: output, the --until match, the timeout, one status. */
function session(
  vm: RunningVm,
  o: ConsoleOpts,
  onEnd: () => void,
): { output(d: Buffer): void; stopped(): void; done: Promise<number>; finish(code: number): void; ended(): boolean } {
  let finished = false;
  let seen = '';
  const sink = guestSink(o.out, o.safe ?? false);
  let resolve: (code: number) => void = () => {};
  const done = new Promise<number>((r) => (resolve = r));
  const finish = (code: number) => {
    if (finished) return;
    finished = true;
    sink.end();
    clearTimeout(timer);
    onEnd();
    resolve(code);
  };
  const timer =
    o.waitMs != null
      ? setTimeout(() => {
          process.stderr.write(
            `${prog()}: ${o.until ? `no match for ${o.until} within ${o.waitMs! / 1000} s` : `--timeout: ${o.waitMs! / 1000} s ran out; ${vm.name} still runs`}\n`,
          );
          finish(EXIT.TEMPFAIL);
        }, o.waitMs)
      : undefined;
  timer?.unref();
  return {
    done,
    finish,
    ended: () => finished,
    output(d) {
      if (finished) return;
      if (!o.until) return sink.write(d);
      const cut = untilCut(seen, d, o.until);
      if (cut === null) {
        sink.write(d);
        seen = (seen + d.toString('utf8')).slice(-65536);
        return;
      }
      sink.write(d.subarray(0, cut)); // up to the end of the matching line: nothing after it
      finish(EXIT.OK);
    },
    stopped() {
      if (!finished) process.stderr.write(`${prog()}: ${vm.name}'s console closed (the VM stopped)\n`);
      finish(o.until ? EXIT.UNAVAILABLE : EXIT.OK);
    },
  };
}

/** Two-way on this terminal, raw; Ctrl-] detaches. */
export async function attachConsole(vm: RunningVm, o: ConsoleOpts): Promise<number> {
  if (!fs.existsSync(vm.files.serial))
    throw new PimError(EXIT.UNAVAILABLE, `${vm.name} has no serial socket (was it started with --console?)`);
  const { connectUnix } = await import('../core/sock.ts');
  const sock = await connectUnix(vm.files.serial, 5_000, 'serial console');
  const s = session(vm, o, () => {
    process.stdin.setRawMode(false);
    process.stdin.pause();
    process.stderr.write('\r\n[detached]\r\n');
    sock.destroy();
  });
  if (o.replay) {
    const fd = openRegular(vm.files.log);
    if (fd !== null) {
      s.output(fs.readFileSync(fd));
      fs.closeSync(fd);
    }
  }
  sock.on('data', s.output);
  sock.on('close', s.stopped);
  sock.on('error', () => undefined);
  process.stderr.write(`Connected to ${vm.name}'s serial console. Ctrl-] detaches.\r\n`);
  process.stdin.setRawMode(true);
  process.stdin.resume();
  process.stdin.on('data', (d: Buffer) => {
    const i = d.indexOf(DETACH);
    if (i >= 0) {
      if (i > 0) sock.write(d.subarray(0, i));
      s.finish(EXIT.OK);
    } else sock.write(d);
  });
  return s.done;
}

/**
 * Read-only: follow the VM's log until the VM stops (its pidfile goes, as
 * QEMU removes it when it exits). One watcher on the runtime dir sees both.
 * The log is opened as a regular file only, never blocking on a FIFO put there.
 */
export async function followConsole(vm: RunningVm, o: ConsoleOpts): Promise<number> {
  const fd = openRegular(vm.files.log);
  if (fd === null) throw new PimError(EXIT.UNAVAILABLE, `${vm.name} has no console log ${vm.files.log}; see pim-ps`);
  let watcher: fs.FSWatcher | null = null;
  const s = session(vm, o, () => {
    watcher?.close();
    fs.closeSync(fd);
  });
  let pos = o.from ?? (o.replay ? 0 : fs.fstatSync(fd).size);
  const buf = Buffer.alloc(65536);
  const pump = () => {
    if (s.ended()) return;
    if (fs.fstatSync(fd).size < pos) pos = 0; // the log was started anew
    let n: number;
    while (!s.ended() && (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0) {
      pos += n;
      s.output(Buffer.from(buf.subarray(0, n)));
    }
  };
  const logName = basename(vm.files.log);
  const pidName = basename(vm.files.pid);
  watcher = fs.watch(dirname(vm.files.log), (_ev, file) => {
    if (file === logName || file === null) pump();
    if ((file === pidName || file === null) && !fs.existsSync(vm.files.pid)) {
      pump();
      s.stopped();
    }
  });
  pump();
  if (!fs.existsSync(vm.files.pid)) s.stopped();
  return s.done;
}
