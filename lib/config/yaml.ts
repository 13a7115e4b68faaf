/**
 * Reading a YAML config file, with limits, so that no file can make pim
 * slow or big: a file pim reads is checked in three steps, each linear in its
 * size, and refused (exit 78, FILE:LINE) past a limit.
 *
 *   1. the bytes: at most YAML_LIMITS.fileBytes (a FIFO or a device is refused)
 *   2. the tokens, counted by yaml's lexer before a document is built (building
 *      costs about 1 KB of memory per node): at most YAML_LIMITS.sourceNodes,
 *      flow collections nested at most YAML_LIMITS.depth deep
 *   3. the document, walked once: keys are plain strings, none twice in a
 *      mapping (a Set per mapping: yaml's own `uniqueKeys` compares every key
 *      with every other, which made 40,000 keys take a minute), no
 *      `__proto__`; and the size the file expands to, each alias counting its
 *      target's expanded size (memoised per node), at most YAML_LIMITS.nodes.
 *      A billion-laughs file or a big list aliased a hundred times stops here,
 *      at the alias that crosses the limit, before anything is expanded.
 *
 * The same walk indexes every mapping's keys, so the line of a key path
 * (lineOf) costs one lookup per path segment.
 *
 * yaml is imported lazily: parsing is async.
 */
import * as fs from 'node:fs';
import type { Document, LineCounter, Node as YamlNode, Pair, YAMLMap } from 'yaml';
import { PimError } from '../core/exit.ts';
import { configError } from './tree.ts';
import { FORBIDDEN_KEYS } from './merge.ts';

/**
 * The limits. A real profile or catalog has hundreds of nodes; these leave
 * room for generated files many times that size while bounding the worst case:
 *   - fileBytes: 4 MiB; pim's own YAML files are about 1 KB each.
 *   - sourceNodes: 200,000 tokens that make nodes (keys, values, list items,
 *     aliases; counted before parsing). Parsing costs ~1 KB and ~5 µs per node,
 *     so this bounds a parse to ~200 MB and ~1 s. A 40,000-key mapping is
 *     120,000 tokens.
 *   - nodes: 1,000,000 values after expanding aliases. Every later step
 *     (conversion, schema check, merging over `default`) is linear in this;
 *     the 500,000-item list aliased 99 times (50 M) and the billion laughs
 *     (10^9) are far past it, and no file without aliases reaches it.
 *   - depth: 100 levels of nesting; pim's schema uses 3.
 */
export const YAML_LIMITS = { fileBytes: 4 * 1024 * 1024, sourceNodes: 200_000, nodes: 1_000_000, depth: 100 };

/** A parsed YAML file: its value and a way to find the line of a key path. */
export interface YamlFile {
  /** shown in messages: a path, or "builtin:profiles.d/default.yml" */
  label: string;
  value: unknown;
  lineOf(path: string[]): number | undefined;
}

type Yaml = typeof import('yaml');

/** The yaml module (bundled as CommonJS: its exports may sit under `default`). */
export async function yamlLib(): Promise<Yaml> {
  const m = (await import('yaml')) as Yaml & { default?: Yaml };
  return m.default && 'parseDocument' in m.default ? m.default : m;
}

const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

/** lexer tokens that make a node */
const NODE_TOKENS = new Set([
  'scalar',
  'single-quoted-scalar',
  'double-quoted-scalar',
  'alias',
  'flow-map-start',
  'flow-seq-start',
  'seq-item-ind',
  'map-value-ind',
  'explicit-key-ind',
]);
/** lexer control tokens that are not in the source */
const ZERO_WIDTH = new Set(['\x02', '\x18', '\x1f']);

const lineAtOffset = (text: string, offset: number) => {
  let line = 1;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) line++;
  return line;
};

