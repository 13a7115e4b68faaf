/**
 * The import order of pim's own code. Each lib folder sits on a layer; a file
 * imports (at the top, or with `await import`) only from its own folder and
 * from folders on lower layers, never sideways to another folder of its layer
 * nor up; a type-only import counts too. cmds/ sits on top. And no two files
 * import each other, however far round (type-only imports count: a loop of
 * them still ties the files' meaning together). README.md's "Layout and
 * development" says the same order and names every folder.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = resolve(__dirname, '../..');

/** Lowest first. A folder imports only from the layers before its own. */
const LAYERS: string[][] = [
  ['core'], // paths, exit codes, processes, locks: nothing of pim's above it
  ['qemu', 'archive', 'cli'], // QEMU's argv and protocols, cpio, the command line
  ['config'], // pim.yml and the catalogs (profiles, ISOs, VMs, targets)
  ['image', 'install'], // the image store and build registry; installer ISOs
  ['vm', 'ventoy'], // a VM's life: its state, sockets, launch, plan; USB sticks
  ['guest'], // the work aimed at a running VM's guest: reach, keys, exec, wait, copy, stop
  ['kboot', 'builder'], // direct kernel boot; pim-build
  ['oci'], // builds to and from OCI registries
  ['deploy'], // builds onto libvirt, Proxmox, SSH hosts, registries
  ['cmds'], // the executables
];

const layerOf = new Map(LAYERS.flatMap((folders, i) => folders.map((f) => [f, i] as const)));

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => join(dir, f));
}

/** The folder a file belongs to: lib/X/... is X, cmds/... is cmds. */
const folderOf = (file: string) => (file.startsWith('lib/') ? file.split('/')[1]! : file.split('/')[0]!);

interface Edge {
  from: string;
  to: string;
  typeOnly: boolean;
}

/** pim's own imports of a file: `import ... from './x.ts'` (type-only or not) and `import('./x.ts')`. */
function importsOf(file: string): Edge[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: Edge[] = [];
  const add = (spec: string, typeOnly: boolean) => {
    if (!spec.startsWith('.') || !spec.endsWith('.ts')) return;
    out.push({ from: file, to: relative(ROOT, resolve(ROOT, dirname(file), spec)), typeOnly });
  };
  for (const m of text.matchAll(/^\s*(import|export)\s+(type\s+)?(?:[^'";]*?\sfrom\s+)?['"]([^'"]+)['"]/gms))
    add(m[3]!, Boolean(m[2]) || (/^\s*import\s+\{[^}]*\}/.test(m[0]) && allTypes(m[0])));
  for (const m of text.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) add(m[1]!, false);
  return out;
}

/** `import { type A, type B } from` imports types only. */
function allTypes(stmt: string): boolean {
  const names = /\{([^}]*)\}/.exec(stmt)?.[1] ?? '';
  const parts = names
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return parts.length > 0 && parts.every((p) => p.startsWith('type '));
}

const files = [...sources('lib'), ...sources('cmds')];
const edges = files.flatMap(importsOf);

describe('the layers of lib/', () => {
  it('name every folder of lib/ once', () => {
    const folders = readdirSync(join(ROOT, 'lib'), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name)
      .sort();
    expect([...layerOf.keys()].filter((f) => f !== 'cmds').sort()).toEqual(folders);
  });

  it("are the README's: its layer order is LAYERS, and its layout names every folder", () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const order = /The folders are layers, bottom up: ([^.]*)\./.exec(readme.replace(/\s+/g, ' '))?.[1] ?? '';
    expect(order.split(' < ').map((layer) => layer.split(', '))).toEqual(LAYERS);
    const named = [...readme.matchAll(/^lib\/([\w-]+)\/ /gm)].map((m) => m[1]);
    expect(named.sort()).toEqual([...layerOf.keys()].filter((f) => f !== 'cmds').sort());
  });

  it('are imported downwards only: no import up a layer or sideways to another folder', () => {
    const bad = edges
      .filter((e) => folderOf(e.from) !== folderOf(e.to) && !e.to.endsWith('package.json'))
      .filter((e) => {
        const from = layerOf.get(folderOf(e.from));
        const to = layerOf.get(folderOf(e.to));
        return from === undefined || to === undefined || to >= from;
      })
      .map((e) => `${e.from} -> ${e.to}${e.typeOnly ? ' (type)' : ''}`);
    expect(bad).toEqual([]);
  });

  it('have no import cycles between files (at the top, lazy or type-only)', () => {
    const graph = new Map<string, string[]>();
    for (const e of edges) graph.set(e.from, [...(graph.get(e.from) ?? []), e.to]);
    const cycles = new Set<string>();
    // Tarjan's strongly connected components: each one of more than one file is a cycle
    let index = 0;
    const idx = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const on = new Set<string>();
    const visit = (v: string) => {
      idx.set(v, index);
      low.set(v, index++);
      stack.push(v);
      on.add(v);
      for (const w of graph.get(v) ?? []) {
        if (!idx.has(w)) {
          visit(w);
          low.set(v, Math.min(low.get(v)!, low.get(w)!));
        } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
      if (low.get(v) === idx.get(v)) {
        const scc: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          on.delete(w);
          scc.push(w);
        } while (w !== v);
        if (scc.length > 1) cycles.add(scc.sort().join(' '));
      }
    };
    for (const f of files) if (!idx.has(f)) visit(f);
    expect([...cycles]).toEqual([]);
  });

  it('reads imports at the top and lazy ones (the check itself works)', () => {
    const top = importsOf('lib/vm/clone.ts').find((e) => e.to === 'lib/vm/state.ts');
    const lazy = importsOf('cmds/pim-vm.ts').find((e) => e.to === 'lib/vm/clone.ts');
    const type = importsOf('lib/guest/reach.ts').find((e) => e.to === 'lib/vm/ref.ts' && e.typeOnly);
    expect([top?.typeOnly, lazy?.typeOnly, Boolean(type)]).toEqual([false, false, true]);
  });
});
