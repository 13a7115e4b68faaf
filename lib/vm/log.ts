/**
 * A VM's log, NAME.log in the runtime dir: QEMU's stdout and stderr (its
 * warnings and errors) and the serial console, which QEMU copies there
 * (lib/vm/launch.ts, lib/qemu/argv.ts). It outlives the VM for a post-mortem
 * until pim-rm removes it or the next start of that name begins a new one.
 * Shown whole or from its last N lines; followed (-f) through
 * lib/vm/console.ts's followConsole until the VM stops.
 */
import { closeSync, fstatSync, readSync } from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import { openRegular } from '../core/fs.ts';
import { guestSink } from '../core/termsafe.ts';
import { vmInfo, type RunningVm } from './state.ts';
import type { VmRef } from './ref.ts';

/** The byte offset where the last `n` lines of the file open as `fd` begin (0 when it has fewer). */
export function tailOffset(fd: number, n: number): number {
  const size = fstatSync(fd).size;
  if (n <= 0) return size;
  const buf = Buffer.alloc(64 * 1024);
  let seen = 0;
  for (let pos = size; pos > 0; ) {
    const len = Math.min(buf.length, pos);
    pos -= len;
    readSync(fd, buf, 0, len, pos);
    for (let i = len - 1; i >= 0; i--) {
      // the newline that ends the file ends the last line; it does not start one
      if (buf[i] !== 0x0a || pos + i === size - 1) continue;
      if (++seen === n) return pos + i + 1;
    }
  }
  return 0;
}

export interface LogOpts {
  /** keep following until the VM stops */
  follow?: boolean;
  /** only the last N lines (then follow from there) */
  lines?: number;
  out: NodeJS.WritableStream;
  /** show the guest's control bytes escaped (for a terminal: lib/core/termsafe.ts) */
  safe?: boolean;
}

/** Copy `fd` from `from` to its current end into `out` (made safe for a terminal with `safe`). */
function copy(fd: number, from: number, out: NodeJS.WritableStream, safe: boolean): void {
  const sink = guestSink(out, safe);
  const buf = Buffer.alloc(64 * 1024);
  let pos = from;
  for (let n; (n = readSync(fd, buf, 0, buf.length, pos)) > 0; pos += n) sink.write(Buffer.from(buf.subarray(0, n)));
  sink.end();
}

/**
 * Print VM `ref`'s log (66 when there is none); with `follow`, go on while
 * the VM runs and return when it stops. A VM that does not run has nothing
 * to follow: its kept log is printed and that is all.
 */
export async function showLog(ref: VmRef, o: LogOpts): Promise<number> {
  const info = await vmInfo(ref);
  const fd = openRegular(ref.files.log);
  if (fd === null) {
    const why =
      info.state === 'running'
        ? 'it was started without one'
        : 'it is not running, and no log of it was kept (pim-rm removes them)';
    throw new PimError(EXIT.NOINPUT, `no log of ${ref.name} in ${ref.dir}: ${why}; see pim-ps --all`);
  }
  let from = 0;
  try {
    from = o.lines !== undefined ? tailOffset(fd, o.lines) : 0;
    if (!o.follow || info.state !== 'running') {
      copy(fd, from, o.out, o.safe ?? false);
      if (o.follow) process.stderr.write(`${ref.name} is not running: its log is shown, there is nothing to follow\n`);
      return EXIT.OK;
    }
  } finally {
    closeSync(fd);
  }
  const { followConsole } = await import('./console.ts');
  return followConsole(info as RunningVm, { from, out: o.out, safe: o.safe });
}
