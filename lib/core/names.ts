import { EXIT, PimError } from './exit.ts';
import { prog } from './prog.ts';

export const NAME_MAX = 64;
// Letters, digits, dot, underscore, dash; must not start with '-' or '.'.
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** Returns the reason a VM name is refused, or null when it is fine. */
export function nameProblem(name: string): string | null {
  if (name.length === 0) return 'the name is empty';
  if (name.length > NAME_MAX) return `the name is longer than ${NAME_MAX} characters`;
  if (name.startsWith('-')) return 'the name starts with "-"';
  if (name.includes('/')) return 'the name contains "/"';
  if (name.includes('..')) return 'the name contains ".."';
  if (!NAME_RE.test(name)) return 'use only letters, digits, ".", "_" and "-", starting with a letter or digit';
  return null;
}

/** Words of a pim-ps line besides the name: states, yes/no, kinds, accelerators, '-'. */
const FIELD_WORDS = new Set(
  [
    'running',
    'paused',
    'starting',
    'stale',
    'stopped',
    'unknown',
    'internal-error',
    'shutdown',
    'guest-panicked',
    'prelaunch',
    'suspended',
    'io-error',
    'watchdog',
  ].concat(['yes', 'no', '-', 'run', 'kboot', 'build', 'kvm', 'tcg', 'hvf']),
);

/**
 * Does `word` look like a path or a field of a pim-ps line (a pid, a port, an
 * uptime, a state, an image, forwards, a whole tab-separated line) rather
 * than a VM name? Such words come from `pim-ps | xargs CMD`.
 */
export function looksLikeField(word: string): boolean {
  return (
    /[/:\s]/.test(word) ||
    /^\d+$/.test(word) ||
    /^\d+(s|m\d+s|h\d+m|d\d+h)$/.test(word) ||
    /\.(qcow2|img|raw|iso|vmdk|vdi)$/i.test(word) ||
    FIELD_WORDS.has(word)
  );
}

/** '' or the advice for a name that looks like a pim-ps field: "; it looks like ... (pim-ps -q | xargs CMD)". */
export function fieldHint(word: string): string {
  return looksLikeField(word)
    ? `; it looks like a path or a field of a pim-ps line, not a VM name: pass names alone (pim-ps -q | xargs ${prog()})`
    : '';
}

/** Throws a usage error (exit 64) for a bad VM name. */
export function checkName(name: string): string {
  const why = nameProblem(name);
  if (why) throw new PimError(EXIT.USAGE, `bad VM name ${JSON.stringify(name)}: ${why}${fieldHint(name)}`);
  return name;
}
