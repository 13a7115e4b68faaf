import { EXIT, PimError } from './exit.ts';

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

/** Throws a usage error (exit 64) for a bad VM name. */
export function checkName(name: string): string {
  const why = nameProblem(name);
  if (why) throw new PimError(EXIT.USAGE, `bad VM name ${JSON.stringify(name)}: ${why}`);
  return name;
}
