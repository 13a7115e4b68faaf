/**
 * pim-log: a VM's log (QEMU's own messages and the serial console, one file:
 * NAME.log in the runtime dir), also after the VM stopped. -f follows it
 * until the VM stops; -n N starts at the last N lines. The work is
 * lib/vm/log.ts.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { vmRef } from '../lib/vm/ref.ts';
import { stdout } from '../lib/cli/output.ts';

/** VMs with a log: running ones, and stopped ones whose log is kept (loaded at TAB time only) */
const logNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeLoggedNames);

export default defineCommand({
  meta: {
    name: 'pim-log',
    version: VERSION,
    description: "Show a VM's log (QEMU's messages and the serial console), also of a stopped VM; -f follows it.",
    details: `
The log is $XDG_RUNTIME_DIR/pim/NAME.log: QEMU's stderr (its warnings and errors) and
everything the guest wrote on its serial console, in the order they came. It is kept
when the VM stops, for a post-mortem, until pim-rm NAME removes it or the next start of
NAME begins a new one (pim-ps --all lists such VMs as "stopped"). -f prints what follows
as it is written and ends when the VM stops (exit 0); a VM that is not running has
nothing to follow: its log is printed and that is all. No log of NAME is exit 66.
On a terminal the guest's control bytes are shown escaped (ESC [ 6 n as ^[[6n): only
text, newlines, tabs and colour pass, so a guest cannot drive your terminal. A pipe
gets the bytes as they are.`,
    examples: ['pim-log dev', 'pim-log dev -n 20', 'pim-log dev -f', "pim-log dev | grep -i 'kernel panic'"],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: logNames },
    follow: { type: 'boolean', alias: 'f', description: 'go on printing until the VM stops' },
    lines: { type: 'string', alias: 'n', description: 'start at the last N lines', valueHint: 'N' },
  },
  async run({ args }) {
    let lines: number | undefined;
    if (args.lines !== undefined) {
      lines = Number(args.lines);
      if (!/^\d+$/.test(args.lines) || !Number.isSafeInteger(lines))
        throw new PimError(EXIT.USAGE, `-n must be a number of lines, not ${JSON.stringify(args.lines)}`);
    }
    const ref = vmRef(args.name);
    const { showLog } = await import('../lib/vm/log.ts');
    const out = stdout();
    return showLog(ref, { follow: args.follow, lines, out, safe: out.isTTY });
  },
});
