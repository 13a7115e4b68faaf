/**
 * pim-exec: run a command in a VM through its guest agent (guest-exec), with
 * no SSH and no network. The guest's stdout goes to stdout and its stderr to
 * stderr; pim-exec's own stdin is passed on when it is not a terminal; the
 * exit status is the command's (128+N when a signal N ended it). How the end
 * is found (polling: the agent has no completion event), the size limits and
 * what a timeout does are in lib/guest/exec.ts.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { parseTimeout } from '../lib/cli/args.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { guestExec, readInput, SpawnFailed } from '../lib/guest/exec.ts';
import { trapSignals } from '../lib/core/signals.ts';
import { writeOut } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-exec',
    version: VERSION,
    description: 'Run a command in a VM through its guest agent; its output, its exit status.',
    usage: 'NAME [options] -- CMD [ARGS...]',
    passthrough: 'CMD ARGS',
    details: `
The command runs through the guest agent (guest-exec): no SSH, no network. CMD is looked up
on the agent's PATH; it gets no terminal, and no shell unless you run one (-- sh -c '...').
Its stdout and stderr come back separately, when it has ended (QEMU 7.2's agent does not
stream them), each up to 16 MiB (the agent's cap; pim-exec warns when it cut them).
pim-exec's stdin is sent to it when stdin is not a terminal (up to 16 MiB; --no-stdin sends
nothing). The exit status is the command's own, 128+N when signal N ended it, 127 when CMD
was not found, 126 when it could not be run. --timeout S: after S seconds pim-exec kills the
command with the guest's kill (QEMU 7.2's agent cannot kill it itself) and exits 75; Ctrl-C
sends the same signal to the command. The limit bounds the whole of pim-exec: a guest whose
agent does not answer is 69 within it (not after a fixed 30 s). A command that leaves something running in the
background must send that one's output elsewhere (>/dev/null 2>&1), or the agent waits for it.
In a loop that reads stdin (while read ...), give --no-stdin, or pim-exec takes the rest of it.
pim-exec's own errors use the table below, so a command that exits 69 and a VM that is not
running look alike but for the message on stderr.`,
    examples: [
      'pim-exec dev -- uname -a',
      "pim-exec dev -- sh -c 'echo out; echo err >&2; exit 3'",
      'echo hello | pim-exec dev -- tr a-z A-Z',
      'pim-exec dev --timeout 5 -- sleep 60',
    ],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    stdin: {
      type: 'boolean',
      default: true,
      description: 'on by default: stdin goes to the command when it is not a terminal; --no-stdin sends none',
    },
    timeout: {
      type: 'string',
      description:
        'the whole command takes at most S seconds: the command is killed then (exit 75), an agent that never answers is 69; default: no limit',
      valueHint: 'S',
    },
  },
  async run({ args, data }) {
    const { rest } = data as Words;
    if (!rest.length || !rest[0]) throw new PimError(EXIT.USAGE, 'no command: pim-exec NAME -- CMD [ARGS...]');
    const timeoutMs = args.timeout !== undefined ? parseTimeout(args.timeout, 0) : null;
    const vm = await runningVm(args.name);
    if (vm.meta && !vm.meta.agent)
      throw new PimError(EXIT.UNAVAILABLE, `${vm.name} was started without a guest-agent channel`);
    const input = args.stdin && !process.stdin.isTTY ? await readInput(process.stdin) : undefined;
    const trap = trapSignals();
    try {
      const r = await guestExec(vm, { path: rest[0], args: rest.slice(1), input, timeoutMs, signal: trap.signal });
      if (r.stdout.length) writeOut(r.stdout);
      if (r.stderr.length) process.stderr.write(r.stderr);
      if (r.outTruncated || r.errTruncated)
        process.stderr.write(
          `pim-exec: the guest agent cut the command's ${[r.outTruncated ? 'stdout' : '', r.errTruncated ? 'stderr' : ''].filter(Boolean).join(' and ')} at 16 MiB\n`,
        );
      return r.status;
    } catch (e) {
      if (e instanceof SpawnFailed) {
        process.stderr.write(`pim-exec: ${e.message}\n`);
        return e.status;
      }
      throw e;
    } finally {
      trap.dispose();
    }
  },
});
