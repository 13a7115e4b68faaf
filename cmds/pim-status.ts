/**
 * pim-status: the VM's run state as QEMU reports it (QMP query-status).
 * Exit 0 when running, 1 when QEMU answers but the guest is not running
 * (paused, shut down, internal error), 69 when there is no such VM.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { jsonArgs } from '../lib/cli/output.ts';
import { completeVmNames } from '../lib/vm/complete.ts';
import { EXIT } from '../lib/core/exit.ts';

export const cmd = defineCmd({
  name: 'pim-status',
  summary: "Show a VM's state from QMP: NAME, status, pid, uptime.",
  usage: 'NAME... [--json]',
  examples: ['pim-status dev', 'pim-status dev --json'],
  args: { ...jsonArgs, timeout: { type: 'string', description: 'seconds to wait for QMP', default: '10' } },
  positionals: { min: 1 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { checkName } = await import('../lib/core/names.ts');
    const { ensureRuntimeDir } = await import('../lib/core/paths.ts');
    const { requireRunning } = await import('../lib/vm/state.ts');
    const { QmpClient } = await import('../lib/qemu/qmp.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const { reportError } = await import('../lib/cli/command.ts');
    const dir = ensureRuntimeDir();
    let code: number = EXIT.OK;
    for (const name of positionals) {
      try {
        checkName(name);
        const vm = await requireRunning(name, dir);
        const qmp = await QmpClient.connect(vm.files.qmp, { timeoutMs: Number(args.timeout) * 1000 });
        const st = (await qmp.execute('query-status')) as { status: string; running: boolean; singlestep?: boolean };
        qmp.close();
        const up = vm.meta?.started ? Math.round((Date.now() - Date.parse(vm.meta.started)) / 1000) : null;
        printRecords([{ name, status: st.status, running: st.running, pid: vm.pid, uptime: up }], ['status', 'pid', 'uptime'], { json: args.json });
        if (!st.running && code === EXIT.OK) code = EXIT.NO;
      } catch (e) {
        code = reportError(e);
      }
    }
    return code;
  },
});

main(cmd);
