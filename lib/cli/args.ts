/**
 * Argument groups that several commands share (nuxt/cli style), and the
 * parsing of their values: defined once, so every command spells, documents
 * and checks them the same way.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { reportError } from './command.ts';

export const jsonArgs = {
  json: { type: 'boolean', description: 'print JSON (one object per line)' },
} as const;

export const quietArgs = {
  quiet: { type: 'boolean', alias: 'q', description: 'print names only' },
} as const;

/** `--timeout S`: seconds, with a default and what the command waits for. */
export const timeoutArgs = (dflt: number | undefined, what: string) =>
  ({
    timeout: {
      type: 'string',
      description: `seconds to wait ${what}`,
      valueHint: 'S',
      ...(dflt === undefined ? {} : { default: String(dflt) }),
    },
  }) as const;

/** --timeout in seconds -> ms; nonsense (0, negative, "x", NaN) is a usage error. */
export function parseTimeout(v: string | undefined, dflt: number, flag = '--timeout'): number {
  if (v === undefined) return dflt * 1000;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0)
    throw new PimError(EXIT.USAGE, `${flag} must be a positive number of seconds, not ${JSON.stringify(v)}`);
  return Math.round(n * 1000);
}

/** Parse JSON arguments given on the command line (exit 64 when they do not parse). */
export function jsonArg(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new PimError(
      EXIT.USAGE,
      `arguments must be a JSON object such as '{"key":"value"}': ${(e as Error).message}`,
    );
  }
}

/**
 * VM names given, or else read from stdin (the first word of each line), as in
 * `pim-ps -q | fzf -m | pim-stop`. A terminal on stdin is a usage error (`tty`
 * says what to type); empty input (fzf cancelled, no VM listed) is nothing to
 * do: an empty list, and the caller exits 0 quietly.
 */
export async function namesOrStdin(given: string[], tty: string): Promise<string[]> {
  if (given.length) return given;
  if (process.stdin.isTTY) throw new PimError(EXIT.USAGE, tty);
  const { text } = await import('node:stream/consumers');
  return (await text(process.stdin))
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

/**
 * Run `fn` for each name (at once, or one after another), report each
 * failure on its own line and go on with the others. Returns the exit status:
 * the first failure's code, or 0.
 */
export async function forEachName(
  names: string[],
  fn: (name: string) => Promise<number | void>,
  opts: { parallel?: boolean } = {},
): Promise<number> {
  let code = 0;
  const one = async (name: string) => {
    try {
      const c = await fn(name);
      if (typeof c === 'number' && c !== 0 && code === 0) code = c;
    } catch (e) {
      const c = reportError(e);
      if (code === 0) code = c;
    }
  };
  const unique = [...new Set(names)];
  if (opts.parallel) await Promise.all(unique.map(one));
  else for (const n of unique) await one(n);
  return code;
}
