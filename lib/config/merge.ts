/**
 * Deep merge for config entries: an entry merges over `default`. Objects
 * recurse, arrays (and every other value) replace, and the keys `__proto__`,
 * `constructor` and `prototype` are refused so a config file can never reach
 * Object.prototype. The result is a fresh tree; inputs are not changed.
 *
 * mergeExplain does the same and also records, for every leaf, where its
 * value came from (a label such as "builtin" or "profiles.d/dev.yml:4").
 */
import { EXIT, PimError } from '../core/exit.ts';

export type Plain = Record<string, unknown>;

export const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export const isPlainObject = (v: unknown): v is Plain =>
  typeof v === 'object' &&
  v !== null &&
  !Array.isArray(v) &&
  (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);

export function checkKey(key: string, where = 'config'): void {
  if (FORBIDDEN_KEYS.has(key))
    throw new PimError(EXIT.CONFIG, `${where}: the key "${key}" is not allowed; rename or remove it`);
}

function clone(v: unknown, where: string): unknown {
  if (Array.isArray(v)) return v.map((x) => clone(x, where));
  if (isPlainObject(v)) {
    const out: Plain = {};
    for (const k of Object.keys(v)) {
      checkKey(k, where);
      out[k] = clone(v[k], where);
    }
    return out;
  }
  return v;
}

/** Merge `over` onto `base`: objects recurse, arrays and scalars replace. */
export function deepMerge<T = Plain>(base: unknown, over: unknown, where = 'config'): T {
  if (isPlainObject(base) && isPlainObject(over)) {
    const out = clone(base, where) as Plain;
    for (const k of Object.keys(over)) {
      checkKey(k, where);
      out[k] =
        k in out && isPlainObject(out[k]) && isPlainObject(over[k])
          ? deepMerge(out[k], over[k], where)
          : clone(over[k], where);
    }
    return out as T;
  }
  return (over === undefined ? clone(base, where) : clone(over, where)) as T;
}

/** Origins: dotted key path -> label, for leaves (scalars and arrays). */
export type Origins = Record<string, string>;

/** Origin label of every leaf of `v`, all set to `label` (or looked up by `labelOf`). */
export function leafOrigins(
  v: unknown,
  label: string | ((path: string[]) => string),
  prefix: string[] = [],
  out: Origins = {},
): Origins {
  if (isPlainObject(v) && (Object.keys(v).length > 0 || prefix.length === 0)) {
    for (const k of Object.keys(v)) leafOrigins(v[k], label, [...prefix, k], out);
  } else {
    out[prefix.join('.')] = typeof label === 'string' ? label : label(prefix);
  }
  return out;
}

/** A trie of origins: a leaf has a label; a deeper leaf replaces a shallower one and the other way round. */
interface OriginNode {
  label?: string;
  kids: Map<string, OriginNode>;
}

/** The leaves of `v` as paths, each with its label (what leafOrigins records, without joining). */
function eachLeaf(v: unknown, prefix: string[], fn: (path: string[]) => void): void {
  if (isPlainObject(v) && (Object.keys(v).length > 0 || prefix.length === 0)) {
    for (const k of Object.keys(v)) eachLeaf(v[k], [...prefix, k], fn);
  } else fn(prefix);
}

/**
 * Merge layers in order; returns the value and the origin of each leaf. A
 * layer's leaf replaces the origins of what it replaces: the same path, the
 * leaves below it, and a leaf above it. Linear in the number of leaves (a
 * trie, not a scan of every origin for every leaf).
 */
export function mergeExplain(
  layers: Array<{ value: unknown; label: string | ((path: string[]) => string) }>,
  where = 'config',
): { value: Plain; origins: Origins } {
  let value: Plain = {};
  const root: OriginNode = { kids: new Map() };
  for (const layer of layers) {
    value = deepMerge(value, layer.value, where);
    eachLeaf(layer.value, [], (path) => {
      let node = root;
      for (const seg of path) {
        delete node.label; // a leaf above this one is replaced
        let next = node.kids.get(seg);
        if (!next) node.kids.set(seg, (next = { kids: new Map() }));
        node = next;
      }
      node.kids.clear(); // and so are the leaves below it
      node.label = typeof layer.label === 'string' ? layer.label : layer.label(path);
    });
  }
  const origins: Origins = {};
  const flatten = (node: OriginNode, path: string[]) => {
    if (node.label !== undefined) origins[path.join('.')] = node.label;
    for (const [k, kid] of node.kids) flatten(kid, [...path, k]);
  };
  flatten(root, []);
  return { value, origins };
}
