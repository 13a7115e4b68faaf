/**
 * pim-ventoy configure: a profile's answer file on the stick, and Ventoy's
 * auto_install plugin pointed at it.
 *
 * The answer file is rendered by the templates pim-serve and pim-build use
 * (lib/install/serve.ts renderAnswer), with `target: "ventoy"`, into
 *   /ventoy/pim/PROFILE.preseed.cfg        (Debian: preseed)
 *   /ventoy/pim/PROFILE.autoinstall.yaml   (Ubuntu: autoinstall; its first
 *                                           line must be `autoinstall:`)
 * and /ventoy/ventoy.json gets an `auto_install` entry for the ISO (one that
 * pim-ventoy add put there: it has a NAME.iso.sha256 beside it) with the
 * template, `autosel` and `timeout`. Only pim's entries are touched: an entry
 * is pim's when every template it lists lies under /ventoy/pim/. Every other
 * key and entry stays as it was. The old file is kept as ventoy.json.bak; the
 * new one is written through a temp file, fsync'd and renamed.
 *
 * ventoy.json is read strictly (UTF-8, no BOM, JSON without comments: one
 * syntax error makes Ventoy ignore every plugin). A broken one is exit 78
 * with FILE:LINE, and nothing at all is written: every check and every
 * rendering happens before the first write.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { SIDECAR, writeSynced } from './add.ts';
import type { OpenStick } from './stick.ts';

export const PIM_DIR = '/ventoy/pim';
export const VENTOY_JSON = '/ventoy/ventoy.json';
export const NONVTOY_DISK = '$$VT_LINUX_DISK_SDX_1ST_NONVTOY$$';

export interface ConfigureOpts {
  /** the catalog ISO to install from (default: each profile's `iso`) */
  iso?: string;
  /** a pim-serve URL for the late command's installs.d script (default: none) */
  url?: string;
  /** seconds Ventoy waits before it picks the template (ventoy.json `timeout`) */
  timeout: number;
}

export interface Planned {
  name: string;
  iso: string;
  /** the ISO's path on the stick */
  image: string;
  /** the template's path on the stick */
  template: string;
  body: string;
  label: string;
}

/** Render every profile's answer file for the stick (nothing is written). */
export async function plan(s: OpenStick, profiles: string[], opts: ConfigureOpts): Promise<Planned[]> {
  const { loadProfile } = await import('../config/profile.ts');
  const { renderAnswer } = await import('../install/serve.ts');
  const { checkIsoName } = await import('../install/iso-store.ts');
  const onStick = isosOnStick(s.root);
  const out: Planned[] = [];
  for (const name of profiles) {
    const p = await loadProfile(name);
    const ubuntu = p.value.distro === 'ubuntu';
    const iso = opts.iso ?? (typeof p.value.iso === 'string' ? p.value.iso : '');
    if (!iso) throw new PimError(EXIT.CONFIG, `profile "${name}" names no iso; give --iso ISO-NAME`);
    checkIsoName(iso);
    const image = onStick.get(`${iso}.iso`);
    if (!image)
      throw new PimError(
        EXIT.NOINPUT,
        `ISO "${iso}" is not on ${s.stick.name} (pim-ventoy add puts it there with its ${iso}.iso${SIDECAR}); run pim-ventoy add ${iso}`,
      );
    const a = renderAnswer(ubuntu ? '/user-data' : '/preseed.cfg', p, opts.url ?? '', 'ventoy');
    if (!a)
      throw new PimError(
        EXIT.CONFIG,
        `profile "${name}": no ${ubuntu ? 'user-data' : 'preseed'} template in preseeds.d; add preseeds.d/${name}.${ubuntu ? 'user-data' : 'cfg'}.eta`,
      );
    if (ubuntu && a.body.split('\n', 1)[0]!.trimEnd() !== 'autoinstall:') {
      throw new PimError(
        EXIT.CONFIG,
        `${a.label}:1: for a Ventoy stick the autoinstall file's first line must be "autoinstall:" (Ventoy hands it to the installer as it is); put "#cloud-config" and comments inside <% if (target !== 'ventoy') { %> ... <% } %>`,
      );
    }
    out.push({
      name,
      iso,
      image,
      template: `${PIM_DIR}/${name}.${ubuntu ? 'autoinstall.yaml' : 'preseed.cfg'}`,
      body: a.body,
      label: a.label,
    });
  }
  return out;
}

/** NAME.iso -> its path on the stick, for the ISOs pim added (those with a sidecar), outside /ventoy. */
export function isosOnStick(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string, rel: string, depth: number) => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    const names = new Set(ents.map((e) => e.name));
    for (const e of ents) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) {
        if (depth < 8 && r.toLowerCase() !== '/ventoy' && !e.name.startsWith('.'))
          walk(join(dir, e.name), r, depth + 1);
      } else if (/\.iso$/i.test(e.name) && names.has(e.name + SIDECAR) && !out.has(e.name)) out.set(e.name, r);
    }
  };
  walk(root, '', 0);
  return out;
}

