/**
 * The one place that formats output. Records go to stdout: one per line,
 * the name first, fields separated by tabs; or JSON lines with --json; or
 * names alone with -q. On a terminal (and not --json/-q) they are shown as
 * an aligned table with a header.
 */
import { stdoutIsTTY, writeOut } from './out.ts';

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

/** Shared argument groups (nuxt/cli style). */
export const jsonArgs = {
  json: { type: 'boolean', description: 'print JSON (one object per line)' },
} as const;
export const quietArgs = {
  quiet: { type: 'boolean', alias: 'q', description: 'print names only' },
} as const;
