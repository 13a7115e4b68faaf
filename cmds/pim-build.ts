/**
 * pim-build: from an installer ISO (or a cloud image) to a provisioned, cached qcow2 image. No
 * Packer, no keys typed over VNC: the installer's kernel boots directly with
 * the answer file's URL on its command line. One citty subcommand each:
 *
 *   run PROFILE... [-j N] [--force] [--keep-failed] [--timeout S] [--fetch-timeout S] [--accel A] [--no-remote] [--json]
 *                       build (or find in the cache, or in pim.yml's build.remote_cache) and print each image's path
 *   pull REF [--insecure] [--creds-env VAR] [--json]
 *                       a build that pim-deploy pushed to a registry, verified and registered
 *   key PROFILE         the cache key run would build under (nothing is built)
 *   list [--json] [-q]  the builds in the registry
 *   show BUILD [--json] a build's record: inputs, ISO, sizes, times, settings
 *   path PROFILE        the newest build's image path
 *   rm BUILD...         remove builds (refused while a VM disk is backed by one)
 *   gc [--keep N]       keep the newest N builds of each profile
 */
import { defineCommand } from 'citty';
import { VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { printJsonOrYaml } from '../lib/config/show.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

type BuildRecord = import('../lib/image/registry.ts').BuildRecord;
const registry = () => import('../lib/image/registry.ts');

const profileNames = catalogCompleter('profiles', () => import('../lib/config/defaults.ts'));
/** Build ids from the registry (JSON records, no YAML). */
const buildIds: Completer = async (complete) => {
  for (const r of (await registry()).listBuilds()) complete(r.id, `${r.profile}, ${r.created}`);
};
const profileArg = {
  type: 'positional',
  required: true,
  valueHint: 'PROFILE',
  description: 'a profile (pim-profile list)',
  complete: profileNames,
} as const;

/** A build as a record: name first (pim-build list, run --json). */
async function row(r: BuildRecord) {
  const reg = await registry();
  return {
    name: r.id,
    profile: r.profile,
    created: r.created,
    size: r.disk.virtual_size,
    bytes: r.disk.bytes,
    path: reg.buildDisk(r),
    state: 'ok',
  };
}

/** A build whose build.json is broken, as a row of pim-build list: its directory as the path. */
function damagedRow(d: import('../lib/image/registry.ts').DamagedBuild) {
  return {
    name: d.id,
    profile: d.id.replace(/-[0-9a-f]{12}$/, ''),
    created: null,
    size: null,
    bytes: null,
    path: d.dir,
    state: 'damaged',
    problem: `${d.file} ${d.problem}`,
  };
}

type RunArgs = {
  json?: boolean;
  force?: boolean;
  keepFailed?: boolean;
  remote?: boolean;
  accel?: 'kvm' | 'hvf' | 'tcg';
  timeoutS?: number;
  fetchTimeoutS: number;
};

/**
 * One profile's build: the remote cache asked first (a hit is pulled, no VM
 * boots), then runBuild, then pushed to with push: true. Returns the line
 * for stdout (the path, or the JSON record).
 */
async function buildOne(
  name: string,
  a: RunArgs,
  signal: AbortSignal,
  status: import('../lib/cli/status.ts').Status,
): Promise<string> {
  const { remoteCacheConfig } = await import('../lib/oci/cache.ts');
  const rc = a.remote === false ? null : await remoteCacheConfig();
  const talk = { signal, warn: (m: string) => status.say(`warning: ${m}`), say: (m: string) => status.say(m) };
  if (rc && !a.force) {
    const { fromRemote, openRemote, profileKey } = await import('../lib/oci/cache.ts');
    // the registry's ping goes on while the key is computed
    const c = await openRemote(rc, signal);
    try {
      status.set(`resolving profile ${name}`);
      const { profile, key } = await profileKey(name, signal);
      status.set(`asking the remote cache for ${profile}`);
      const got = await fromRemote(profile, key, rc, c, talk);
      if (got) {
        const path = (await registry()).buildDisk(got);
        status.say(`${got.id} (pulled from the remote cache): ${path}`);
        return a.json ? JSON.stringify({ ...(await row(got)), hit: true, remote: true, key: got.key }) : path;
      }
    } finally {
      await c.close();
    }
  }
  // the builder is loaded only for a build (a remote hit never needs it)
  const { runBuild } = await import('../lib/builder/build.ts');
  const out = await runBuild({ profile: name, ...a, signal, status });
  if (rc?.push && !out.hit) {
    status.set(`pushing ${out.record.id} to the remote cache`);
    await (await import('../lib/oci/cache.ts')).toRemote(out.record, rc, talk);
  }
  status.say(`${out.record.id} (${out.hit ? 'cached' : `built in ${out.record.times.total} s`}): ${out.path}`);
  return a.json ? JSON.stringify({ ...(await row(out.record)), hit: out.hit, key: out.record.key }) : out.path;
}

/** A status line whose lines name the build (several builds at once): "pim-build: [dev] ...". */
async function prefixedStatus(name: string) {
  const { StatusLine } = await import('../lib/cli/status.ts');
  const stream = {
    isTTY: false,
    write: (chunk: string) => process.stderr.write(chunk.replace(/^([^:\n]+: )/gm, `$1[${name}] `)),
  } as unknown as NodeJS.WriteStream;
  return new StatusLine(stream);
}

const run = defineCommand({
  meta: {
    name: 'run',
    description:
      "Build each PROFILE's image (or find it in the cache) and print its path, one a line in the order given.",
  },
  args: {
    profiles: { ...profileArg, variadic: true, valueHint: 'PROFILE...' },
    ...jsonArgs,
    jobs: {
      type: 'string',
      alias: 'j',
      default: '1',
      valueHint: 'N',
      description: 'builds at once; a stage two builds share is made once (the second waits for it)',
    },
    force: { type: 'boolean', description: 'build even when the cache has this build (and make its stages again)' },
    keepFailed: { type: 'boolean', description: 'keep the disk of a failed build, for debugging' },
    timeout: {
      type: 'string',
      description: "seconds for the whole build (default: the profile's timeout, else 3600)",
      valueHint: 'S',
    },
    fetchTimeout: {
      type: 'string',
      description: 'seconds for the installer to fetch its answer file',
      default: '300',
      valueHint: 'S',
    },
    accel: { type: 'enum', options: ['kvm', 'hvf', 'tcg'], description: 'accelerator; env PIM_ACCEL' },
    remote: {
      type: 'boolean',
      default: true,
      description:
        "on by default: ask pim.yml's build.remote_cache before building (and push after, with push: true); --no-remote skips it",
    },
  },
  async run({ args, data }) {
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const jobs = Number(args.jobs);
    if (!/^[1-9]\d*$/.test(args.jobs))
      throw new PimError(EXIT.USAGE, '-j takes a number of builds at once (1 or more)');
    const names = (data as Words).positionals;
    const a: RunArgs = {
      json: args.json,
      force: args.force,
      keepFailed: args.keepFailed,
      remote: args.remote,
      accel: args.accel as RunArgs['accel'],
      timeoutS: args.timeout !== undefined ? parseTimeout(args.timeout, 0) / 1000 : undefined,
      fetchTimeoutS: parseTimeout(args.fetchTimeout, 300, '--fetch-timeout') / 1000,
    };
    const { trapSignals } = await import('../lib/core/signals.ts');
    const trap = trapSignals();
    try {
      if (names.length === 1) {
        const { StatusLine } = await import('../lib/cli/status.ts');
        const status = new StatusLine();
        try {
          const line = await buildOne(names[0]!, a, trap.signal, status);
          status.end();
          writeOut(line + '\n');
          return 0;
        } finally {
          status.end();
        }
      }
      return await buildMany(names, jobs, a, trap.signal);
    } finally {
      trap.dispose();
    }
  },
});

/** A failed build's error on stderr, its profile named: "pim-build: [dev] MESSAGE"; its exit status. */
function reportFor(name: string, e: unknown, reportError: (e: unknown) => number): number {
  const write = process.stderr.write;
  const prefix = (chunk: unknown) => String(chunk).replace(/^([^:\n]+: )/gm, `$1[${name}] `);
  process.stderr.write = ((chunk: unknown, ...rest: unknown[]) =>
    (write as (...a: unknown[]) => boolean).call(process.stderr, prefix(chunk), ...rest)) as typeof write;
  try {
    return reportError(e);
  } finally {
    process.stderr.write = write;
  }
}

/**
 * Several builds, `jobs` at once: each one's failure reported as it happens
 * and the others go on; stdout gets the paths in the order given (a failed
 * build's line is left out); the exit status is the first failure's, in that order.
 */
async function buildMany(names: string[], jobs: number, a: RunArgs, signal: AbortSignal): Promise<number> {
  const { reportError } = await import('../lib/cli/command.ts');
  const results: Array<{ line?: string; code: number }> = names.map(() => ({ code: 0 }));
  // on a terminal one live line per build (lib/cli/status.ts's board); elsewhere plain lines, each prefixed with its build's name
  const { StatusBoard } = await import('../lib/cli/status.ts');
  const board = StatusBoard.board();
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < names.length; i = next++) {
      const status = board ? board.row(names[i]!) : await prefixedStatus(names[i]!);
      try {
        results[i] = { line: await buildOne(names[i]!, a, signal, status), code: 0 };
      } catch (e) {
        results[i] = { code: reportFor(names[i]!, e, reportError) };
      } finally {
        status.end();
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(jobs, names.length) }, worker));
  } finally {
    board?.end();
  }
  for (const r of results) if (r.line !== undefined) writeOut(r.line + '\n');
  return results.find((r) => r.code !== 0)?.code ?? 0;
}

