/**
 * Templates for preseed and autoinstall files: eta (https://eta.js.org),
 * ERB-style tags `<%= expr %>` (no HTML escaping: these are not web pages),
 * `<% code %>`, and `-%>` to eat the newline after a tag. A template sees
 * `profile` (the merged profile), `name` (the profile name) and `url` (the
 * server's own URL as the client reached it, empty on a Ventoy stick) and
 * `target` ("vm" for pim-serve and pim-build, "ventoy" for a stick written by
 * pim-ventoy configure); `it` holds them all.
 *
 * Compiled templates are cached by path, size and mtime, so a running
 * server picks up edits and re-renders cheaply. Errors become PimError
 * (exit 78) naming the file and line; nothing half-rendered is returned.
 */
import * as fs from 'node:fs';
import { Eta } from 'eta';
import { EXIT, PimError } from '../core/exit.ts';

/** What an answer file is rendered for: a VM (pim-serve, pim-build) or a Ventoy stick. */
export type Target = 'vm' | 'ventoy';

export interface TemplateData {
  profile: Record<string, unknown>;
  name: string;
  url: string;
  /** default "vm" */
  target?: Target;
}

const eta = new Eta({
  autoEscape: false,
  autoTrim: false,
  debug: true, // runtime errors carry the template line
  cache: false,
  functionHeader: "const profile = it.profile, name = it.name, url = it.url, target = it.target || 'vm';",
});

type Fn = ReturnType<Eta['compile']>;
const cache = new Map<string, { key: string; fn: Fn }>();

function templateError(label: string, e: unknown): PimError {
  const msg = (e as Error)?.message ?? String(e);
  const line = /line (\d+)/.exec(msg)?.[1];
  const lines = msg
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const cause = lines[lines.length - 1] ?? msg;
  const head =
    lines[0] && !/^line \d+$/.test(lines[0]) && lines[0] !== cause
      ? `${lines[0].replace(/ at line \d+ col \d+:?$/, '')}: `
      : '';
  return new PimError(EXIT.CONFIG, `${label}${line ? ':' + line : ''}: template error: ${head}${cause}`);
}

/** Compile (cached by `key`) and render; throws PimError on any failure. */
export function renderTemplate(
  source: string | (() => string),
  label: string,
  key: string,
  data: TemplateData,
): string {
  let hit = cache.get(label);
  if (!hit || hit.key !== key) {
    try {
      const src = typeof source === 'string' ? source : source();
      hit = { key, fn: eta.compile(src) };
    } catch (e) {
      throw templateError(label, e);
    }
    cache.set(label, hit);
  }
  try {
    return eta.render(hit.fn, data as unknown as object);
  } catch (e) {
    throw templateError(label, e);
  }
}

/** Render a template file, or a built-in source when `path` is null. */
export function renderFile(
  path: string | null,
  builtinSource: string | undefined,
  label: string,
  data: TemplateData,
): string {
  if (path === null) return renderTemplate(builtinSource ?? '', label, 'builtin', data);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw new PimError(EXIT.CONFIG, `${label}: cannot read template: ${(e as Error).message}`);
  }
  return renderTemplate(() => fs.readFileSync(path, 'utf8'), label, `${st.size}:${st.mtimeMs}:${st.ino}`, data);
}