/** Parse ventoy.json strictly; 78 with FILE:LINE when it is not UTF-8 JSON. */
export function parseVentoyJson(bytes: Buffer, label: string): Record<string, unknown> {
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf)
    throw new PimError(
      EXIT.CONFIG,
      `${label}:1: starts with a UTF-8 byte order mark, which Ventoy does not read; remove it`,
    );
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const bad = firstBadUtf8(bytes);
    throw new PimError(
      EXIT.CONFIG,
      `${label}:${lineAt(bytes.subarray(0, bad).toString('latin1'), bad)}: not UTF-8; save it as UTF-8 (nothing was written)`,
    );
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    const msg = (e as Error).message;
    const pos = Number(/position (\d+)/.exec(msg)?.[1] ?? NaN);
    const line =
      /line (\d+)/.exec(msg)?.[1] ??
      (Number.isFinite(pos) ? String(lineAt(text, pos)) : String(text.split('\n').length));
    const why = msg.replace(/ in JSON at position \d+.*$/, '').replace(/^JSON\.parse: /, '');
    const comment = /\/\/|\/\*/.test(text) ? ' (JSON has no comments)' : '';
    throw new PimError(
      EXIT.CONFIG,
      `${label}:${line}: JSON syntax error: ${why}${comment}; Ventoy ignores every plugin while it is broken: fix it (nothing was written)`,
    );
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new PimError(EXIT.CONFIG, `${label}:1: must be a JSON object ({...}); fix it (nothing was written)`);
  const o = v as Record<string, unknown>;
  if (o.auto_install !== undefined && !Array.isArray(o.auto_install))
    throw new PimError(EXIT.CONFIG, `${label}: "auto_install" must be a list ([...]); fix it (nothing was written)`);
  return o;
}

const lineAt = (text: string, pos: number) => text.slice(0, pos).split('\n').length;

function firstBadUtf8(b: Buffer): number {
  for (let i = 0; i < b.length; i++) {
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(0, i + 1));
    } catch {
      // an incomplete sequence at the end is not an error yet
      if (i + 4 >= b.length || b[i]! < 0x80 || (b[i]! & 0xc0) !== 0x80) return i;
    }
  }
  return 0;
}

const isPims = (t: unknown) =>
  (Array.isArray(t) ? t : [t]).every((x) => typeof x === 'string' && x.startsWith(PIM_DIR + '/'));

/**
 * Merge pim's entries into ventoy.json's object (changed in place): per ISO,
 * one `auto_install` entry whose templates are pim's, this profile's selected.
 * A user's own entry for the same ISO is left alone and is an error (65).
 */
export function mergeAutoInstall(o: Record<string, unknown>, planned: Planned[], timeout: number, label: string): void {
  const list = (o.auto_install ??= []) as Array<Record<string, unknown>>;
  for (const p of planned) {
    const i = list.findIndex((e) => e && typeof e === 'object' && e.image === p.image);
    if (i < 0) {
      list.push({ image: p.image, template: [p.template], autosel: 1, timeout });
      continue;
    }
    const e = list[i]!;
    if (!isPims(e.template)) {
      throw new PimError(
        EXIT.DATAERR,
        `${label}: auto_install already has an entry of yours for ${p.image} (templates outside ${PIM_DIR}); remove it, or add ${p.template} to it yourself (nothing was written)`,
      );
    }
    const tpls = (Array.isArray(e.template) ? e.template : [e.template]) as string[];
    if (!tpls.includes(p.template)) tpls.push(p.template);
    e.template = tpls;
    e.autosel = tpls.indexOf(p.template) + 1;
    e.timeout = timeout;
  }
}

export type ConfigureResult = {
  name: string;
  iso: string;
  image: string;
  template: string;
};

/** Plan, check ventoy.json, then write the templates, the backup and the new ventoy.json. */
export async function configure(s: OpenStick, profiles: string[], opts: ConfigureOpts): Promise<ConfigureResult[]> {
  const planned = await plan(s, profiles, opts);
  const file = join(s.root, VENTOY_JSON);
  const label = `${s.stick.name}:${VENTOY_JSON}`;
  let old: Buffer | null = null;
  try {
    old = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      throw new PimError(EXIT.NOINPUT, `cannot read ${label}: ${(e as Error).message}`);
  }
  const obj = old ? parseVentoyJson(old, label) : {};
  mergeAutoInstall(obj, planned, opts.timeout, label);
  const text = JSON.stringify(obj, null, 4) + '\n';
  parseVentoyJson(Buffer.from(text), `${label} (as pim would write it)`);
  fs.mkdirSync(join(s.root, PIM_DIR), { recursive: true });
  for (const p of planned) writeSynced(join(s.root, p.template), p.body);
  if (!old || !old.equals(Buffer.from(text))) {
    if (old) writeSynced(file + '.bak', old.toString('utf8'));
    writeSynced(file, text);
  }
  return planned.map((p) => ({ name: p.name, iso: p.iso, image: p.image, template: p.template }));
}
