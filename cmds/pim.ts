/**
 * pim: the umbrella. `pim <sub> args...` runs `pim-<sub> args...` the way git
 * runs git-<sub>: first from pim's own directory, then from PATH, so
 * third-party `pim-*` executables are found too. The child's exit status
 * passes through (128+signal when it was killed).
 */
import * as fs from 'node:fs';
import { writeOut } from '../lib/cli/output.ts';
import { delimiter, dirname, join } from 'node:path';
import { realpathSync } from 'node:fs';
import { EXIT } from '../lib/core/exit.ts';
import { exitStatusOf } from '../lib/core/proc.ts';


function ownDir(): string {
  try {
    return dirname(realpathSync(process.argv[1]!));
  } catch {
    return dirname(process.argv[1]!);
  }
}

function isExec(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Where `pim-<sub>` lives: pim's own dir (with or without .cjs), then PATH. */
export function findSub(sub: string): string | null {
  const own = ownDir();
  for (const c of [join(own, `pim-${sub}.cjs`), join(own, `pim-${sub}`)]) if (isExec(c)) return c;
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    if (d && isExec(join(d, `pim-${sub}`))) return join(d, `pim-${sub}`);
  }
  return null;
}

/** Every `pim-*` command: pim's own, then those on PATH. */
export function listSubs(): Map<string, string> {
  const found = new Map<string, string>();
  const scan = (d: string, strip: boolean) => {
    let names: string[] = [];
    try {
      names = fs.readdirSync(d);
    } catch {
      return;
    }
    for (const f of names.sort()) {
      const m = /^pim-([a-z0-9][a-z0-9-]*)(\.cjs)?$/.exec(f);
      if (!m || (m[2] && !strip)) continue;
      if (!found.has(m[1]!) && isExec(join(d, f))) found.set(m[1]!, join(d, f));
    }
  };
  scan(ownDir(), true);
  for (const d of (process.env.PATH ?? '').split(delimiter)) if (d) scan(d, false);
  return found;
}

function help(): void {
  const subs = listSubs();
  const w = Math.max(8, ...[...subs.keys()].map((s) => s.length));
  writeOut(
    [
      'Usage: pim <command> [args...]',
      '',
      'pim, the Product Image Manager: small executables to build and run QEMU VMs.',
      '`pim <command>` runs `pim-<command>`; `pim <command> --help` shows its help.',
      '',
      'Commands:',
      ...[...subs].map(([s, p]) => `  ${s.padEnd(w)}  ${p}`),
      '',
    ].join('\n'),
  );
}

async function run(argv: string[]): Promise<number | void> {
  const sub = argv[0];
  if (!sub || sub === '-h' || sub === '--help' || sub === 'help') {
    if (sub === 'help' && argv[1]) return run([argv[1], '--help']);
    help();
    return EXIT.OK;
  }
  if (!/^[a-z0-9][a-z0-9-]*$/.test(sub)) {
    process.stderr.write(`pim: ${JSON.stringify(sub)} is not a command name; see pim --help\n`);
    return EXIT.USAGE;
  }
  const exe = findSub(sub);
  if (!exe) {
    process.stderr.write(`pim: no command ${sub} (no pim-${sub} in pim's directory or on PATH); see pim --help\n`);
    return EXIT.USAGE;
  }
  const cmd = exe.endsWith('.cjs') ? process.execPath : exe;
  const args = exe.endsWith('.cjs') ? [exe, ...argv.slice(1)] : argv.slice(1);
  // Become the command (Node 22.15+): signals, the terminal and the exit
  // status are then the command's own, with nothing in between.
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (typeof execve === 'function') {
    try {
      execve(cmd, [cmd, ...args], process.env);
    } catch (e) {
      process.stderr.write(`pim: cannot run ${exe}: ${(e as Error).message}\n`);
      return EXIT.UNAVAILABLE;
    }
  }
  // Elsewhere: run it as a child, hand every signal we get on to it, and
  // pass its status through (128+N when a signal ended it). node:child_process
  // directly, not lib/core/run.ts: the child shares this terminal.
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  return new Promise<number>((resolve) => {
    const child = spawn(cmd, args, { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals) => {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    };
    const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const;
    for (const s of sigs) process.on(s, forward);
    child.once('error', (e) => {
      process.stderr.write(`pim: cannot run ${exe}: ${e.message}\n`);
      resolve(EXIT.UNAVAILABLE);
    });
    child.once('exit', (code, sig) => {
      for (const s of sigs) process.off(s, forward);
      resolve(code ?? exitStatusOf(sig));
    });
  });
}

/**
 * `pim complete zsh|bash|fish` prints a completion script (made by @bomb.sh/tab
 * through lib/cli.ts, like every pim-* command's). `pim complete -- WORDS...`
 * answers a completion request: the first word completes to a command name,
 * later words to whatever `pim-<sub> complete -- ...` answers. That is asked
 * only of pim's own commands: a third-party pim-* on PATH may not know
 * `complete` and would run for real; its words get file completion (`:0`).
 */
async function complete(argv: string[]): Promise<void> {
  const words = argv.slice(2);
  let sub = words[0];
  let rest = words.slice(1);
  if (sub === 'help' && rest.length > 1) [sub, rest] = ['', []]; // `pim help stop <TAB>`
  if (argv[1] === '--' && sub !== undefined && rest.length > 0) {
    const exe = sub === 'help' ? null : /^[a-z0-9][a-z0-9-]*$/.test(sub) ? findSub(sub) : null;
    let own = false;
    try {
      own = !!exe && dirname(realpathSync(exe)) === ownDir();
    } catch {
      own = false;
    }
    if (!exe || !own) {
      writeOut(sub === 'help' ? listNames(rest[rest.length - 1]!) : ':0\n');
      return;
    }
    const { spawnSync } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
    const [cmd, args] = exe.endsWith('.cjs') ? [process.execPath, [exe]] : [exe, []];
    const r = spawnSync(cmd, [...args, 'complete', '--', ...rest], { stdio: ['ignore', 'inherit', 'inherit'] });
    process.exitCode = r.status ?? EXIT.SOFTWARE;
    return;
  }
  const { main, defineCmd } = await import('../lib/cli/command.ts');
  main(
    defineCmd({
      name: 'pim',
      summary: 'the umbrella',
      usage: '<command> [args...]',
      args: { help: { type: 'boolean', alias: 'h', description: 'show help' } },
      positionals: { max: 1 },
      completePositional: (c) => {
        const own = ownDir();
        for (const [s, p] of listSubs()) c(s, dirname(p) === own ? '' : p);
      },
      run: () => EXIT.USAGE,
    }),
    argv,
  );
}

/** `pim help <TAB>`: command names in tab's answer format. */
function listNames(prefix: string): string {
  return [...listSubs().keys()].filter((s) => s.startsWith(prefix)).map((s) => `${s}\t\n`).join('') + ':4\n';
}

const argv = process.argv.slice(2);
if (argv[0] === 'complete' && (argv[1] === '--' || ['zsh', 'bash', 'fish', 'powershell'].includes(argv[1] ?? ''))) {
  complete(argv).catch((e) => {
    process.stderr.write(`pim: ${(e as Error)?.message ?? e}\n`);
    process.exitCode = EXIT.SOFTWARE;
  });
} else {
  run(argv).then((c) => (process.exitCode = c ?? 0));
}
