/**
 * builder: cloud-init: from a cloud image in the catalog (an isos.d entry with
 * kind: image, downloaded and verified like an ISO) to a provisioned image,
 * in ONE boot of the build's VM:
 *
 *   - the disk is a full copy of the base image (no backing file: the build
 *     stays whole when the download is removed): the file itself where the
 *     formats match (as Packer's disk_image does), else qemu-img convert;
 *     grown to disk_size;
 *   - the NoCloud seed is an ISO 9660 volume labelled cidata (xorriso) with
 *     the profile's user-data and meta-data templates, rendered with pim's
 *     per-build key, and the profile's sources (sources.d), attached as a
 *     read-only virtio disk (cloud kernels have no AHCI for a CD) to the
 *     provisioning boot (cloudInitDisk returns it);
 *   - once SSH lets pim's key in, pim waits (bounded by the build's deadline)
 *     for cloud-init's last stage: for /run/cloud-init/result.json to appear
 *     (written at the end of the run, and removed by cloud-init at the start
 *     of every boot, so there is no second boot to lose it), or for `cloud-init
 *     status --wait --long --format json` to return, whichever is first; then
 *     it judges cloud-init's own account of that seeded run: result.json,
 *     status.json and the long status when it came. Errors fail the build (65)
 *     with cloud-init's words; a run that did not read pim's seed (NoCloud)
 *     too. Then build.ts provisions and generalizes, as after an installer.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { checkAborted } from '../core/signals.ts';
import { run } from '../core/run.ts';
import { convertDisk, growDisk, imgInfo } from '../image/qemu-img.ts';
import { renderAnswer } from '../install/serve.ts';
import type { BootEnv } from './boot.ts';
import { STAGE_FILES } from './stages.ts';
import { KEY_URL } from './plan.ts';

/**
 * The build's vendor-data (on the seed of a generalized build only): what the
 * build boot needs and no more, where a deployed VM's first boot does the rest.
 * One SSH host key, ed25519: the build's host keys are removed when it is
 * generalized, and cloud-init makes the image's full set (its
 * ssh_genkeytypes) on each clone's first boot. RSA-3072 key generation under
 * TCG took 3-20 s of the build boot, the most variable part of it. Vendor-data
 * is below user-data in cloud-init's merge: a profile's cloud_config that sets
 * ssh_genkeytypes wins.
 */
export const BUILD_VENDOR_DATA = `#cloud-config
# pim-build's vendor-data for the build boot (the build is generalized: its host keys are removed)
ssh_genkeytypes: [ed25519]
`;

/** Where cloud-init writes the outcome of its run (its datasource and every error); /var/lib/cloud/data/result.json links here. */
export const RESULT_JSON = '/run/cloud-init/result.json';
/** Each stage's account of the run (errors per stage). */
export const STATUS_JSON = '/run/cloud-init/status.json';

/** cloud-init's disk: copy and grow the base image, make the seed; the seed's path, for the provisioning boot. */
export async function cloudInitDisk(
  env: BootEnv,
): Promise<{ drives: Array<{ path: string; format: 'raw'; readonly: true }> }> {
  const { o, plan, c, disk, log } = env;
  const st = o.status;
  st.set(`copying ${plan.iso} for ${plan.name}`);
  const base = await imgInfo(c.iso.path);
  if (base.format !== 'qcow2' && base.format !== 'raw') {
    throw new PimError(
      EXIT.DATAERR,
      `${plan.iso} (${c.iso.path}) is a ${base.format} image; builder: cloud-init takes qcow2 or raw cloud images`,
    );
  }
  if (base['backing-filename']) {
    // a downloaded image that points at another file would read that file into the build
    throw new PimError(
      EXIT.DATAERR,
      `${plan.iso} (${c.iso.path}) has a backing file (${base['backing-filename']}); a cloud image must stand alone`,
    );
  }
  const want = sizeBytes(plan.disk.size);
  if (want < base['virtual-size']) {
    const where = plan.profile.origins.disk_size ?? `profile "${plan.name}"`;
    throw new PimError(
      EXIT.CONFIG,
      `${where}: disk_size ${plan.disk.size} is smaller than ${plan.iso}'s ${base['virtual-size']} bytes; a cloud image is only grown`,
    );
  }
  // the same format: the file itself, as it is (compressed clusters stay compressed: a
  // copy of 160 MiB, not a 480 MiB inflation; the store's qemu-img convert rewrites it
  // anyway); another format: qemu-img convert
  const same = base.format === plan.disk.format;
  if (same) await copyFile(c.iso.path, disk);
  else await convertDisk(c.iso.path, base.format, disk, plan.disk.format, o.signal);
  checkAborted(o.signal);
  if (want > base['virtual-size']) await growDisk(disk, plan.disk.format, plan.disk.size);
  log.line(
    `disk: ${plan.iso} (${base.format}, ${base['virtual-size']} bytes) ${same ? 'copied' : `converted to ${plan.disk.format}`}, ${want > base['virtual-size'] ? `grown to ${plan.disk.size}` : 'its own size'}`,
  );
  const seed = await makeSeed(env);
  return { drives: [{ path: seed, format: 'raw', readonly: true }] };
}

