import { describe, it, expect } from 'vitest';
import { deepMerge, mergeExplain } from '../../lib/config/merge.ts';

describe('deepMerge', () => {
  it('recurses into objects, replaces arrays and scalars', () => {
    const base = { a: 1, o: { x: 1, y: [1, 2], z: { k: 'v' } }, l: [1, 2, 3] };
    const out = deepMerge(base, { o: { y: [9], z: { j: 'w' } }, l: [], n: null });
    expect(out).toEqual({ a: 1, o: { x: 1, y: [9], z: { k: 'v', j: 'w' } }, l: [], n: null });
    expect(base.o.y).toEqual([1, 2]); // inputs untouched
  });
  it('refuses __proto__, constructor and prototype', () => {
    const evil = JSON.parse('{"__proto__": {"polluted": 1}}');
    expect(() => deepMerge({}, evil)).toThrow(/__proto__/);
    expect(() => deepMerge({}, { a: { constructor: 1 } })).toThrow(/constructor/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
  it('an object replaces a scalar and the other way round', () => {
    expect(deepMerge({ a: 1 }, { a: { b: 2 } })).toEqual({ a: { b: 2 } });
    expect(deepMerge({ a: { b: 2 } }, { a: 'x' })).toEqual({ a: 'x' });
  });
});

describe('mergeExplain', () => {
  it('records where each leaf came from', () => {
    const { value, origins } = mergeExplain([
      { value: { a: 1, o: { x: 1, y: 2 }, l: [1] }, label: 'base' },
      { value: { o: { y: 3 }, l: [2] }, label: (p) => `user:${p.join('.')}` },
    ]);
    expect(value).toEqual({ a: 1, o: { x: 1, y: 3 }, l: [2] });
    expect(origins).toEqual({ a: 'base', 'o.x': 'base', 'o.y': 'user:o.y', l: 'user:l' });
  });
  it('a leaf replaces the origins of what it replaces: below it and above it', () => {
    const { origins } = mergeExplain([
      { value: { vars: {}, o: { x: 1, y: { z: 1 } }, l: [1] }, label: 'base' },
      { value: { vars: { a: 1 }, o: { y: 'flat' }, l: { now: 'a map' } }, label: 'user' },
    ]);
    expect(origins).toEqual({ 'vars.a': 'user', 'o.x': 'base', 'o.y': 'user', 'l.now': 'user' });
    const back = mergeExplain([
      { value: { o: { x: 1, y: 2 } }, label: 'base' },
      { value: { o: {} }, label: 'user' },
    ]);
    expect(back.origins).toEqual({ o: 'user' });
  });
  it('is linear: 40,000 leaves in each of two layers', () => {
    const big = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
    const calls: string[] = [];
    const { value, origins } = mergeExplain([
      { value: { vars: big(40_000) }, label: 'base' },
      { value: { vars: big(40_000) }, label: (p) => (calls.push(p.join('.')), 'user') },
    ]);
    expect(Object.keys(value.vars as object)).toHaveLength(40_000);
    expect(Object.keys(origins)).toHaveLength(40_000);
    expect(new Set(Object.values(origins))).toEqual(new Set(['user']));
    expect(calls).toHaveLength(40_000); // one label per leaf
  }, 10_000);
});