/** Step 2: count node tokens and flow depth with the lexer, stopping at the first limit. */
function precheck(YAML: Yaml, text: string, label: string): void {
  let nodes = 0;
  let depth = 0;
  let offset = 0;
  for (const tok of new YAML.Lexer().lex(text)) {
    const type = YAML.CST.tokenType(tok);
    if (type && NODE_TOKENS.has(type) && ++nodes > YAML_LIMITS.sourceNodes) {
      throw configError(
        `${label}:${lineAtOffset(text, offset)}`,
        `more than ${YAML_LIMITS.sourceNodes} YAML nodes (keys, values, list items) in one file; a config file may not be that large: split it or remove what it does not need`,
      );
    }
    if (type === 'flow-map-start' || type === 'flow-seq-start') {
      if (++depth > YAML_LIMITS.depth)
        throw configError(
          `${label}:${lineAtOffset(text, offset)}`,
          `nested more than ${YAML_LIMITS.depth} levels deep; flatten it`,
        );
    } else if (type === 'flow-map-end' || type === 'flow-seq-end') depth = Math.max(0, depth - 1);
    if (!ZERO_WIDTH.has(tok)) offset += tok.length;
  }
}

export async function parseYaml(text: string, label: string): Promise<YamlFile> {
  if (Buffer.byteLength(text) > YAML_LIMITS.fileBytes) {
    throw configError(
      label,
      `${MiB(Buffer.byteLength(text))}, over the ${MiB(YAML_LIMITS.fileBytes)} limit for a config file; split it or remove what it does not need`,
    );
  }
  const YAML = await yamlLib();
  precheck(YAML, text, label);
  const lc = new YAML.LineCounter();
  let doc: Document.Parsed;
  try {
    // uniqueKeys off: it is quadratic; the walk below finds duplicates with a Set
    doc = YAML.parseDocument(text, { lineCounter: lc, prettyErrors: true, uniqueKeys: false });
  } catch (e) {
    throw configError(label, `cannot parse: ${(e as Error).message.split('\n')[0]}; fix the YAML`);
  }
  const err = doc.errors[0];
  if (err) {
    const line = err.linePos?.[0]?.line;
    const msg = err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw configError(line ? `${label}:${line}` : label, `${msg}; fix the YAML`);
  }
  const keys = walk(YAML, doc, lc, label);
  let value: unknown;
  try {
    // aliases were counted above (their expanded size is within the limit)
    value = doc.toJS({ maxAliasCount: -1 });
  } catch (e) {
    throw configError(label, `cannot convert: ${(e as Error).message.split('\n')[0]}; fix the YAML`);
  }
  const lineAt = (n: unknown) => (YAML.isNode(n) && n.range ? lc.linePos(n.range[0]).line : undefined);
  const deref = (n: unknown): unknown => (YAML.isAlias(n) ? n.resolve(doc) : n);
  return {
    label,
    value: value ?? {},
    lineOf(path) {
      let node: unknown = doc.contents;
      let line = path.length ? lineAt(node) : undefined;
      for (const seg of path) {
        node = deref(node);
        if (YAML.isMap(node)) {
          const pair = keys.get(node)?.get(seg);
          if (!pair) break;
          line = lineAt(pair.key) ?? line;
          node = pair.value;
        } else if (YAML.isSeq(node)) {
          const item = /^\d+$/.test(seg) ? node.items[Number(seg)] : undefined;
          if (item === undefined) break;
          line = lineAt(item) ?? line;
          node = item;
        } else break;
      }
      return line;
    },
  };
}

/**
 * Step 3: one walk over the document. Returns each mapping's keys (for
 * lineOf). Throws a config error at the first bad key, duplicate, alias loop,
 * or at the node that makes the file expand past YAML_LIMITS.nodes.
 */