/** A private copy of `src` at `dst` (a new file, 0600; the kernel's copy_file_range where it can). */
async function copyFile(src: string, dst: string): Promise<void> {
  const fsp = await import('node:fs/promises');
  try {
    await fsp.copyFile(src, dst, fs.constants.COPYFILE_EXCL);
    await fsp.chmod(dst, 0o600);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOSPC' || err.code === 'EDQUOT')
      throw new PimError(EXIT.CANTCREAT, `cannot copy ${src} to ${dst}: no space left; free some space and try again`);
    throw new PimError(EXIT.SOFTWARE, `cannot copy ${src} to ${dst}: ${err.message}`);
  }
}

/** The NoCloud seed: user-data, meta-data and the sources, on an ISO 9660 volume labelled cidata. */
async function makeSeed(env: BootEnv): Promise<string> {
  const { plan, tmp, log, served } = env;
  const dir = join(tmp, 'seed');
  fs.mkdirSync(dir, { mode: 0o700 });
  for (const route of ['/user-data', '/meta-data'] as const) {
    const r = renderAnswer(route, served, KEY_URL);
    if (!r)
      throw new PimError(
        EXIT.CONFIG,
        `profile "${plan.name}" has no ${route.slice(1)} template in preseeds.d; add one`,
      );
    fs.writeFileSync(join(dir, route.slice(1)), r.body, { mode: 0o600, flag: 'wx' });
    log.line(`seed: ${route.slice(1)} from ${r.label}`);
  }
  if (plan.generalize) {
    fs.writeFileSync(join(dir, 'vendor-data'), BUILD_VENDOR_DATA, { mode: 0o600, flag: 'wx' });
    log.line('seed: vendor-data: one SSH host key (ed25519) for the build boot; the clones make their own');
  }
  for (const f of plan.sources) {
    fs.writeFileSync(join(dir, f.name), f.content, { mode: 0o600, flag: 'wx' });
    log.line(`seed: ${f.name} from ${f.label}`);
  }
  const iso = join(tmp, STAGE_FILES.seed);
  const args = ['-as', 'mkisofs', '-quiet', '-output', iso, '-volid', 'cidata', '-joliet', '-rock', dir];
  const r = await run('xorriso', args, { hint: 'install xorriso (Debian: xorriso; Homebrew: xorriso)' });
  if (r.code !== 0) {
    log.section('xorriso', r.stderr);
    // xorriso ends with "ABORT : Program done": its reason is the FAILURE/SORRY line before
    const lines = r.stderr.split('\n').filter((l) => l.trim() && !/ABORT : Program done/.test(l));
    const why = lines.filter((l) => /FAILURE|SORRY|FATAL/.test(l)).pop() ?? lines.pop() ?? `exit status ${r.code}`;
    throw new PimError(EXIT.SOFTWARE, `cannot make the cidata seed with xorriso: ${why.trim()}`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return iso;
}

/** qemu-img's size syntax (8G, 512M, 20000000000) in bytes. */
export function sizeBytes(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)$/i.exec(s);
  if (!m) return NaN;
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[
    m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'
  ];
  return Math.round(Number(m[1]) * mult);
}

type Out = { code: number; stdout: string; stderr?: string };

/**
 * Judge cloud-init's account of the seeded run: result.json and status.json and,
 * when the wait ended first (null when result.json did), the exit of `cloud-init
 * status --wait` and its `--long --format json` report (cloud-init 22.3 and later;
 * an older one's plain output is kept as text). Errors are cloud-init's own words
 * (65), each stage's from status.json; so are its recoverable errors (23.4 and
 * later: status "degraded", exit 2), from status.json where there is no report;
 * no result.json means the run never finished (65); a run whose datasource is not
 * NoCloud did not read pim's seed (65).
 */
export function judgeCloudInit(r: { wait: Out | null; result: Out; status: Out }): {
  datasource: string;
  detail: string;
} {
  const errors: string[] = [];
  const add = (e: unknown) => {
    const t = typeof e === 'string' ? e : JSON.stringify(e);
    if (t && !errors.includes(t)) errors.push(t);
  };
  type Long = {
    status?: string;
    extended_status?: string;
    errors?: unknown[];
    recoverable_errors?: Record<string, unknown[]>;
    detail?: string;
    datasource?: string;
  };
  let long: Long | null = null;
  try {
    if (r.wait) long = JSON.parse(r.wait.stdout) as Long;
  } catch {
    /* an older cloud-init: plain text */
  }
  type Stage = { errors?: unknown[]; recoverable_errors?: Record<string, unknown[]> } | null;
  let stages: Record<string, Stage> = {};
  if (r.status.code === 0) {
    try {
      stages = ((JSON.parse(r.status.stdout) as { v1?: typeof stages }).v1 ?? {}) as typeof stages;
    } catch {
      /* judged by result.json */
    }
  }
  const str = (e: unknown) => (typeof e === 'string' ? e : JSON.stringify(e));
  for (const [stage, v] of Object.entries(stages)) {
    if (v && typeof v === 'object' && Array.isArray(v.errors))
      for (const e of v.errors) add(`${stage}: ${str(e)}`.replace(/^([\w-]+): \1: /, '$1: '));
  }
  // cloud-init's status names an error without its stage; status.json (above) with it
  const addUnstaged = (e: unknown) => {
    const t = str(e);
    if (!errors.some((x) => x === t || x.endsWith(`: ${t}`))) add(t);
  };
  for (const e of long?.errors ?? []) addUnstaged(e);
  type V1 = { datasource?: string | null; errors?: unknown[] };
  let v1: V1 | null = null;
  if (r.result.code === 0) {
    try {
      v1 = (JSON.parse(r.result.stdout) as { v1: V1 }).v1;
    } catch {
      throw new PimError(EXIT.DATAERR, `cloud-init left a ${RESULT_JSON} that is not JSON`);
    }
  }
  for (const e of v1?.errors ?? []) addUnstaged(e);
  if (errors.length)
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init reported ${errors.length} error${errors.length > 1 ? 's' : ''}: ${errors.join('; ')}`,
    );
  // recoverable errors (23.4 and later: {LEVEL: [message]}): each stage's from
  // status.json, then the report's (which has no stage) where not said already
  const recoverable: string[] = [];
  const addRecoverable = (stage: string | null, byLevel: unknown) => {
    if (!byLevel || typeof byLevel !== 'object') return;
    for (const [level, list] of Object.entries(byLevel as Record<string, unknown>))
      for (const m of Array.isArray(list) ? list : [list]) {
        const t = `${level}: ${str(m)}`;
        if (!recoverable.some((x) => x === t || x.endsWith(`: ${t}`))) recoverable.push(stage ? `${stage}: ${t}` : t);
      }
  };
  for (const [stage, v] of Object.entries(stages))
    if (v && typeof v === 'object') addRecoverable(stage, v.recoverable_errors);
  addRecoverable(null, long?.recoverable_errors);
  if (recoverable.length)
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init reported ${recoverable.length} recoverable error${recoverable.length > 1 ? 's' : ''} (status: degraded): ${recoverable.join('; ')}`,
    );
  const text = (o: Out) => `${o.stdout}${o.stderr ?? ''}`.trim().split('\n').filter(Boolean).slice(-3).join(' / ');
  if (r.wait?.code === 127)
    throw new PimError(
      EXIT.DATAERR,
      'the image has no cloud-init command; builder: cloud-init needs an image that runs cloud-init (with the NoCloud datasource)',
    );
  if (r.wait && (r.wait.code !== 0 || long?.status === 'error'))
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init ended in error (cloud-init status: ${long ? `${long.extended_status ?? long.status}${long.detail ? `, ${long.detail}` : ''}` : text(r.wait) || `status ${r.wait.code}`})`,
    );
  if (!v1)
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init did not finish: the guest has no ${RESULT_JSON}; check that the image runs cloud-init with the NoCloud datasource`,
    );
  const datasource = String(v1.datasource ?? long?.detail ?? 'unknown');
  if (!/nocloud/i.test(datasource))
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init did not read pim's seed (its datasource: ${datasource}); the image's datasource_list must include NoCloud`,
    );
  return { datasource, detail: long?.detail ?? datasource };
}

/**
 * One start of cloud-init's Python (8-27 s each under TCG): wait for this boot's run
 * and print its long status as JSON (22.4 and later; --wait prints no dots then), or
 * as text where --format is unknown (argparse refuses it, nothing on stdout). 127: no
 * cloud-init in the image.
 */
export const WAIT_SCRIPT = `command -v cloud-init >/dev/null 2>&1 || exit 127
out=$(cloud-init status --wait --long --format json 2>/dev/null)
rc=$?
case $out in '{'*) printf '%s\\n' "$out"; exit $rc ;; esac
cloud-init status --wait --long 2>&1
`;

/** Marks the parts of ACCOUNT_SCRIPT's output: `MARK NAME STATUS` on a line of its own. */
const MARK = '@@pim-cloud-init-account@@';

/**
 * The wait and cloud-init's whole account in ONE exec (each exec is a sudo and a
 * shell in the guest, about a second each under TCG), ended by whichever comes
 * first:
 *   - result.json appears in `run` (/run/cloud-init, a tmpfs): cloud-init writes
 *     it atomically, after status.json's last write, at the end of modules-final
 *     (status_wrapper in cloudinit/cmd/main.py, 22.4 to 25.x), and its init-local
 *     removes it at the start of every boot, before sshd starts; `cloud-init
 *     status` itself takes it for "done" (is_running: status.json without
 *     result.json). A shell loop sees it within 0.1 s; `status --wait` polls every
 *     0.25 s and then builds its --long report, 1-3 s of Python under TCG;
 *   - the wait (WAIT_SCRIPT's two forms, in the background, its output in a
 *     private temporary directory) returns: cloud-init disabled, a run that never
 *     writes result.json (a stage's unit failed), an old cloud-init whose files
 *     live elsewhere.
 * The other is stopped (the wait's subshell, then its cloud-init). Output:
 * `MARK end result|wait`, then on the wait's end `MARK wait STATUS` and its
 * output, then result.json and status.json, each after a MARK line with its
 * cat's status. 127 and nothing else: no cloud-init command.
 */
export function accountScript(run = '/run/cloud-init', data = '/var/lib/cloud/data'): string {
  return `command -v cloud-init >/dev/null 2>&1 || exit 127