const pull = defineCommand({
  meta: {
    name: 'pull',
    description:
      'Pull a build that pim-deploy pushed to a registry, verify every digest, register it as the build it is; print its path.',
  },
  args: {
    ref: {
      type: 'positional',
      required: true,
      valueHint: 'REF',
      description: 'REGISTRY[:PORT]/REPO:TAG (PROFILE or PROFILE-KEY12) or @sha256:DIGEST',
    },
    insecure: {
      type: 'boolean',
      description: 'allow plain http or an unverified certificate (a loopback or lab registry only)',
    },
    credsEnv: {
      type: 'string',
      description: 'an environment variable holding USER:PASSWORD (else ~/.docker/config.json)',
      valueHint: 'VAR',
    },
    ...jsonArgs,
  },
  async run({ args }) {
    const { parseRef } = await import('../lib/oci/ref.ts');
    const ref = parseRef(args.ref);
    if (args.credsEnv !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(args.credsEnv))
      throw new PimError(EXIT.USAGE, `--creds-env names an environment variable, not ${JSON.stringify(args.credsEnv)}`);
    const { trapSignals } = await import('../lib/core/signals.ts');
    const { log } = await import('../lib/core/log.ts');
    const trap = trapSignals();
    try {
      const { pullBuild } = await import('../lib/oci/pull.ts');
      const got = await pullBuild(ref, {
        insecure: args.insecure,
        credsEnv: args.credsEnv ?? null,
        signal: trap.signal,
        say: (m) => log.info(m),
      });
      const reg = await registry();
      const path = reg.buildDisk(got.record);
      log.info(`${got.record.id} (${got.hit ? 'already here' : `pulled, ${got.digest}`}): ${path}`);
      if (args.json)
        (await import('../lib/cli/output.ts')).printJson({
          ...(await row(got.record)),
          key: got.record.key,
          digest: got.digest,
          hit: got.hit,
        });
      else writeOut(path + '\n');
    } finally {
      trap.dispose();
    }
  },
});

