/**
 * Writing to stdout. Records are written with fs.writeSync(1): touching
 * process.stdout makes Node build a stream (and load node:stream), which
 * costs a few milliseconds at start-up. Commands that stream (pim-console,
 * pim-kboot --exec) use stdout(), which also handles EPIPE. Either way a
 * closed pipe (`| head`) ends the process quietly with status 0.
 */
import { writeSync } from 'node:fs';

let stream = false;

/** process.stdout, with EPIPE handled; from then on writeOut goes through it too, in order. */
export function stdout(): NodeJS.WriteStream {
  if (!stream) {
    stream = true;
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
  }
  return process.stdout;
}

export const stdoutStreamUsed = () => stream;

export function writeOut(data: string | Uint8Array): void {
  if (stream) {
    process.stdout.write(data);
    return;
  }
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue; // a non-blocking pipe that is full: try again
      if (code === 'EPIPE') process.exit(0);
      throw e;
    }
  }
}

/** Is stdout a terminal? (Without building process.stdout.) */
export function stdoutIsTTY(): boolean {
  const { isatty } = process.getBuiltinModule('node:tty') as typeof import('node:tty');
  return isatty(1);
}