t=$(mktemp -d) || exit 70
(
  cloud-init status --wait --long --format json >"$t/out" 2>/dev/null </dev/null &
  echo $! >"$t/pid"
  wait $!
  rc=$?
  case $(cat "$t/out") in '{'*) ;; *)
    cloud-init status --wait --long >"$t/out" 2>&1 </dev/null &
    echo $! >"$t/pid"
    wait $!
    rc=$? ;;
  esac
  echo $rc >"$t/rc.new" && mv "$t/rc.new" "$t/rc"
) >/dev/null 2>&1 </dev/null &
w=$!
while :; do
  if [ -e "$t/rc" ]; then end=wait; break; fi
  if [ -e ${run}/result.json ]; then
    end=result
    kill $w 2>/dev/null
    kill $(cat "$t/pid" 2>/dev/null) 2>/dev/null
    break
  fi
  sleep 0.1
done
printf '${MARK} end %s\\n' $end
[ $end = wait ] && printf '\\n${MARK} wait %s\\n%s' "$(cat "$t/rc")" "$(cat "$t/out")"
rm -rf "$t"
for f in result status; do
  t=$(cat ${run}/$f.json 2>/dev/null || cat ${data}/$f.json 2>/dev/null)
  printf '\\n${MARK} %s %s\\n%s' "$f" "$?" "$t"
