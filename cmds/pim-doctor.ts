/**
 * pim-doctor (`pim doctor`): check the host for what pim needs and uses, one
 * line per check: CHECK ok|warn|fail DETAIL, the detail saying what to do.
 * Exit 0 when nothing fails, 1 when something does. It only looks, never
 * prompts, and bounds every wait. The checks are lib/vm/doctor.ts.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { EXIT } from '../lib/core/exit.ts';
import { printRecords } from '../lib/cli/output.ts';

export default defineCommand({
  meta: {
    name: 'pim-doctor',
    version: VERSION,
    description: 'Check the host: KVM (a real test run), QEMU, the runtime dir, bridging, sudo, Node, firmware, tools.',
    details: `
One line per check, NAME STATUS DETAIL (tab-separated; a table on a terminal; --json for
JSON lines). STATUS is ok, warn (something optional is missing: only some commands need
it) or fail (something pim relies on is missing or broken); DETAIL says what to do.
Checks: node (22 or newer), qemu and qemu-img (found, version), kvm (/dev/kvm opens, and
QEMU runs a small test guest with -accel kvm -cpu host to its end: a KVM that opens but
fails at run time is a fail, a warn when PIM_ACCEL=tcg is set; hvf on macOS),
runtime-dir (exists or can be made, yours, not writable by others, room for socket
paths), bridge.conf (which bridges qemu-bridge-helper allows, and whether they exist),
bridge-helper (setuid root or not), sudo (whether sudo -n may run QEMU, chown and kill
for a bridged VM), virtiofsd, ovmf and iso-tools (xorriso or bsdtar, for pim-build).
Nothing is changed, sudo never prompts, every child has a time limit (--timeout). Exit 0
when no check fails, 1 when one does.`,
    examples: ['pim doctor', 'pim-doctor --json | jq -r \'select(.status != "ok") | .name + ": " + .detail\''],
  },
  args: {
    ...jsonArgs,
    ...timeoutArgs(10, 'for each test (the KVM test run, each program asked for its version)'),
  },
  async run({ args }) {
    const { runChecks } = await import('../lib/vm/doctor.ts');
    const checks = await runChecks(parseTimeout(args.timeout, 10));
    printRecords(checks, ['status', 'detail'], { json: args.json });
    return checks.some((c) => c.status === 'fail') ? EXIT.NO : EXIT.OK;
  },
});
