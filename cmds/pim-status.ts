/**
 * pim-status: the VM's run state as QEMU reports it (QMP query-status).
 * Exit 0 when running, 1 when QEMU answers but the guest is not running
 * (paused, shut down, internal error), 69 when there is no such VM. A KVM
 * VM in internal-error marks KVM broken on this host (lib/vm/health.ts), and
 * one seen running for a minute marks it working.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout, forEachName } from '../lib/cli/args.ts';
import { EXIT } from '../lib/core/exit.ts';
import { runningVm, withQmp } from '../lib/vm/connect.ts';
import { printRecords, humanDuration } from '../lib/cli/output.ts';
import { noteStatus, runSeconds, kvmErrorHint } from '../lib/vm/health.ts';
import { prog } from '../lib/core/prog.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-status',
    version: VERSION,
    description: "Show a VM's state from QMP: NAME, status, pid, uptime.",
    examples: ['pim-status dev', 'pim-status dev --json'],
  },
  args: {
    names: { type: 'positional', variadic: true, valueHint: 'NAME', description: 'VMs to ask', complete: vmNames },
    ...jsonArgs,
    ...timeoutArgs(10, 'for QMP'),
  },
  async run({ args, data }) {
    const ms = parseTimeout(args.timeout, 10);
    return forEachName((data as Words).positionals, async (name) => {
      const vm = await runningVm(name);
      const st = (await withQmp(vm, ms, (q) => q.execute('query-status'))) as { status: string; running: boolean };
      const up = runSeconds(vm.meta);
      // what this says about KVM is remembered (an internal error: broken; a minute running: ok)
      await noteStatus(vm, st);
      // uptime as pim-ps shows it (12s, 3m4s; seconds in JSON); JSON also says `state`, as pim-ps does (`status` is kept)
      const rec = args.json
        ? { name, state: st.status, status: st.status, running: st.running, pid: vm.pid, uptime: up }
        : { name, status: st.status, pid: vm.pid, uptime: humanDuration(up) };
      printRecords([rec], ['status', 'pid', 'uptime'], { json: args.json });
      if (st.status === 'internal-error' && vm.meta?.accel === 'kvm')
        process.stderr.write(`${prog()}: ${kvmErrorHint(name)}\n`);
      return st.running ? EXIT.OK : EXIT.NO;
    });
  },
});