done
exit 0
`;
}

/** The account script for a real guest. */
export const ACCOUNT_SCRIPT = accountScript();

/**
 * ACCOUNT_SCRIPT's output split back into what ended the wait, the wait's output
 * (null when result.json ended it first) and the two files (status 1: not there).
 * Without marks (127: no cloud-init) the whole output is the wait's.
 */
export function splitAccount(r: Out): { end: 'result' | 'wait'; wait: Out | null; result: Out; status: Out } {
  const parts = r.stdout.split(new RegExp(`(?:^|\\n)${MARK} (end|wait|result|status) (\\w+)\\n`));
  // parts: text, then (name, status, text) for each mark
  const at = (name: string) => {
    for (let i = 1; i < parts.length; i += 3) if (parts[i] === name) return i;
    return -1;
  };
  const part = (name: string): Out | null => {
    const i = at(name);
    return i > 0 ? { code: Number(parts[i + 1]), stdout: parts[i + 2] ?? '' } : null;
  };
  const i = at('end');
  if (i < 0)
    return {
      end: 'wait',
      wait: { code: r.code, stdout: r.stdout, stderr: r.stderr },
      result: { code: 1, stdout: '' },
      status: { code: 1, stdout: '' },
    };
  const end = parts[i + 1] === 'result' ? 'result' : 'wait';
  const wait = part('wait');
  return {
    end,
    wait: wait ? { ...wait, stderr: r.stderr } : null,
    result: part('result') ?? { code: 1, stdout: '' },
    status: part('status') ?? { code: 1, stdout: '' },
  };
}

/**
 * Over the provisioning connection: wait for cloud-init to finish the seeded
 * run (`cloud-init status --wait`, bounded by `deadline`: 75; abortable),
 * then judge its own account of that run (judgeCloudInit), read in the same
 * exec (ACCOUNT_SCRIPT). `sh(script)` runs a script as root in the guest.
 */
export async function waitCloudInit(
  sh: (script: string) => Promise<Out>,
  o: { deadline: number; timeoutS: number; signal: AbortSignal; log: (line: string) => void },
): Promise<{ datasource: string; detail: string }> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: () => void = () => {};
  const bound = new Promise<'timeout' | 'abort'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), Math.max(0, o.deadline - Date.now()));
    onAbort = () => resolve('abort');
    o.signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    const out = await Promise.race([sh(ACCOUNT_SCRIPT), bound]);
    if (out === 'abort') {
      checkAborted(o.signal);
      throw new PimError(EXIT.SOFTWARE, 'aborted');
    }
    if (out === 'timeout')
      throw new PimError(
        EXIT.TEMPFAIL,
        `cloud-init did not finish within the build's ${o.timeoutS} s (timeout in the profile, or --timeout)`,
      );
    const { end, wait, result, status } = splitAccount(out);
    o.log(
      end === 'result'
        ? `cloud-init's run ended: ${RESULT_JSON} appeared (cloud-init status --wait stopped)`
        : `cloud-init's run ended: cloud-init status --wait returned`,
    );
    if (wait) o.log(`cloud-init status --wait --long: status ${wait.code}:\n${wait.stdout.trim()}`);
    if (result.code === 0) o.log(`cloud-init result.json: ${result.stdout.trim()}`);
    if (status.code === 0) o.log(`cloud-init status.json: ${status.stdout.trim()}`);
    return judgeCloudInit({ wait, result, status });
  } finally {
    clearTimeout(timer);
    o.signal.removeEventListener('abort', onAbort);
  }
}
