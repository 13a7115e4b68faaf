/**
 * Logs and progress go to stderr, never stdout, through consola's core with
 * a small reporter: "pim-run: message". No colour unless stderr is a TTY and
 * NO_COLOR is unset and TERM is not dumb. PIM_LOG=debug|info|warn|error|silent.
 */
import { createConsola, type ConsolaInstance, type LogObject } from 'consola/core';
import { prog, useColor } from './prog.ts';

export { prog, useColor };

const LEVELS: Record<string, number> = { silent: -999, error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

const colours: Record<string, string> = {
  error: '31',
  fatal: '31',
  warn: '33',
  success: '32',
  debug: '90',
  trace: '90',
};

export const log: ConsolaInstance = createConsola({
  level: LEVELS[process.env.PIM_LOG ?? 'info'] ?? 3,
  reporters: [
    {
      log(obj: LogObject) {
        const msg = obj.args
          .map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.message : JSON.stringify(a)))
          .join(' ');
        const c = colours[obj.type];
        const tag = obj.type === 'warn' ? 'warning: ' : obj.type === 'error' || obj.type === 'fatal' ? 'error: ' : '';
        const text = `${prog()}: ${tag}${msg}`;
        process.stderr.write((c && useColor(process.stderr) ? `\x1b[${c}m${text}\x1b[0m` : text) + '\n');
      },
    },
  ],
});
