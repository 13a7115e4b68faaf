/**
 * pim-ps: list VMs. Plumbing: one line per VM, name first, tab-separated
 * (state, pid, ssh port, uptime, image, bridged); --json for JSON lines;
 * -q for names alone. Stale runtime entries are cleaned up as they are seen.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { printRecords, type Rec } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { existingRuntimeDir } from '../lib/core/paths.ts';
import { listVms } from '../lib/vm/state.ts';

export function uptime(started: string | undefined, now = Date.now()): number | null {
  if (!started) return null;
  const t = Date.parse(started);
  return Number.isNaN(t) ? null : Math.max(0, Math.round((now - t) / 1000));
}

export function humanDuration(s: number | null): string {
  if (s === null) return '-';
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}d${h}h`;
  if (h) return `${h}h${m}m`;
  if (m) return `${m}m${sec}s`;
  return `${sec}s`;
}

export const cmd = defineCmd({
  name: 'pim-ps',
  summary: 'List VMs: name, state, pid, SSH port, uptime, image, bridged.',
  usage: '[--json] [-q] [--all]',
  description: `
One line per VM, name first, fields separated by tabs (a table with a header on a
terminal). --all also lists the images in the store that are not running, as "stopped".
Runtime entries of VMs that died are cleaned up.`,
  examples: ['pim-ps', 'pim-ps -q | fzf | pim-stop', 'pim-ps --json | jq -r .ssh_port'],
  args: {
    ...jsonArgs,
    ...quietArgs,
    all: { type: 'boolean', alias: 'a', description: 'also list stopped images from the image store' },
  },
  positionals: { max: 0 },
  async run({ args }) {
    const dir = existingRuntimeDir();
    const vms = dir ? await listVms(dir) : [];
    const now = Date.now();
    const recs: Rec[] = vms.map((v) => {
      const up = uptime(v.meta?.started, now);
      return {
        name: v.name,
        state: v.state,
        pid: v.pid,
        ssh_port: v.meta?.ssh_port ?? null,
        uptime: args.json ? up : humanDuration(up),
        image: v.meta?.image ?? null,
        bridged: v.meta?.bridged ?? false,
      };
    });
    if (args.all) {
      const { storeImages } = await import('../lib/image/store.ts');
      const running = new Set(recs.map((r) => r.name));
      for (const img of storeImages()) {
        if (!running.has(img.name)) recs.push({ name: img.name, state: 'stopped', pid: null, ssh_port: null, uptime: null, image: img.path, bridged: false });
      }
    }
    printRecords(recs, ['state', 'pid', 'ssh_port', 'uptime', 'image', 'bridged'], { json: args.json, quiet: args.quiet });
  },
});

main(cmd);
