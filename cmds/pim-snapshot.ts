/**
 * pim-snapshot: internal qcow2 snapshots of a VM.
 *   pim-snapshot NAME save TAG [--force]   take one (a running VM: RAM and devices too)
 *   pim-snapshot NAME load TAG             go back to it
 *   pim-snapshot NAME list [--json] [-q]   NAME TAG ID VM-STATE DATE VM-CLOCK
 *   pim-snapshot NAME rm TAG               delete it
 * NAME is a running VM (QMP jobs: snapshot-save, -load, -delete), else an
 * image in the store or a path (qemu-img snapshot). The work is
 * lib/vm/snapshot.ts; this file parses, calls it, prints.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { printRecords, writeOut } from '../lib/cli/output.ts';

const ACTIONS = ['save', 'load', 'list', 'rm'] as const;
type Action = (typeof ACTIONS)[number];

/** Running VMs and the images in the store, loaded at TAB time only */
const targets = lazyCompleter(async () => {
  const { completeVmNames, completeImages } = await import('../lib/vm/complete.ts');
  return async (complete) => {
    await completeVmNames(complete);
    await completeImages(complete);
  };
});

const actions: Completer = (c) => {
  for (const a of ACTIONS) c(a, '');
};

/** The tags of the VM or image named before it */
const tags = lazyCompleter(async () => {
  const { snapshotTarget, listSnapshots } = await import('../lib/vm/snapshot.ts');
  return async (complete, positionals) => {
    if (!positionals?.[0]) return;
    try {
      for (const s of await listSnapshots(await snapshotTarget(positionals[0]), 3_000))
        complete(s.tag, s.vm_state ? 'with RAM' : 'disk only');
    } catch {
      /* nothing to offer */
    }
  };
});

export default defineCommand({
  meta: {
    name: 'pim-snapshot',
    version: VERSION,
    description: 'Internal qcow2 snapshots of a VM: save, load, list, rm (QMP while it runs, qemu-img when stopped).',
    usage: 'NAME save|load|rm TAG [options] | NAME list [options]',
    details: `
NAME is a running VM, else an image in the store (~/.local/share/pim/images/NAME.qcow2)
or a path to an image. A running VM's snapshot holds its RAM and devices as well as its
disk, and loading it puts the guest back where it was, running (QMP snapshot-save and
snapshot-load jobs, QEMU 6 or newer). A stopped VM's snapshot (qemu-img snapshot) holds
its disk only; such a snapshot loads only while the VM is stopped.
Refused: a raw image (65: raw has no room for snapshots; convert it to qcow2), a VM
started with --snapshot (69: its writes go to a temporary overlay), a build's own image
(77). load or rm of a tag that is not there is 66; save of a tag that is there is 73
unless --force replaces it. Output: NAME TAG ACTION SECONDS; list prints NAME TAG ID
VM-STATE (bytes, 0 for disk only) DATE VM-CLOCK (seconds), or with -q the tags alone.`,
    examples: [
      'pim-snapshot dev save clean',
      'pim-snapshot dev list',
      'pim-snapshot dev load clean',
      'pim-snapshot dev rm clean',
      'pim-snapshot ./disk.qcow2 list --json',
    ],
  },
  args: {
    name: {
      type: 'positional',
      required: true,
      valueHint: 'NAME',
      description: 'a running VM, an image in the store, or a path to an image',
      complete: targets,
    },
    action: {
      type: 'positional',
      required: true,
      valueHint: 'ACTION',
      description: 'save, load, list or rm',
      complete: actions,
    },
    tag: {
      type: 'positional',
      required: false,
      valueHint: 'TAG',
      description: 'the snapshot (letters, digits, ".", "_", "-"; not digits only)',
      complete: tags,
    },
    force: { type: 'boolean', description: 'save: replace a snapshot of the same tag' },
    ...jsonArgs,
    quiet: { type: 'boolean', alias: 'q', description: 'list: print the tags only' },
    ...timeoutArgs(300, 'for a snapshot job'),
  },
  async run({ args, data }) {
    const [target, action, tag] = (data as Words).positionals as [string, string, string | undefined];
    if (!(ACTIONS as readonly string[]).includes(action))
      throw new PimError(
        EXIT.USAGE,
        `unknown action ${JSON.stringify(action)}; use save, load, list or rm (see pim-snapshot --help)`,
      );
    const act = action as Action;
    if (act === 'list' && tag !== undefined)
      throw new PimError(EXIT.USAGE, `list takes no TAG; usage: pim-snapshot ${target} list`);
    if (act !== 'list' && tag === undefined)
      throw new PimError(EXIT.USAGE, `${act} needs a TAG; usage: pim-snapshot ${target} ${act} TAG`);
    if (args.force && act !== 'save') throw new PimError(EXIT.USAGE, '--force is for save');
    const timeoutMs = parseTimeout(args.timeout, 300);
    const snap = await import('../lib/vm/snapshot.ts');
    if (tag !== undefined) snap.checkTag(tag);
    const t = await snap.snapshotTarget(target);
    if (act === 'list') {
      const list = await snap.listSnapshots(t, timeoutMs);
      if (args.quiet && !args.json) writeOut(list.map((s) => s.tag + '\n').join(''));
      else
        printRecords(
          list.map((s) => ({ name: t.name, ...s })),
          ['tag', 'id', 'vm_state', 'date', 'vm_clock'],
          { json: args.json },
        );
      return;
    }
    const t0 = performance.now();
    await snap.snapshotAction(t, act, tag!, { force: args.force, timeoutMs });
    const seconds = Math.round((performance.now() - t0) / 100) / 10;
    const done = { save: 'saved', load: 'loaded', rm: 'removed' }[act];
    printRecords(
      [{ name: t.name, tag: tag!, action: done, seconds, how: t.kind === 'running' ? 'qmp' : 'qemu-img' }],
      ['tag', 'action', 'seconds'],
      { json: args.json },
    );
  },
});