function walk(YAML: Yaml, doc: Document.Parsed, lc: LineCounter, label: string): Map<YAMLMap, Map<string, Pair>> {
  const keys = new Map<YAMLMap, Map<string, Pair>>();
  const sizes = new Map<unknown, number>();
  const open = new Set<unknown>();
  const lineAt = (n: unknown) => (YAML.isNode(n) && n.range ? lc.linePos(n.range[0]).line : undefined);
  const where = (n: unknown) => {
    const line = lineAt(n);
    return line ? `${label}:${line}` : label;
  };
  const tooBig = (n: unknown) =>
    configError(
      where(n),
      YAML.isAlias(n)
        ? `the alias *${n.source} makes this file expand to more than ${YAML_LIMITS.nodes} values; a config file may not be that large: use fewer aliases`
        : `this makes the file expand to more than ${YAML_LIMITS.nodes} values (an alias counts its target each time); a config file may not be that large: use fewer aliases`,
    );

  /** The expanded size of `node` (an alias counts its target's size). */
  const size = (node: unknown, depth: number): number => {
    if (node === null || node === undefined) return 1;
    if (depth > YAML_LIMITS.depth)
      throw configError(where(node), `nested more than ${YAML_LIMITS.depth} levels deep; flatten it`);
    let target: unknown = node;
    if (YAML.isAlias(node)) {
      target = node.resolve(doc);
      if (!target)
        throw configError(where(node), `unknown alias *${node.source}; define the anchor &${node.source} before it`);
      if (open.has(target))
        throw configError(where(node), `the alias *${node.source} is inside the node it names; remove the loop`);
    }
    const known = sizes.get(target);
    if (known !== undefined) return known;
    open.add(target);
    let n = 1;
    const add = (child: unknown) => {
      n += size(child, depth + 1);
      if (n > YAML_LIMITS.nodes) throw tooBig(child);
    };
    if (YAML.isMap(target)) {
      const seen = new Map<string, Pair>();
      for (const pair of target.items) {
        const key = pair.key as YamlNode | null;
        const kv = YAML.isScalar(key) ? key.value : undefined;
        if (typeof kv !== 'string' && typeof kv !== 'number')
          throw configError(where(key ?? target), 'keys must be plain strings');
        const k = String(kv);
        if (FORBIDDEN_KEYS.has(k)) throw configError(where(key), `the key "${k}" is not allowed; rename or remove it`);
        const first = seen.get(k);
        if (first)
          throw configError(
            where(key),
            `duplicate key "${k}" (first on line ${lineAt(first.key)}); remove one of them`,
          );
        seen.set(k, pair);
        n += 1;
        add(pair.value);
      }
      keys.set(target, seen);
    } else if (YAML.isSeq(target)) {
      for (const item of target.items) add(item);
    }
    open.delete(target);
    sizes.set(target, n);
    return n;
  };
  try {
    size(doc.contents, 0);
  } catch (e) {
    if (e instanceof RangeError) throw configError(label, 'nested too deeply; flatten it');
    throw e;
  }
  return keys;
}

const { O_RDONLY, O_NONBLOCK } = fs.constants;

/**
 * The text of a config file: a regular file (a symlink to one is fine: dotfile
 * managers link config), at most YAML_LIMITS.fileBytes. O_NONBLOCK: a FIFO
 * must not hang the command.
 */
export function readConfigText(path: string): string {
  let fd: number;
  try {
    fd = fs.openSync(path, O_RDONLY | O_NONBLOCK);
  } catch (e) {
    throw configError(path, `cannot read: ${(e as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw configError(path, 'not a regular file; a config file must be a plain file');
    const tooBig = (n: number) =>
      configError(
        path,
        `${MiB(n)}, over the ${MiB(YAML_LIMITS.fileBytes)} limit for a config file; split it or remove what it does not need`,
      );
    if (st.size > YAML_LIMITS.fileBytes) throw tooBig(st.size);
    // read to EOF (the file may have grown since fstat), never past the limit
    let buf = Buffer.alloc(st.size + 1);
    let n = 0;
    for (;;) {
      if (n === buf.length) {
        if (n > YAML_LIMITS.fileBytes) throw tooBig(n);
        const bigger = Buffer.alloc(Math.min(YAML_LIMITS.fileBytes + 1, n * 2));
        buf.copy(bigger);
        buf = bigger;
      }
      const r = fs.readSync(fd, buf, n, buf.length - n, null);
      if (r <= 0) break;
      n += r;
    }
    if (n > YAML_LIMITS.fileBytes) throw tooBig(n);
    return buf.toString('utf8', 0, n);
  } catch (e) {
    if (e instanceof PimError) throw e;
    throw configError(path, `cannot read: ${(e as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
}

export async function readYamlFile(path: string): Promise<YamlFile> {
  return parseYaml(readConfigText(path), path);
}

/** "FILE:LINE" of a key path in a file (or FILE alone when the line is unknown). */
export const at = (f: YamlFile, path: string[]) => {
  const line = f.lineOf(path);
  return line ? `${f.label}:${line}` : f.label;
};