const key = defineCommand({
  meta: { name: 'key', description: 'The cache key pim-build run PROFILE would build under (nothing is built).' },
  args: { profile: profileArg },
  async run({ args }) {
    const { profileKey } = await import('../lib/oci/cache.ts');
    writeOut((await profileKey(args.profile)).key + '\n');
  },
});

const list = defineCommand({
  meta: {
    name: 'list',
    description:
      'The builds in the registry: id, profile, created, size, path, state (ok, or damaged: its build.json is broken; said on stderr, and pim-build rm removes it).',
  },
  args: { ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const reg = await registry();
    const { printRecords } = await import('../lib/cli/output.ts');
    // a build whose record is broken is listed too, as damaged, and said on stderr: it still holds its image
    const damaged = reg.damagedBuilds();
    for (const d of damaged)
      process.stderr.write(
        `pim-build: build ${d.id} is damaged: ${d.file} ${d.problem}; remove it with pim-build rm ${d.id}\n`,
      );
    printRecords(
      [...(await Promise.all(reg.listBuilds().map(row))), ...damaged.map(damagedRow)],
      ['profile', 'created', 'size', 'path', 'state'],
      { json: args.json, quiet: args.quiet },
    );
  },
});

const show = defineCommand({
  meta: { name: 'show', description: "A build's record: inputs, ISO, sizes, times, settings, the disks it backs." },
  args: {
    build: {
      type: 'positional',
      required: true,
      valueHint: 'BUILD',
      description: 'a build id, a prefix of its key, or a profile (its newest build)',
      complete: buildIds,
    },
    ...jsonArgs,
  },
  async run({ args }) {
    const reg = await registry();
    const r = reg.findBuild(args.build);
    // the stage chain: each link's key, inputs, time, made or reused, and whether the install stage is still stored
    const { findStage } = await import('../lib/builder/stages.ts');
    const stages = r.stages?.map((l) => ({
      ...l,
      how: l.made ? 'made' : 'reused',
      // from: the install stage is the parent's build, in the registry
      ...(l.stage === 'install'
        ? { stored: l.inputs.from ? reg.listBuilds().some((b) => b.key === l.inputs.from) : findStage(l.key) !== null }
        : {}),
    }));
    const out = { ...r, ...(stages ? { stages } : {}), path: reg.buildDisk(r), backs: reg.disksBackedBy(r) };
    await printJsonOrYaml(out, args.json);
  },
});

