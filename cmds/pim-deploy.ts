/**
 * pim-deploy: hand a pim-build build to the engines fleets run on.
 *   pim-deploy BUILD|PROFILE TARGET [--name N] [--dry-run] [--keep N] [--health-timeout S] [--json]
 *   pim-deploy list TARGET [--json] [-q]     what pim deployed there (from the domains' metadata)
 *   pim-deploy targets [--json] [-q]         the targets of targets.d
 * TARGET is an entry of ~/.config/pim/targets.d/*.yml: libvirt (local or
 * qemu+ssh://), proxmox (the API, a token from an environment variable) or
 * ssh (a host with pim), or oci (a registry). The work is lib/deploy/; this file parses, calls it,
 * prints.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { jsonArgs, parseTimeout } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { listBuilds } from '../lib/image/registry.ts';
import { printRecords } from '../lib/cli/output.ts';
import { entryNames, resolveEntry } from '../lib/config/catalog.ts';
import { listDeployed, deploy } from '../lib/deploy/deploy.ts';
import { trapSignals } from '../lib/core/signals.ts';

/** Builds and profiles for the first word, targets for the second (loaded at TAB time only). */
const builds = lazyCompleter(async () => {
  return (complete) => {
    complete('list', 'what pim deployed on a target');
    complete('targets', 'the targets of targets.d');
    for (const b of listBuilds()) complete(b.id, `build of ${b.profile}`);
    for (const p of new Set(listBuilds().map((b) => b.profile))) complete(p, 'newest build of the profile');
  };
});
const targets = lazyCompleter(async () => {
  const { targetNames } = await import('../lib/deploy/targets.ts');
  return async (complete) => {
    try {
      for (const n of await targetNames()) complete(n, 'deploy target');
    } catch {
      /* a broken targets.d offers nothing */
    }
  };
});

