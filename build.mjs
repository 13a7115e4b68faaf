// Bundles each cmds/*.ts into dist/<name>.mjs (shared code split into chunks,
// heavy modules only loaded by `await import()` where they are used), so every
// executable starts close to bare `node`. PIM_NODE sets the interpreter line
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
  outExtension: { '.js': '.mjs' },
  entryNames: '[name]',
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['ssh2', 'cpu-features'],
  banner: {
    js: `#!${node}\nimport { createRequire as __pimRequire } from 'node:module'; const require = __pimRequire(import.meta.url);`,
  },
  legalComments: 'none',
  logLevel: 'warning',
});
// dist/bin/<name> -> ../<name>.mjs: a directory to put on PATH (tests, a checkout)
mkdirSync(`${out}/bin`);
for (const e of entries) {
  const name = e.slice(5, -3);
  chmodSync(`${out}/${name}.mjs`, 0o755);
  symlinkSync(`../${name}.mjs`, `${out}/bin/${name}`);
}
const old = `dist.old-${process.pid}`;
try {
  renameSync('dist', old);
} catch {
  /* first build */
}
renameSync(out, 'dist');
rmSync(old, { recursive: true, force: true });