const path = defineCommand({
  meta: { name: 'path', description: "The newest build's image path (66 when the profile has none)." },
  args: { profile: profileArg },
  async run({ args }) {
    const reg = await registry();
    const r = reg.latestBuild(args.profile);
    if (!r)
      throw new PimError(EXIT.NOINPUT, `profile ${args.profile} has no build yet; run pim-build run ${args.profile}`);
    writeOut(reg.buildDisk(r) + '\n');
  },
});

const rm = defineCommand({
  meta: {
    name: 'rm',
    description:
      "Remove builds (refused while a VM disk is backed by one), and each one's install stage when no other build uses it.",
  },
  args: {
    builds: {
      type: 'positional',
      required: true,
      variadic: true,
      valueHint: 'BUILD',
      description: 'build ids, key prefixes or profiles',
      complete: buildIds,
    },
  },
  async run({ data }) {
    const reg = await registry();
    const { forEachName } = await import('../lib/cli/args.ts');
    // a damaged build (its build.json broken) is named by its id
    const damaged = reg.damagedBuilds();
    const recs = (data as Words).positionals.map((b) => damaged.find((d) => d.id === b) ?? reg.findBuild(b));
    const { pruneStages, stagesNamedBy } = await import('../lib/builder/stages.ts');
    const { log } = await import('../lib/core/log.ts');
    return forEachName(
      recs.map((r) => r.id),
      async (id) => {
        const r = recs.find((x) => x.id === id)!;
        if ('problem' in r) reg.removeDamaged(r);
        else reg.removeBuild(r);
        writeOut(id + '\n');
        // its own stages go with it: those no other build names
        if (!('problem' in r))
          for (const s of pruneStages(reg.listBuilds(), stagesNamedBy([r])))
            log.info(`${id}: removed its install stage ${s} (no other build uses it)`);
      },
    );
  },
});

