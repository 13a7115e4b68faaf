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
 *   - once SSH lets pim's key in, `cloud-init status --wait` (bounded by the
 *     build's deadline) waits for cloud-init's last stage; then pim reads
 *     cloud-init's own account of that seeded run: `cloud-init status --long
 *     --format json`, /run/cloud-init/result.json and status.json (written at
 *     the end of the run, and removed by cloud-init at the start of every boot,
 *     so there is no second boot to lose them). Errors fail the build (65)
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
import { KEY_URL, type BuildPlan } from './plan.ts';

/**
 * The build's vendor-data (on the seed of a generalized build only): what the
 * build boot needs and no more, where a deployed VM's first boot does the rest.
 * One SSH host key, ed25519: the build's host keys are removed when it is
 * generalized, and cloud-init makes the image's full set (its
 * ssh_genkeytypes) on each clone's first boot. RSA-3072 key generation under
 * TCG took 3-20 s of the build boot, the most variable part of it. And no
 * printing of those keys to the console (keys-to-console: 0.5 s under TCG).
 * Vendor-data is below user-data in cloud-init's merge: a profile's
 * cloud_config that sets ssh_genkeytypes wins.
 */
export const BUILD_VENDOR_DATA = `#cloud-config
# pim-build's vendor-data for the build boot (the build is generalized: its host keys are removed)
ssh_genkeytypes: [ed25519]
ssh: {emit_keys_to_console: false}
`;

/** The build seed's vendor-data: a generalized build's, unless the profile's sources bring a vendor-data of their own. */
export const buildVendorData = (plan: Pick<BuildPlan, 'generalize' | 'sources'>): string | null =>
  plan.generalize && !plan.sources.some((f) => f.name === 'vendor-data') ? BUILD_VENDOR_DATA : null;

/**
 * cloud-init's recoverable errors (23.4 and later, `{LEVEL: [message]}`; `status`
 * exits 2, "degraded"): each stage's from status.json, then those of the
 * `--long` report (which names no stage) not said already.
 */
function recoverableErrors(stages: Record<string, { recoverable_errors?: unknown } | null>, report: unknown): string[] {
  const out: string[] = [];
  const add = (stage: string | null, byLevel: unknown) => {
    if (!byLevel || typeof byLevel !== 'object') return;
    for (const [level, list] of Object.entries(byLevel as Record<string, unknown>))
      for (const m of Array.isArray(list) ? list : [list]) {
        const t = `${level}: ${typeof m === 'string' ? m : JSON.stringify(m)}`;
        if (!out.some((x) => x === t || x.endsWith(`: ${t}`))) out.push(stage ? `${stage}: ${t}` : t);
      }
  };
  for (const [stage, v] of Object.entries(stages)) if (v && typeof v === 'object') add(stage, v.recoverable_errors);
  add(null, report);
  return out;
}

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
  const vendor = buildVendorData(plan);
  if (vendor) {
    fs.writeFileSync(join(dir, 'vendor-data'), vendor, { mode: 0o600, flag: 'wx' });
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
 * Judge cloud-init's account of the seeded run: the exit of `cloud-init
 * status --wait` and `status --long --format json` (cloud-init 22.3 and
 * later; an older one's plain output is kept as text), result.json and
 * status.json. Errors are cloud-init's own words (65), and so are its
 * recoverable errors (23.4 and later: status "degraded", exit 2); no result.json means
 * the run never finished (65); a run whose datasource is not NoCloud did
 * not read pim's seed (65).
 */
export function judgeCloudInit(r: { wait: Out; long: Out; result: Out; status: Out }): {
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
    long = JSON.parse(r.long.stdout) as Long;
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
  const text = (o: Out) => `${o.stdout}${o.stderr ?? ''}`.trim().split('\n').filter(Boolean).slice(-3).join(' / ');
  if (errors.length)
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init reported ${errors.length} error${errors.length > 1 ? 's' : ''}: ${errors.join('; ')}`,
    );
  const recoverable = recoverableErrors(stages, long?.recoverable_errors);
  if (recoverable.length)
    throw new PimError(
      EXIT.DATAERR,
      `cloud-init reported ${recoverable.length} recoverable error${recoverable.length > 1 ? 's' : ''} (status: degraded): ${recoverable.join('; ')}`,
    );
  if (r.wait.code === 127)
    throw new PimError(
      EXIT.DATAERR,
      'the image has no cloud-init command; builder: cloud-init needs an image that runs cloud-init (with the NoCloud datasource)',
    );
  if (r.wait.code !== 0 || long?.status === 'error')
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
 * shell in the guest, about a second each under TCG): WAIT_SCRIPT in a subshell,
 * then result.json and status.json, each after a MARK line with its cat's status;
 * the script's own status is the wait's.
 */
export const ACCOUNT_SCRIPT = `(
${WAIT_SCRIPT})
rc=$?
for f in result status; do
  t=$(cat /run/cloud-init/$f.json 2>/dev/null || cat /var/lib/cloud/data/$f.json 2>/dev/null)
  printf '\\n${MARK} %s %s\\n%s' "$f" "$?" "$t"
done
exit $rc
`;

/** ACCOUNT_SCRIPT's output split back into the wait's output and the two files (status 1: not there). */
export function splitAccount(r: Out): { wait: Out; result: Out; status: Out } {
  const parts = r.stdout.split(new RegExp(`\\n${MARK} (result|status) (\\d+)\\n`));
  const file = (name: string): Out => {
    const i = parts.indexOf(name, 1);
    return i > 0 && (i - 1) % 3 === 0
      ? { code: Number(parts[i + 1]), stdout: parts[i + 2] ?? '' }
      : { code: 1, stdout: '' };
  };
  return {
    wait: { code: r.code, stdout: parts[0] ?? '', stderr: r.stderr },
    result: file('result'),
    status: file('status'),
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
    const { wait, result, status } = splitAccount(out);
    o.log(`cloud-init status --wait --long: status ${wait.code}:\n${wait.stdout.trim()}`);
    if (result.code === 0) o.log(`cloud-init result.json: ${result.stdout.trim()}`);
    if (status.code === 0) o.log(`cloud-init status.json: ${status.stdout.trim()}`);
    return judgeCloudInit({ wait, long: wait, result, status });
  } finally {
    clearTimeout(timer);
    o.signal.removeEventListener('abort', onAbort);
  }
}
