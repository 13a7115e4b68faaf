/**
 * Stdout, and the one place that formats what goes there.
 *
 * Records go to stdout: one per line, the name first, fields separated by
 * tabs; or JSON lines with --json; or names alone with -q. On a terminal (and
 * not --json/-q) they are shown as an aligned table with a header.
 *
 * Records are written with fs.writeSync(1): touching process.stdout makes
 * Node build a stream (and load node:stream), which costs a few milliseconds
 * at start-up. Commands that stream (pim-console, pim-kboot --exec) use
 * stdout(), which also handles EPIPE. Either way a closed pipe (`| head`)
 * ends the process quietly with status 0.
 */
import { fstatSync, statSync, writeSync } from 'node:fs';
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

/**
 * Is stdout a terminal? Without building process.stdout, and without loading
 * node:tty (which loads net and the streams: a few ms) unless stdout is a
 * character device other than /dev/null: a pipe, a file or /dev/null is
 * answered by two stat calls.
 */
export function stdoutIsTTY(): boolean {
  try {
    const st = fstatSync(1);
    if (!st.isCharacterDevice() || st.rdev === statSync('/dev/null').rdev) return false;
  } catch {
    return false;
  }
  const { isatty } = process.getBuiltinModule('node:tty') as typeof import('node:tty');
  return isatty(1);
}

export type Rec = { name: string } & Record<string, unknown>;

export interface OutputOpts {
  json?: boolean;
  quiet?: boolean;
  /** never an aligned table, even on a terminal (for records printed one at a time) */
  plain?: boolean;
}

const show = (v: unknown): string => {
  if (v === undefined || v === null || v === '') return '-';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v).replace(/[\t\n]/g, ' ');
};

/** Render records to text (no trailing newline handling needed by callers). */
export function formatRecords(recs: Rec[], fields: string[], opts: OutputOpts & { tty?: boolean } = {}): string {
  if (opts.json) return recs.map((r) => JSON.stringify(r)).join('\n') + (recs.length ? '\n' : '');
  if (opts.quiet) return recs.map((r) => r.name).join('\n') + (recs.length ? '\n' : '');
  const rows = recs.map((r) => [r.name, ...fields.map((f) => show(r[f]))]);
  if (!opts.tty) return rows.map((r) => r.join('\t')).join('\n') + (rows.length ? '\n' : '');
  const header = ['NAME', ...fields.map((f) => f.toUpperCase().replace(/_/g, '-'))];
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}

export function printRecords(recs: Rec[], fields: string[], opts: OutputOpts = {}): void {
  const tty = !opts.plain && stdoutIsTTY();
  if (!recs.length && tty && !opts.json && !opts.quiet) return;
  writeOut(formatRecords(recs, fields, { ...opts, tty }));
}

/** A JSON value on stdout, pretty on a terminal, one line in a pipe. */
export function printJson(v: unknown): void {
  writeOut((stdoutIsTTY() ? JSON.stringify(v, null, 2) : JSON.stringify(v)) + '\n');
}
