/**
 * pim-ps: list VMs. Plumbing: one line per VM, name first, tab-separated
 * (state, pid, ssh port, uptime, image, bridged); --json for JSON lines;
 * -q for names alone; --table for the aligned table with a header that a
 * terminal gets (fzf --header-lines=1 reads it). Stale runtime entries are
 * cleaned up as they are seen.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { formatRecords, printRecords, writeOut, type Rec } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { existingRuntimeDir } from '../lib/core/paths.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
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

const FIELDS = ['state', 'pid', 'ssh_port', 'uptime', 'image', 'bridged'];

export default defineCommand({
  meta: {
    name: 'pim-ps',
    version: VERSION,
    description: 'List VMs: name, state, pid, SSH port, uptime, image, bridged.',
    details: `
One line per VM, name first, fields separated by tabs (a table with a header on a
terminal, or with --table). --all also lists the images in the store that are not
running, as "stopped". Runtime entries of VMs that died are cleaned up.`,
    examples: ['pim-ps', 'pim-ps -q | fzf | pim-stop', 'pim-ps --table | fzf -m --header-lines=1 | pim-stop', 'pim-ps --json | jq -r .ssh_port'],
  },
  args: {
    ...jsonArgs,
    ...quietArgs,
    all: { type: 'boolean', alias: 'a', description: 'also list stopped images from the image store' },
    table: { type: 'boolean', description: 'an aligned table with a header, also in a pipe (for fzf --header-lines=1)' },
  },
  async run({ args }) {
    if (args.table && (args.json || args.quiet)) throw new PimError(EXIT.USAGE, '--table shows every field; leave out --json and -q');
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
    if (args.table) writeOut(formatRecords(recs, FIELDS, { tty: true })); // the header even with no VMs
    else printRecords(recs, FIELDS, { json: args.json, quiet: args.quiet });
  },
});
