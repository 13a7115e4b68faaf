/** The running executable's name, and whether a stream may be coloured. Tiny on purpose: every command loads it. */
import { basename } from 'node:path';

export const prog = () => basename(process.argv[1] ?? 'pim').replace(/\.(cjs|mjs|js|ts)$/, '');

/** No colour when the stream is not a TTY, NO_COLOR is set, or TERM=dumb. */
export function useColor(stream: NodeJS.WriteStream): boolean {
  if (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== '') return false;
  if (process.env.TERM === 'dumb') return false;
  return Boolean(stream.isTTY);
}