export default defineCommand({
  meta: {
    name: 'pim-deploy',
    version: VERSION,
    description:
      'Deploy a build into libvirt (local or qemu+ssh://), Proxmox VE or an SSH host, or push it to an OCI registry; list what pim deployed there.',
    usage: 'BUILD|PROFILE TARGET [options] | list TARGET [options] | targets [options]',
    details: `
BUILD is a build of pim-build list (its id, a key prefix, or a profile: its newest
build); TARGET an entry of ~/.config/pim/targets.d/*.yml (type libvirt, proxmox or ssh;
see targets.d/default.yml for the keys). The domain is named after the profile
(--name N) and made from the build's recorded settings (memory, CPUs, machine,
firmware, disk bus, network) with the target's overrides. The image goes up as the
volume NAME-<sha12>.qcow2 unless that volume is there and its sha256 checks out on the
far side; a re-deploy of the same build changes nothing. Another build is an upgrade:
the old definition is saved, the domain shut down, the new one defined (same UUID)
and started, and its health check (health: agent, tcp:PORT or serial:TEXT) must pass
within --health-timeout, or the old definition is restored and started (exit 79).
Volumes of NAME beyond --keep (the current one counts) are deleted unless in use.
--dry-run prints the plan (NAME STEP ACTION DETAIL) and changes nothing.
Output: NAME TARGET BUILD VOLUME UPLOAD DOMAIN SECONDS. list prints NAME BUILD PROFILE
VOLUME STATE. Exit: 64 a --name Proxmox refuses (not a DNS name), 65 sha256 mismatch
after the upload (or a Proxmox description over 8192 characters), 66 no such build or
target, 69 target unreachable (or a Proxmox certificate that does not match fingerprint:,
or PVE before 8.4 without ssh:), 75 another deploy of NAME runs (or the Proxmox VM's
config changed since it was read), 77 the Proxmox token is unset, refused or lacks a
privilege, 78 bad targets.d (or an import_storage without content import), 79 health
check failed and rolled back.

A target of type: oci (ref: REGISTRY/REPO, creds_env, insecure) is a registry: the build is
pushed as a KubeVirt containerDisk (one uncompressed layer holding disk/PROFILE.qcow2, owned
107:107), pim's build record in the manifest's annotations, tagged PROFILE-KEY12 and PROFILE
(moved to the newest build). A layer the registry has is not sent again; a large one goes up
in chunks, and the registry's digest must be pim's. Ctrl-C stops after the chunk in flight and
the next push resumes there. pim-build pull REF:TAG takes it back.
list prints the PROFILE-KEY12 tags. Credentials come from creds_env (USER:PASSWORD) or
~/.docker/config.json (auths, credsStore, credHelpers); 77 when missing or refused.`,
    examples: [
      'pim-deploy dev lab',
      'pim-deploy dev registry',
      'pim-deploy dev lab --dry-run',
      'pim-deploy dev lab --name web --keep 3',
      'pim-deploy list lab',
      'pim-deploy targets',
    ],
  },
  args: {
    build: {
      type: 'positional',
      required: true,
      valueHint: 'BUILD',
      description: 'a build id, a key prefix or a profile; or list, or targets',
      complete: builds,
    },
    target: {
      type: 'positional',
      required: false,
      valueHint: 'TARGET',
      description: 'a target of targets.d',
      complete: targets,
    },
    name: { type: 'string', description: 'the domain (VM) name on the target (default: the profile)', valueHint: 'N' },
    dryRun: { type: 'boolean', description: 'print the plan, change nothing' },
    keep: {
      type: 'string',
      description: 'volumes of the name to keep, the current one included',
      valueHint: 'N',
      default: '2',
    },
    healthTimeout: {
      type: 'string',
      description:
        "seconds the new guest has to pass its health check (default: the target's health_timeout, else 120)",
      valueHint: 'S',
    },
    ...jsonArgs,
    quiet: { type: 'boolean', alias: 'q', description: 'list, targets: print the names only' },
  },
  async run({ args, data }) {
    const [first, second] = (data as Words).positionals as [string, string | undefined];
    const out = { json: args.json, quiet: args.quiet };
    if (first === 'targets') {
      if (second !== undefined) throw new PimError(EXIT.USAGE, 'targets takes no TARGET; usage: pim-deploy targets');
      const { loadTargetCatalog, target } = await import('../lib/deploy/targets.ts');
      const cat = await loadTargetCatalog();
      const recs = entryNames(cat).map((n) => {
        const t = target(resolveEntry(cat, n));
        const where =
          t.type === 'libvirt'
            ? t.uri
            : t.type === 'proxmox'
              ? t.api
              : t.type === 'oci'
                ? `${t.ref.registry}/${t.ref.repo}`
                : t.host;
        return { name: n, type: t.type, where };
      });
      printRecords(recs, ['type', 'where'], out);
      return;
    }
    if (second === undefined)
      throw new PimError(
        EXIT.USAGE,
        `missing TARGET; usage: pim-deploy ${first === 'list' ? 'list TARGET' : 'BUILD|PROFILE TARGET'} (pim-deploy targets lists them)`,
      );
    const { loadTarget } = await import('../lib/deploy/targets.ts');
    if (first === 'list') {
      const t = await loadTarget(second);
      printRecords(await listDeployed(t), ['build', 'profile', 'volume', 'state'], out);
      return;
    }
    if (args.quiet) throw new PimError(EXIT.USAGE, '-q is for list and targets');
    const keep = Number(args.keep);
    if (!Number.isInteger(keep) || keep < 1)
      throw new PimError(
        EXIT.USAGE,
        `--keep must be a whole number of at least 1 (the volume in use), not ${JSON.stringify(args.keep)}`,
      );
    const healthTimeoutS =
      args.healthTimeout === undefined ? undefined : parseTimeout(args.healthTimeout, 0, '--health-timeout') / 1000;
    const t = await loadTarget(second);
    const trap = trapSignals();
    try {
      const t0 = performance.now();
      const r = await deploy(first, t, {
        name: args.name,
        dryRun: args.dryRun,
        keep,
        healthTimeoutS,
        signal: trap.signal,
      });
      if (args.dryRun) {
        printRecords(
          r.outcome.plan.map((s) => ({ name: r.name, step: s.step, action: s.action, detail: s.detail })),
          ['step', 'action', 'detail'],
          { json: args.json, plain: true },
        );
        return;
      }
      const seconds = Math.round((performance.now() - t0) / 100) / 10;
      printRecords(
        [
          {
            name: r.name,
            target: t.name,
            build: r.build,
            volume: r.volume,
            upload: r.outcome.upload,
            domain: r.outcome.domain,
            seconds,
            removed: r.outcome.removed,
          },
        ],
        ['target', 'build', 'volume', 'upload', 'domain', 'seconds'],
        { json: args.json, plain: true },
      );
    } catch (e) {
      if (trap.caught && !(e instanceof PimError)) throw trap.signal.reason;
      throw e;
    } finally {
      trap.dispose();
    }
  },
});
