// Bundles each cmds/*.ts into one CommonJS file, dist/<name>.cjs,
// so every executable starts close to bare `node`. Measured (bench/startup.sh):
// one CJS file per executable loads faster than ESM, and much faster than
// ESM split into shared chunks (each module file costs ~1-2 ms to load).
// Modules reached only through `await import()` are bundled but not run
// until that import happens, so heavy code still costs nothing at start-up. PIM_NODE sets the interpreter line
// (default: /usr/bin/env node); install.sh uses it when it brings its own Node.
import { build } from 'esbuild';
import { readdirSync, chmodSync, rmSync, mkdirSync, symlinkSync, renameSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

// `import text from './file.sh?raw'`: the file's text, bundled (as Vite and so
// vitest read it; lib/kboot/raw.d.ts types it for tsc). pim's guest /init is such a file.
const raw = {
  name: 'raw',
  setup(b) {
    b.onResolve({ filter: /\?raw$/ }, (a) => ({ path: resolve(dirname(a.importer), a.path.slice(0, -4)), namespace: 'raw' }));
    b.onLoad({ filter: /.*/, namespace: 'raw' }, (a) => ({ contents: readFileSync(a.path, 'utf8'), loader: 'text', watchFiles: [a.path] }));
  },
};

const entries = readdirSync('cmds').filter((f) => f.endsWith('.ts')).map((f) => `cmds/${f}`);
// Build beside dist/ and swap it in, so that a running test never sees a half-built tree.
const out = `dist.tmp-${process.pid}`;
rmSync(out, { recursive: true, force: true });
const node = process.env.PIM_NODE || '/usr/bin/env node';
await build({
  entryPoints: entries,
  outdir: out,
  outExtension: { '.js': '.cjs' },
  entryNames: '[name]',
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  external: ['ssh2', 'cpu-features'],
  banner: { js: `#!${node}` },
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [raw],
});
// dist/bin/<name> -> ../<name>.cjs: a directory to put on PATH (tests, a checkout)
mkdirSync(`${out}/bin`);
for (const e of entries) {
  const name = e.slice(5, -3);
  chmodSync(`${out}/${name}.cjs`, 0o755);
  symlinkSync(`../${name}.cjs`, `${out}/bin/${name}`);
}
const old = `dist.old-${process.pid}`;
try {
  renameSync('dist', old);
} catch {
  /* first build */
}
renameSync(out, 'dist');
rmSync(old, { recursive: true, force: true });
