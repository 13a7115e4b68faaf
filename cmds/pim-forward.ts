/**
 * pim-forward: port forwards of a running VM on user-mode networking, added
 * and removed through QMP (HMP's hostfwd_add/hostfwd_remove: QEMU 7.2 has no
 * QMP command of its own) and recorded in the VM's metadata, where pim-ps
 * reads them. The work is lib/vm/forward.ts.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { printRecords } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

const ACTIONS = ['add', 'rm', 'list'] as const;

const actionNames: Completer = (c) => {
  c('add', 'add forwards: SPEC...');
  c('rm', 'remove forwards: SPEC... or HOST...');
  c('list', 'list the forwards');
};

export default defineCommand({
  meta: {
    name: 'pim-forward',
    version: VERSION,
    description: "Add, remove or list a running VM's port forwards (user networking).",
    usage: 'NAME add|rm|list [SPEC...] [options]',
    details: `
SPEC is [tcp:|udp:][BIND:]HOST:GUEST: HOST on the host (BIND, default 127.0.0.1; 0.0.0.0
for every address) reaches port GUEST in the guest; tcp unless udp: is given. rm takes a
SPEC, or only its host side [tcp:|udp:][BIND:]HOST. A host port that another program holds
is exit 75. The forwards are recorded in the VM's metadata (pim-ps shows them) and last
until it stops; pim-run --forward sets them at start. list prints NAME PROTO BIND HOST GUEST,
the SSH forward included (it is pim's own: rm leaves it). A bridged VM has no forwards: it
has its own address (pim-ip).`,
    examples: [
      'pim-forward dev add 8080:80',
      'pim-forward dev add udp:5353:53 127.0.0.1:2222:22',
      'pim-forward dev list',
      'pim-forward dev rm 8080',
    ],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    action: {
      type: 'positional',
      required: true,
      valueHint: 'add|rm|list',
      description: 'what to do',
      complete: actionNames,
    },
    specs: {
      type: 'positional',
      required: false,
      variadic: true,
      valueHint: 'SPEC',
      description: '[tcp:|udp:][BIND:]HOST:GUEST',
    },
    ...timeoutArgs(10, 'for QMP'),
    ...jsonArgs,
  },
  async run({ args, data }) {
    const [name, action, ...specs] = (data as Words).positionals as [string, string, ...string[]];
    if (!(ACTIONS as readonly string[]).includes(action))
      throw new PimError(EXIT.USAGE, `the action must be add, rm or list, not ${JSON.stringify(action)}`);
    if (action === 'list' && specs.length)
      throw new PimError(EXIT.USAGE, `list takes no SPEC; usage: pim-forward NAME list`);
    if (action !== 'list' && !specs.length)
      throw new PimError(
        EXIT.USAGE,
        `${action} needs a SPEC such as 8080:80; usage: pim-forward NAME ${action} SPEC...`,
      );
    const fw = await import('../lib/vm/forward.ts');
    const ms = parseTimeout(args.timeout, 10);
    // every SPEC is checked before anything changes
    const adds = action === 'add' ? specs.map((s) => fw.parseForward(s, 'add')) : [];
    const rms = action === 'rm' ? specs.map((s) => fw.parseForwardRef(s)) : [];
    const vm = await runningVm(name);
    let list: import('../lib/vm/forward.ts').PortForward[];
    if (action === 'add') list = await fw.addForwards(vm, adds, ms);
    else if (action === 'rm') list = await fw.removeForwards(vm, rms, ms);
    else {
      fw.requireUserNet(vm);
      list = vm.meta!.forwards ?? [];
    }
    if (action !== 'list') {
      const { log } = await import('../lib/core/log.ts');
      if (action === 'add')
        for (const f of adds)
          log.info(`${vm.name}: ${f.proto} ${f.bind}:${f.host} now reaches the guest's port ${f.guest}`);
      else log.info(`${vm.name}: ${list.length} forward${list.length === 1 ? '' : 's'} left besides SSH`);
      return 0;
    }
    const ssh = vm.meta!.ssh_port
      ? [{ proto: 'tcp', bind: fw.DEFAULT_BIND, host: vm.meta!.ssh_port, guest: 22, ssh: true }]
      : [];
    printRecords(
      [...ssh, ...list.map((f) => ({ ...f, ssh: false }))].map((f) => ({ name: vm.name, ...f })),
      ['proto', 'bind', 'host', 'guest'],
      { json: args.json },
    );
    return 0;
  },
});
