/**
 * pim-gdb: QEMU under gdb. `pim-gdb NAME [options] [-- GDB-ARGS]` starts the
 * VM exactly as pim-run would (the same planning: definitions, images, flags,
 * so the same QEMU argv), but in the foreground as `gdb GDB-ARGS --args
 * qemu-system-x86_64 ...`: headless as ever (serial on its socket, QMP, the
 * guest agent), so pim-console, pim-ps and pim-stop work on it meanwhile.
 * --attach attaches gdb to a running VM's QEMU instead (gdb -p PID).
 * The exit status is gdb's.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import pimRun from './pim-run.ts';
import { which } from '../lib/core/which.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { childExit } from '../lib/core/proc.ts';

const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

// pim-run's own options, so that pim-gdb NAME plans the VM as pim-run NAME does;
// --console and --wait make no sense under gdb
// eslint-disable-next-line @typescript-eslint/no-unused-vars
const { console: _c, wait: _w, waitTimeout: _t, ...runArgs } = pimRun.args as Record<string, Record<string, unknown>>;

export default defineCommand({
  meta: {
    name: 'pim-gdb',
    version: VERSION,
    passthrough: 'gdb args',
    description: "Start a VM's QEMU under gdb (its exact pim-run argv), or attach gdb to a running one.",
    details: `
Without --attach, NAME (or an image path) is started as pim-run would start it, with the
same options and the same QEMU command line, but in the foreground under gdb: gdb
GDB-ARGS --args qemu-system-x86_64 .... The VM is headless as ever, so pim-console,
pim-ps, pim-qmp and pim-stop work on it meanwhile; Ctrl-C is gdb's (it stops QEMU). Words
after -- go to gdb (-ex 'break nvme_admin_cmd' -ex run; -batch -ex run for a script).
--attach attaches gdb to the QEMU of a running VM (gdb -p PID), which runs on when gdb
detaches. The exit status is gdb's; 69 when gdb is not installed, or (--attach) the VM
does not run.`,
    examples: [
      "pim-gdb dev --snapshot -- -ex 'break virtio_blk_handle_request' -ex run",
      "pim-gdb dev --attach -- -batch -ex 'info threads'",
    ],
  },
  args: {
    ...runArgs,
    target: {
      type: 'positional',
      description: 'a defined VM, an image in the store, or the path of one (--attach: a running VM)',
      required: true,
      valueHint: 'NAME|IMAGE',
      complete: vmNames,
    },
    attach: { type: 'boolean', description: 'attach to the running VM NAME instead of starting one' },
  } as unknown as typeof pimRun.args & { attach: { type: 'boolean' } },
  async run({ args, data, rawArgs, cmd }) {
    const words = data as Words;
    const gdb = which('gdb');
    if (!gdb) throw new PimError(EXIT.UNAVAILABLE, 'gdb was not found on PATH; install it (apt-get install gdb)');
    // Ctrl-C belongs to gdb (it stops the inferior); pim-gdb waits on
    process.on('SIGINT', () => undefined);
    if (args.attach) {
      const vm = await runningVm(args.target);
      const { spawn } = await import('node:child_process');
      const child = spawn(gdb, [...words.rest, '-p', String(vm.pid)], { stdio: 'inherit' });
      return childExit(child);
    }
    return pimRun.run!({
      args: args as never,
      rawArgs,
      cmd,
      data: { ...words, rest: [], debugger: [gdb, ...words.rest, '--args'] },
    });
  },
});
