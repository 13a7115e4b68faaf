// Bundles each cmds/*.ts into dist/<name>.mjs (shared code split into chunks,
// heavy modules only loaded by `await import()` where they are used), so every
// executable starts close to bare `node`. PIM_NODE sets the interpreter line
// (default: /usr/bin/env node); install.sh uses it when it brings its own Node.
import { build } from 'esbuild';
import { readdirSync, chmodSync, rmSync, mkdirSync, symlinkSync } from 'node:fs';

const entries = readdirSync('cmds').filter((f) => f.endsWith('.ts')).map((f) => `cmds/${f}`);
rmSync('dist', { recursive: true, force: true });
const node = process.env.PIM_NODE || '/usr/bin/env node';
await build({
  entryPoints: entries,
  outdir: 'dist',
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
mkdirSync('dist/bin');
for (const e of entries) {
  const name = e.slice(5, -3);
  chmodSync(`dist/${name}.mjs`, 0o755);
  symlinkSync(`../${name}.mjs`, `dist/bin/${name}`);
}
