// Bundles each cmds/*.ts into one CommonJS file, dist/<name>.cjs,
// so every executable starts close to bare `node`. Measured (bench/startup.sh):
// one CJS file per executable loads faster than ESM, and much faster than
// ESM split into shared chunks (each module file costs ~1-2 ms to load).
// Modules reached only through `await import()` are bundled but not run
// until that import happens, so heavy code still costs nothing at start-up. PIM_NODE sets the interpreter line
// (default: /usr/bin/env node); install.sh uses it when it brings its own Node.
import { build } from 'esbuild';
import { readdirSync, chmodSync, rmSync, mkdirSync, symlinkSync, renameSync } from 'node:fs';

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
