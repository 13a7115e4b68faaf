/**
 * pim-console: attach to a VM's serial console. On a terminal it is raw and
 * two-way; Ctrl-] detaches. Without a terminal it refuses, unless --ro
 * (read-only) is given: then it streams the console to stdout, optionally
 * starting with what was already logged (--replay) and stopping when a line
 * matches --until.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { parseTimeout } from '../lib/cli/args.ts';
import { stdout } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-console',
    version: VERSION,
    description: "Attach to a VM's serial console (Ctrl-] detaches).",
    details: `
Two-way and raw on a terminal. With --ro the console is only read and copied to stdout,
which works without a terminal (scripts, tests) and while someone is attached: it follows
the VM's log, where QEMU copies the console, and ends when the VM stops. --replay first prints what the console
already wrote (from the VM's log). --until stops with exit 0 once the output matches
REGEX, after the line that matched (nothing after it); --timeout bounds the wait, with or without --until: exit 75 when it runs out (the
VM still runs). Exit 69 when the VM stops before --until matched. With --ro on a terminal
the guest's control bytes are shown escaped (ESC [ 6 n as ^[[6n): only text, newlines,
tabs and colour pass. A pipe gets the bytes as they are; the attached console is raw.`,
    examples: ['pim-console dev', "pim-console dev --ro --replay --until 'login:|pim-testbed ready' --timeout 60"],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    ro: { type: 'boolean', description: 'read-only: stream the console to stdout' },
    replay: { type: 'boolean', description: 'first print what the console already wrote' },
    until: {
      type: 'string',
      description: 'exit 0 once the output matches this regular expression',
      valueHint: 'REGEX',
    },
    timeout: {
      type: 'string',
      description: 'end after S seconds with exit 75 (with or without --until)',
      valueHint: 'S',
    },
  },
  async run({ args }) {
    if (!args.ro && !process.stdin.isTTY)
      throw new PimError(EXIT.USAGE, 'stdin is not a terminal; use --ro to read the console without typing into it');
    let until: RegExp | undefined;
    try {
      until = args.until ? new RegExp(args.until) : undefined;
    } catch (e) {
      throw new PimError(EXIT.USAGE, `--until is not a valid regular expression: ${(e as Error).message}`);
    }
    const waitMs = args.timeout !== undefined ? parseTimeout(args.timeout, 0) : null;
    const vm = await runningVm(args.name);
    const { attachConsole, followConsole } = await import('../lib/vm/console.ts');
    const out = stdout();
    const opts = { replay: args.replay, until, waitMs, out, safe: args.ro && out.isTTY };
    return args.ro ? followConsole(vm, opts) : attachConsole(vm, opts);
  },
});
