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

/** A duration in seconds as people read it: 44s, 3m4s, 2h5m, 1d3h ("-" for none). pim-ps and pim-status show uptime so. */
export function humanDuration(s: number | null): string {
  if (s === null) return '-';
  const d = Math.floor(s / 86400),
    h = Math.floor((s % 86400) / 3600),
    m = Math.floor((s % 3600) / 60),
    sec = s % 60;
  if (d) return `${d}d${h}h`;
  if (h) return `${h}h${m}m`;
  if (m) return `${m}m${sec}s`;
  return `${sec}s`;
}

/** Bytes as people read them: 512 B, 4.0 KiB, 19.8 MiB, 1.2 GiB. */
export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) (v /= 1024), i++;
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Fields holding a byte count: shown human-sized in a terminal's table (pipes and JSON keep the number). */
const BYTE_FIELD = /^(size|bytes|virtual_size|disk_size)$|_bytes$/;

/** Cut `c` to `w` characters with an ellipsis in the middle (a path keeps its start and its file name). */
const cut = (c: string, w: number) =>
  c.length <= w
    ? c
    : w < 2
      ? c.slice(0, w)
      : `${c.slice(0, Math.ceil((w - 1) / 2))}…${c.slice(c.length - Math.floor((w - 1) / 2))}`;

/**
 * Render records to text. A pipe: one line per record, tab-separated (stable
 * plumbing). A terminal (`tty`): the one table printer every command uses: a
 * header (even with no records), aligned columns, byte counts human-sized,
 * and, at `columns`, the widest cells cut in the middle so that no row wraps.
 */
export function formatRecords(
  recs: Rec[],
  fields: string[],
  opts: OutputOpts & { tty?: boolean; columns?: number } = {},
): string {
  if (opts.json) return recs.map((r) => JSON.stringify(r)).join('\n') + (recs.length ? '\n' : '');
  if (opts.quiet) return recs.map((r) => r.name).join('\n') + (recs.length ? '\n' : '');
  if (!opts.tty) {
    const rows = recs.map((r) => [r.name, ...fields.map((f) => show(r[f]))]);
    return rows.map((r) => r.join('\t')).join('\n') + (rows.length ? '\n' : '');
  }
  const cell = (f: string, v: unknown) =>
    BYTE_FIELD.test(f) && typeof v === 'number' && Number.isFinite(v) ? humanBytes(v) : show(v);
  const rows = recs.map((r) => [show(r.name), ...fields.map((f) => cell(f, r[f]))]);
  const header = ['NAME', ...fields.map((f) => f.toUpperCase().replace(/_/g, '-'))];
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  // fit the width: take from the widest column (never below its header or 8) until the row fits
  const cols = opts.columns ?? 0;
  if (cols > 0) {
    const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
    while (total() > cols - 1) {
      let wi = 0;
      for (let i = 1; i < widths.length; i++) if (widths[i]! > widths[wi]!) wi = i;
      const floor = Math.max(8, header[wi]!.length);
      if (widths[wi]! <= floor) break;
      widths[wi] = Math.max(floor, widths[wi]! - (total() - (cols - 1)));
    }
  }
  return (
    all
      .map((r) =>
        r
          .map((c, i) =>
            i === r.length - 1 ? cut(c, widths[i] ?? c.length) : cut(c, widths[i] ?? 0).padEnd(widths[i] ?? 0),
          )
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export function printRecords(recs: Rec[], fields: string[], opts: OutputOpts = {}): void {
  const tty = !opts.plain && stdoutIsTTY();
  // the terminal's width, only for a terminal (process.stdout costs a few ms to build)
  const columns = tty ? process.stdout.columns || Number(process.env.COLUMNS) || 80 : undefined;
  writeOut(formatRecords(recs, fields, { ...opts, tty, columns }));
}

/** A JSON value on stdout, pretty on a terminal, one line in a pipe. */
export function printJson(v: unknown): void {
  writeOut((stdoutIsTTY() ? JSON.stringify(v, null, 2) : JSON.stringify(v)) + '\n');
}
