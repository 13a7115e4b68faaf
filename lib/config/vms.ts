/**
 * VM definitions: vms.d/*.yml, each a mapping of VM names to settings that
 * merge over `default` as profiles do (qqmgr's `[vm.NAME]`). pim-run NAME
 * boots a defined VM with its settings, which pim-run's flags override.
 *
 * `qemu_args` strings may use variables, written ${...}:
 *   ${vars.X}      the entry's `vars` (merged over default's), then pim.yml's `vars`
 *   ${vm.name}, ${vm.mem}, ${vm.cpus}, ${vm.ssh_port}   the VM being started
 *   ${image.NAME}  the path of image NAME in the store
 *   ${runtime}     the runtime dir ($XDG_RUNTIME_DIR/pim)
 *   $$             a literal $
 * An undefined variable is a config error (78) at the FILE:LINE of the
 * string, never an empty string.
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { loadCatalog, resolveEntry, type Catalog, type Resolved } from './catalog.ts';
import { configError } from './tree.ts';
import { at } from './yaml.ts';
import type { Plain } from './merge.ts';

/** A defined VM, merged over `default`, its values checked (lib/config/schema.ts VM_SCHEMA). */
export interface VmDefinition {
  name: string;
  /** a store name, a path (relative to the file that defines it) or build:PROFILE */
  image?: string;
  mem?: string;
  cpus?: number;
  net?: 'user' | 'bridged';
  bridge?: string;
  ssh_port?: number;
  /** extra forwards, as pim-run --forward takes them */
  ports: string[];
  firmware?: 'bios' | 'uefi';
  snapshot?: boolean;
  accel?: 'kvm' | 'hvf' | 'tcg';
  /** the strings as written, variables not yet expanded */
  qemu_args: string[];
  vars: Plain;
  resolved: Resolved;
  /** FILE:LINE of each qemu_args string, for errors */
  argWhere: string[];
}

/** The catalog of VM definitions (user files only add to the built-in, empty `default`). */
export const loadVmCatalog = (): Promise<Catalog> => loadCatalog('vms');

/** The definition of `name`, or null when none is defined. */
export async function findVmDefinition(name: string, cat?: Catalog): Promise<VmDefinition | null> {
  const c = cat ?? (await loadVmCatalog());
  if (name === 'default' || !c.layers.has(name)) return null;
  return definition(c, name);
}

/** The definition of `name`, merged (66 when there is none). */
export function definition(c: Catalog, name: string): VmDefinition {
  const r = resolveEntry(c, name);
  const v = r.value;
  // the layer that set qemu_args last: the FILE:LINE of each of its strings
  const layers = [...(c.layers.get('default') ?? []), ...(c.layers.get(name) ?? [])];
  const setter = layers.filter((l) => Array.isArray(l.value.qemu_args)).pop();
  const args = (v.qemu_args as string[] | undefined) ?? [];
  const argWhere = args.map((_, i) =>
    setter
      ? at(setter.file, [setter.name, 'qemu_args', String(i)])
      : (r.origins.qemu_args ?? `VM definition "${name}"`),
  );
  return {
    name,
    image: v.image as string | undefined,
    mem: v.mem === undefined ? undefined : String(v.mem),
    cpus: v.cpus as number | undefined,
    net: v.net as VmDefinition['net'],
    bridge: v.bridge as string | undefined,
    ssh_port: v.ssh_port as number | undefined,
    ports: (v.ports as string[] | undefined) ?? [],
    firmware: v.firmware as VmDefinition['firmware'],
    snapshot: v.snapshot as boolean | undefined,
    accel: v.accel as VmDefinition['accel'],
    qemu_args: args,
    vars: (v.vars as Plain | undefined) ?? {},
    resolved: r,
    argWhere,
  };
}

/**
 * What pim-run boots for a definition: `build:PROFILE` (the newest build of
 * PROFILE), a store name, or a path, which is taken relative to the file that
 * set `image`. 78 at FILE:LINE when it has no image.
 */
export function definitionTarget(d: VmDefinition): { target: string; buildOnly: boolean } {
  const where = d.resolved.origins.image ?? `VM definition "${d.name}"`;
  if (!d.image)
    throw configError(
      where,
      `VM "${d.name}" has no image: set image: to a store image's name, a path, or build:PROFILE`,
    );
  if (d.image.startsWith('build:')) return { target: d.image.slice('build:'.length), buildOnly: true };
  if (d.image.includes('/') && !isAbsolute(d.image)) {
    // "vms.d/dev.yml:3" -> the directory of vms.d/dev.yml
    const file = where.replace(/:\d+$/, '');
    return { target: resolve(dirname(file), d.image), buildOnly: false };
  }
  return { target: d.image, buildOnly: false };
}

export interface ExpandContext {
  vm: { name: string; mem: string; cpus: number; ssh_port: number | null };
  /** pim.yml's global vars */
  globalVars: Plain;
  /** a store image's path, or null when there is none */
  image: (name: string) => string | null;
  runtime: string;
}

const VAR = /\$\$|\$\{([^}]*)\}/g;

/** The variables a string refers to (`vm.ssh_port`, ...), for deciding what must be known before the start. */
export function referencedVars(strings: string[]): string[] {
  const out: string[] = [];
  for (const s of strings) for (const m of s.matchAll(VAR)) if (m[1] !== undefined) out.push(m[1].trim());
  return out;
}

/** Expand ${...} in each of `strings` (78 at `where[i]` for an undefined variable or an unclosed ${). */
export function expandVars(
  strings: string[],
  where: string[],
  d: Pick<VmDefinition, 'vars'>,
  ctx: ExpandContext,
): string[] {
  return strings.map((s, i) => {
    const place = where[i] ?? 'qemu_args';
    const open = s.replace(VAR, '').indexOf('${');
    if (open >= 0)
      throw configError(
        place,
        `qemu_args: unclosed "\${" in ${JSON.stringify(s)}; close it with }, or write $$ for a literal $`,
      );
    return s.replace(VAR, (_m, name: string | undefined) => {
      if (name === undefined) return '$';
      const v = lookup(name.trim(), d, ctx);
      if (v === undefined) {
        throw configError(
          place,
          `qemu_args: undefined variable \${${name}} in ${JSON.stringify(s)}; known: vars.NAME (the entry's vars, then pim.yml's), vm.name, vm.mem, vm.cpus, vm.ssh_port, image.NAME, runtime`,
        );
      }
      return v;
    });
  });
}

function lookup(name: string, d: Pick<VmDefinition, 'vars'>, ctx: ExpandContext): string | undefined {
  const scalar = (v: unknown) =>
    typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v)) || typeof v === 'boolean'
      ? String(v)
      : undefined;
  if (name.startsWith('vars.')) {
    const k = name.slice(5);
    if (Object.hasOwn(d.vars, k)) return scalar(d.vars[k]);
    if (Object.hasOwn(ctx.globalVars, k)) return scalar(ctx.globalVars[k]);
    return undefined;
  }
  if (name.startsWith('image.')) return ctx.image(name.slice(6)) ?? undefined;
  switch (name) {
    case 'vm.name':
      return ctx.vm.name;
    case 'vm.mem':
      return ctx.vm.mem;
    case 'vm.cpus':
      return String(ctx.vm.cpus);
    case 'vm.ssh_port':
      return ctx.vm.ssh_port === null ? undefined : String(ctx.vm.ssh_port);
    case 'runtime':
      return ctx.runtime;
  }
  return undefined;
}
