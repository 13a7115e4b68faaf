// Bundles each cmds/*.ts into one CommonJS file, dist/<name>.cjs,
// so every executable starts close to bare `node`. Measured (bench/startup.sh):
// one CJS file per executable loads faster than ESM, and much faster than
// ESM split into shared chunks (each module file costs ~1-2 ms to load).
// Modules reached only through `await import()` are bundled but not run
// until that import happens; V8 still parses them at every start (about 2 ms
// per 100 kB here), so the big packages and the completion code are files
// of their own, loaded when needed (see VENDOR below). PIM_NODE sets the
// interpreter line (default: /usr/bin/env node); install.sh uses it when it
// brings its own Node.
//
// A cmds/*.ts file only defines its command (citty's defineCommand, the
// default export); the bundle's entry is made here and runs it:
// `main(cmd)` from lib/cli/command.ts. So the definitions can be imported
// without running anything: by tests, and below, to write dist/commands.json
// (name -> one-line summary) for `pim --help`.
//
// Then every executable's `complete bash|zsh|fish` runs once: pim patches
// tab's bash script and checks that every patch applied, so a tab release
// that changes the script fails the build here instead of bringing back the
// eval hole silently.
import { build } from 'esbuild';
import {
  readdirSync,
  chmodSync,
  rmSync,
  mkdirSync,
  symlinkSync,
  renameSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';

// `import text from './file.sh?raw'`: the file's text, bundled (as Vite and so
// vitest read it; lib/kboot/raw.d.ts types it for tsc). pim's guest /init is such a file.
const raw = {
  name: 'raw',
  setup(b) {
    b.onResolve({ filter: /\?raw$/ }, (a) => ({
      path: resolve(dirname(a.importer), a.path.slice(0, -4)),
      namespace: 'raw',
    }));
    b.onLoad({ filter: /.*/, namespace: 'raw' }, (a) => ({
      contents: readFileSync(a.path, 'utf8'),
      loader: 'text',
      watchFiles: [a.path],
    }));
  },
};

const names = readdirSync('cmds')
  .filter((f) => f.endsWith('.ts'))
  .map((f) => f.slice(0, -3))
  .sort();

// `pim-entry:NAME`: the executable NAME, which runs the command cmds/NAME.ts defines
const entry = {
  name: 'pim-entry',
  setup(b) {
    b.onResolve({ filter: /^pim-entry:/ }, (a) => ({
      path: a.path.slice('pim-entry:'.length),
      namespace: 'pim-entry',
    }));
    b.onLoad({ filter: /.*/, namespace: 'pim-entry' }, (a) => ({
      contents: `import cmd from './cmds/${a.path}.ts';\nimport { main } from './lib/cli/command.ts';\nmain(cmd);\n`,
      resolveDir: process.cwd(),
      loader: 'ts',
    }));
  },
};

// Build beside dist/ and swap it in, so that a running test never sees a half-built tree.
const out = `dist.tmp-${process.pid}`;
rmSync(out, { recursive: true, force: true });
let swapped = false;
process.on('exit', () => swapped || rmSync(out, { recursive: true, force: true })); // a failed build leaves nothing
const node = process.env.PIM_NODE || '/usr/bin/env node';
// lib/cli/complete.ts (and @bomb.sh/tab with it) is one file of its own,
// dist/complete.cjs, that every executable loads only for `complete`:
// bundled into each, its 45 kB would be parsed at every start (about 1 ms).
const completeTs = resolve('lib/cli/complete.ts');
const shared = {
  name: 'shared-complete',
  setup(b) {
    b.onResolve({ filter: /\/complete\.ts$/ }, (a) =>
      resolve(a.resolveDir, a.path) === completeTs ? { path: './complete.cjs', external: true } : undefined,
    );
  },
};
// The same for the big packages that lib/ loads only with `await import()`:
// execa (with its dependencies about 200 kB, in every command that may run
// a child), yaml, undici (1.4 MB, in pim-iso and pim-build) and tar
// (node-tar, 140 kB, in pim-cp's tar fallback). Bundled in,
// they were parsed at every start although they run only when needed; as
// dist/vendor/NAME.cjs they cost nothing until then.
const VENDOR = ['execa', 'yaml', 'undici', 'tar'];
const vendor = {
  name: 'vendor',
  setup(b) {
    b.onResolve({ filter: new RegExp(`^(${VENDOR.join('|')})$`) }, (a) => ({
      path: `./vendor/${a.path}.cjs`,
      external: true,
    }));
  },
};
// Before anything else in each executable: the Node version. pim needs 22 (the
// engines field); on Node 20 the bundle parses, and then fails later with nonsense
// (pim-iso download: "Cannot read properties of undefined (reading 'bind')", from
// undici). Plain old syntax, nothing loaded but node:path on the failing side:
// one comparison at every start.
const NODE_MIN = 22;
const nodeCheck =
  `if (+process.versions.node.split('.')[0] < ${NODE_MIN}) {` +
  ` process.stderr.write(require('path').basename(process.argv[1] || 'pim').replace(/\\.cjs$/, '') + ': pim needs Node ${NODE_MIN} or newer, and this is Node ' + process.version + ' (' + process.execPath + '); install Node ${NODE_MIN} or newer (https://nodejs.org, or nvm install ${NODE_MIN}) and put it first on PATH\\n');` +
  ` process.exit(69); }`;
const common = {
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  external: ['ssh2', 'cpu-features'],
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [raw, entry],
  // `await import()` of a package kept outside the bundle (dist/vendor/*.cjs, ssh2) made
  // into require(): Node's import() of a CommonJS file starts its ESM loader and scans
  // the whole file for its exports (cjs-module-lexer), 70 ms of CPU for yaml.cjs against
  // 15 ms for require() (measured here), on every command that reads a config file
  supported: { 'dynamic-import': false },
};
await build({
  ...common,
  plugins: [...common.plugins, shared, vendor],
  entryPoints: names.map((n) => ({ in: `pim-entry:${n}`, out: n })),
  outdir: out,
  outExtension: { '.js': '.cjs' },
  banner: { js: `#!${node}\n${nodeCheck}` },
});
await build({
  ...common,
  plugins: [...common.plugins, vendor],
  entryPoints: [completeTs],
  outfile: `${out}/complete.cjs`,
});
for (const v of VENDOR) {
  // named re-exports, so that esbuild annotates them and `await import()` of
  // the .cjs file sees them (an `export *` of a CommonJS package it cannot)
  const exported = Object.keys(await import(v)).filter((k) => /^[A-Za-z_$][\w$]*$/.test(k));
  await build({
    ...common,
    stdin: { contents: `export { ${exported.join(', ')} } from '${v}';`, resolveDir: process.cwd() },
    outfile: `${out}/vendor/${v}.cjs`,
  });
}

// dist/commands.json: every command's meta.description, read from the
// definitions (one throw-away bundle of them all; nothing runs but their
// module code)
const defs = `${out}/.defs.cjs`;
await build({
  ...common,
  plugins: [...common.plugins, shared, vendor],
  stdin: {
    contents:
      names.map((n, i) => `import c${i} from './cmds/${n}.ts';`).join('\n') +
      `\nexport default { ${names.map((n, i) => `${JSON.stringify(n)}: c${i}`).join(', ')} };\n` +
      `export { manPage, markdownPage, markdownIndex, manualText } from './lib/cli/manpage.ts';\n`,
    resolveDir: process.cwd(),
    loader: 'ts',
  },
  outfile: defs,
});
const manifest = {};
const defsMod = createRequire(import.meta.url)(resolve(defs));
for (const [n, c] of Object.entries(defsMod.default)) {
  const meta = typeof c.meta === 'function' ? await c.meta() : await c.meta;
  if (meta?.name !== n || !meta.description)
    throw new Error(`build: cmds/${n}.ts must export default defineCommand({ meta: { name: '${n}', description } })`);
  manifest[n] = meta.description;
}
writeFileSync(`${out}/commands.json`, JSON.stringify(manifest, null, 2) + '\n');

// The manuals, from the same definitions (lib/cli/manpage.ts): dist/man/man1/NAME.1,
// which package.json's "man" field and install.sh install, and docs/NAME.md, the
// same page for readers on the web (kept in git; rewritten only when it changed).
mkdirSync(`${out}/man/man1`, { recursive: true });
mkdirSync('docs', { recursive: true });
const writeIfChanged = (f, text) => {
  let old = null;
  try {
    old = readFileSync(f, 'utf8');
  } catch {
    /* new */
  }
  if (old !== text) writeFileSync(f, text);
};
for (const [n, c] of Object.entries(defsMod.default)) {
  const manual = defsMod.manualText(n);
  writeFileSync(`${out}/man/man1/${n}.1`, await defsMod.manPage(c, { commands: manifest, manual }));
  writeIfChanged(`docs/${n}.md`, await defsMod.markdownPage(c, { commands: manifest, manual }));
}
writeIfChanged('docs/README.md', defsMod.markdownIndex(manifest));
// npm installs the pages package.json's "man" names (it does not read directories.man
// for a linked install): every executable's page must be listed there
const pkgMan = JSON.parse(readFileSync('package.json', 'utf8')).man ?? [];
const unlisted = names.filter((n) => !pkgMan.includes(`dist/man/man1/${n}.1`));
if (unlisted.length)
  throw new Error(`build: package.json "man" must list ${unlisted.map((n) => `dist/man/man1/${n}.1`).join(', ')}`);
rmSync(defs);

// dist/bin/<name> -> ../<name>.cjs: a directory to put on PATH (tests, a checkout)
mkdirSync(`${out}/bin`);
for (const name of names) {
  chmodSync(`${out}/${name}.cjs`, 0o755);
  symlinkSync(`../${name}.cjs`, `${out}/bin/${name}`);
}

// every executable's completion scripts, once: a tab patch that no longer
// applies makes `complete bash` fail, and the build with it
const run = promisify(execFile);
const failed = [];
const jobs = names.flatMap((n) => ['bash', 'zsh', 'fish'].map((sh) => [n, sh]));
await Promise.all(
  Array.from({ length: 4 }, async () => {
    for (let j = jobs.shift(); j; j = jobs.shift()) {
      const [n, sh] = j;
      try {
        const { stdout, stderr } = await run(process.execPath, [`${out}/${n}.cjs`, 'complete', sh]);
        if (stderr || !stdout.includes(`${n} complete --`))
          failed.push(`${n} complete ${sh}: ${stderr.trim() || 'no completion script'}`);
      } catch (e) {
        failed.push(`${n} complete ${sh}: ${(e.stderr || e.message).trim()}`);
      }
    }
  }),
);
if (failed.length) {
  console.error(`build: the completion scripts failed; dist/ is left as it was:\n  ${failed.join('\n  ')}`);
  process.exit(1);
}

const old = `dist.old-${process.pid}`;
try {
  renameSync('dist', old);
} catch {
  /* first build */
}
renameSync(out, 'dist');
swapped = true;
rmSync(old, { recursive: true, force: true });