const gc = defineCommand({
  meta: {
    name: 'gc',
    description:
      'Keep the newest N builds of each profile; remove the others (not those that back a VM disk), then the install stages no kept build names.',
  },
  args: { keep: { type: 'string', description: 'builds to keep per profile', default: '1', valueHint: 'N' } },
  async run({ args }) {
    const keep = Number(args.keep);
    if (!/^\d+$/.test(args.keep) || !Number.isInteger(keep))
      throw new PimError(EXIT.USAGE, '--keep must be a whole number of builds (0 or more)');
    const reg = await registry();
    const { log } = await import('../lib/core/log.ts');
    const byProfile = new Map<string, BuildRecord[]>();
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
    // then the stages no build left names (a build a store disk needs is kept above, and with it its stages)
    const { pruneStages } = await import('../lib/builder/stages.ts');
    for (const s of pruneStages(reg.listBuilds())) writeOut(`${s}\n`);
  },
});

export default defineCommand({
  meta: {
    name: 'pim-build',
    version: VERSION,
    description:
      'Build a provisioned qcow2 image from a profile and its installer ISO or cloud image, cached by the content of every input.',
    details: `
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

builder: cloud-init starts from a cloud image instead (an isos.d entry with kind: image,
named by the profile's image key): a full copy grown to disk_size, booted once with a NoCloud
seed (a cidata ISO of the profile's user-data and meta-data templates and its sources.d
files) until cloud-init powers it off, then provisioned the same way; errors in cloud-init's
result.json fail the build. builder: raw makes an empty disk of disk_size.

A build is made in stages, each cached by its own key. install (the installer's run, or
cloud-init's seeded first boot) is keyed by the ISO or image checksum, the answer files as
rendered (pim's per-build key left out), the installs.d and sources.d files, the disk's
size and format, the firmware and the boot paths; it is stored read-only and private in
~/.local/share/pim/stages/. provision (the scripts, ssh_user) and finish (generalize,
compress) run on a qcow2 overlay of it, in one boot, and their product is the build, which
qemu-img convert flattens: a build stands alone (no backing file), so deploy, push and
other machines need nothing else. A changed script re-runs only provision and finish
("reusing install 3f9a1c2b (built 2 h ago), provisioning..." on stderr); a changed answer
file installs again. pim-build show prints the chain (each stage's key, inputs, time, made
or reused). from: PROFILE starts from that profile's build instead of an ISO (built first
when it is not up to date, so a changed parent rebuilds both; logged in with pim's own
key, which the parent's build lets in); a cycle is 78. run a b c -j N builds several at
once: a stage two of them share is made once (the second waits for it); stdout gets one
path a line in the order given; a failure does not stop the others, and the exit status is
the first failure's. gc removes the stages no kept build names; rm removes a build's stage
when no other build uses it.

A failure, a timeout or Ctrl-C leaves nothing behind (--keep-failed keeps the disk),
but an install stage that was complete before it is kept: a failed script's rebuild
reuses it;
every build writes a log (installer console, the server's requests, provisioning output)
in ~/.local/state/pim/build-logs/, and every error names it.

Exit codes: 65 a provisioning script failed, or cloud-init reported errors; 66 no such profile or ISO, or a boot path
missing in the ISO; 69 the installer never fetched its answer file; 73 no space for the
disk; 75 the installer (or cloud-init) did not power off in time (or a build of the same inputs runs);
78 a bad profile; 130 interrupted.

With build.remote_cache in pim.yml ({ref: REGISTRY/REPO, insecure, push, creds_env}), run
computes the key first and asks that repository for the tag PROFILE-KEY12: a hit is pulled
(every digest checked) and registered, and no VM boots; a miss builds here and, with
push: true, pushes the build after. An unreachable registry is a warning and the build goes
on; --no-remote skips the cache. pull REF takes a build pim-deploy pushed to a type: oci
target (REF:PROFILE or REF:PROFILE-KEY12) and registers it with the same id, key and record;
it exits 65 when REF is not a pim build or a digest does not match (nothing registered),
66 when the repository or tag does not exist, 69 when the registry cannot be reached,
77 when the credentials are missing or refused.`,
    examples: [
      'pim-build run dev',
      'pim-build show dev --json | jq .stages',
      'pim-build pull registry.example:5000/team/images:dev',
      'pim-run "$(pim-build run dev)"',
      'qemu-img info "$(pim-build run dev)"',
      'pim-build list',
      'pim-build show dev --json | jq .inputs',
      'pim-build gc --keep 2',
    ],
  },
  subCommands: { run, pull, key, list, show, path, rm, gc },
});
