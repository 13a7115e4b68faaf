/**
 * pim-build: from an installer ISO to a provisioned, cached qcow2 image. No
 * Packer, no keys typed over VNC: the installer's kernel boots directly with
 * the answer file's URL on its command line.
 *
 *   run PROFILE [--force] [--keep-failed] [--timeout S] [--fetch-timeout S] [--accel A] [--json]
 *                       build (or find in the cache) and print the image's path
 *   list [--json] [-q]  the builds in the registry
 *   show BUILD [--json] a build's record: inputs, ISO, sizes, times, settings
 *   path PROFILE        the newest build's image path
 *   rm BUILD...         remove builds (refused while a VM disk is backed by one)
 *   gc [--keep N]       keep the newest N builds of each profile
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

const SUBS = ['run', 'list', 'show', 'path', 'rm', 'gc'] as const;

export const cmd = defineCmd({
  name: 'pim-build',
  summary: 'Build a provisioned qcow2 image from a profile and its installer ISO, cached by the content of every input.',
  usage: 'run PROFILE [--force] [--keep-failed] [--timeout S] | list | show BUILD | path PROFILE | rm BUILD... | gc [--keep N]',
  description: `
run resolves PROFILE (merged over "default"), its ISO (downloaded and verified when
missing), its answer files and scripts, and hashes them into a cache key. A build with
that key is a hit: its path is printed at once. Otherwise pim creates the disk, serves
the answer file on a free loopback port, boots the installer's kernel and initrd out of
the ISO with the file's URL on the kernel command line (Debian: url=, Ubuntu:
autoinstall ds=nocloud;s=), waits for the installer to power off, boots the installed
disk, runs the profile's scripts.d scripts over SSH as root (a per-build key, the host key
pinned through the guest agent), stops it gracefully and stores the image read-only in
~/.local/share/pim/builds/. stdout gets the image's path and nothing else, so
pim-run "$(pim-build run dev)" works; progress goes to stderr. pim-run PROFILE boots the
newest build through an overlay in the image store: builds never change.

A failure, a timeout or Ctrl-C leaves nothing behind (--keep-failed keeps the disk);
every build writes a log (installer console, the server's requests, provisioning output)
in ~/.local/state/pim/build-logs/, and every error names it.

Exit codes: 65 a provisioning script failed; 66 no such profile or ISO, or a boot path
missing in the ISO; 69 the installer never fetched its answer file; 73 no space for the
disk; 75 the installer did not power off in time (or a build of the same inputs runs);
78 a bad profile; 130 interrupted.`,
  examples: ['pim-build run dev', 'pim-run "$(pim-build run dev)"', 'qemu-img info "$(pim-build run dev)"', 'pim-build list', 'pim-build show dev --json | jq .inputs', 'pim-build gc --keep 2'],
  args: {
    ...jsonArgs,
    ...quietArgs,
    force: { type: 'boolean', description: 'run: build even when the cache has this build' },
    keepFailed: { type: 'boolean', description: 'run: keep the disk of a failed build, for debugging' },
    timeout: { type: 'string', description: "run: seconds for the whole build (default: the profile's timeout, else 3600)", valueHint: 'S' },
    fetchTimeout: { type: 'string', description: 'run: seconds for the installer to fetch its answer file', default: '300', valueHint: 'S' },
    accel: { type: 'enum', options: ['kvm', 'hvf', 'tcg'], description: 'run: accelerator; env PIM_ACCEL' },
    keep: { type: 'string', description: 'gc: builds to keep per profile', default: '1', valueHint: 'N' },
  },
  positionals: { min: 1 },
  completePositional: (c) => {
    for (const s of SUBS) c(s, '');
  },
  async run({ args, positionals }) {
    const [sub, ...rest] = positionals;
    const reg = await import('../lib/image/registry.ts');
    const { printRecords, printJson } = await import('../lib/cli/output.ts');
    const one = (what: string) => {
      if (rest.length !== 1) throw new PimError(EXIT.USAGE, `pim-build ${sub} takes one ${what}; see pim-build --help`);
      return rest[0]!;
    };
    const row = (r: import('../lib/image/registry.ts').BuildRecord) => ({
      name: r.id,
      profile: r.profile,
      created: r.created,
      size: r.disk.virtual_size,
      bytes: r.disk.bytes,
      path: reg.buildDisk(r),
    });
    switch (sub) {
      case 'run': {
        const profile = one('PROFILE');
        const { parseTimeout } = await import('../lib/cli/args.ts');
        const timeoutS = args.timeout !== undefined ? parseTimeout(args.timeout, 0) / 1000 : undefined;
        const fetchTimeoutS = parseTimeout(args.fetchTimeout, 300, '--fetch-timeout') / 1000;
        const { trapSignals } = await import('../lib/core/signals.ts');
        const { StatusLine } = await import('../lib/cli/status.ts');
        const { runBuild } = await import('../lib/build/build.ts');
        const trap = trapSignals();
        const status = new StatusLine();
        try {
          const out = await runBuild({ profile, force: args.force, keepFailed: args.keepFailed, timeoutS, fetchTimeoutS, accel: args.accel, signal: trap.signal, status });
          status.end();
          const how = out.hit ? 'cached' : `built in ${out.record.times.total} s`;
          process.stderr.write(`pim-build: ${out.record.id} (${how}): ${out.path}\n`);
          if (args.json) printJson({ ...row(out.record), hit: out.hit, key: out.record.key });
          else writeOut(out.path + '\n');
          return 0;
        } finally {
          status.end();
          trap.dispose();
        }
      }
      case 'list': {
        if (rest.length) throw new PimError(EXIT.USAGE, 'pim-build list takes no arguments');
        printRecords(reg.listBuilds().map(row), ['profile', 'created', 'size', 'path'], { json: args.json, quiet: args.quiet });
        return 0;
      }
      case 'show': {
        const r = reg.findBuild(one('BUILD'));
        if (args.json) printJson({ ...r, path: reg.buildDisk(r), backs: reg.disksBackedBy(r) });
        else {
          const { yamlLib } = await import('../lib/config/yaml.ts');
          writeOut((await yamlLib()).stringify({ ...r, path: reg.buildDisk(r), backs: reg.disksBackedBy(r) }));
        }
        return 0;
      }
      case 'path': {
        const profile = one('PROFILE');
        const r = reg.latestBuild(profile);
        if (!r) throw new PimError(EXIT.NOINPUT, `profile ${profile} has no build yet; run pim-build run ${profile}`);
        writeOut(reg.buildDisk(r) + '\n');
        return 0;
      }
      case 'rm': {
        if (!rest.length) throw new PimError(EXIT.USAGE, 'pim-build rm needs at least one BUILD; see pim-build list');
        const { forEachName } = await import('../lib/cli/args.ts');
        const recs = rest.map((b) => reg.findBuild(b));
        return forEachName(
          recs.map((r) => r.id),
          async (id) => {
            reg.removeBuild(recs.find((r) => r.id === id)!);
            writeOut(id + '\n');
          },
        );
      }
      case 'gc': {
        if (rest.length) throw new PimError(EXIT.USAGE, 'pim-build gc takes no arguments; use --keep N');
        const keep = Number(args.keep);
        if (!Number.isInteger(keep) || keep < 0) throw new PimError(EXIT.USAGE, '--keep must be a whole number of builds (0 or more)');
        const { log } = await import('../lib/core/log.ts');
        const byProfile = new Map<string, import('../lib/image/registry.ts').BuildRecord[]>();
        for (const r of reg.listBuilds()) byProfile.set(r.profile, [...(byProfile.get(r.profile) ?? []), r]);
        for (const list of byProfile.values()) {
          for (const r of list.slice(0, Math.max(0, list.length - keep))) {
            const users = reg.disksBackedBy(r);
            if (users.length) {
              log.info(`${r.id}: kept, it backs ${users.join(', ')}`);
              continue;
            }
            reg.removeBuild(r);
            writeOut(r.id + '\n');
          }
        }
        return 0;
      }
      default:
        throw new PimError(EXIT.USAGE, `unknown subcommand "${sub}"; use ${SUBS.join(', ')}`);
    }
  },
});

main(cmd);
