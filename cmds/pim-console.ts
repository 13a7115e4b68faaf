/**
 * pim-console: attach to a VM's serial console. On a terminal it is raw and
 * two-way; Ctrl-] detaches. Without a terminal it refuses, unless --ro
 * (read-only) is given: then it streams the console to stdout, optionally
 * starting with what was already logged (--replay) and stopping when a line
 * matches --until.
 */
import { defineCmd, main } from '../lib/cli.ts';
import { completeVmNames } from '../lib/complete.ts';
import { EXIT, PimError } from '../lib/exit.ts';

const DETACH = 0x1d; // Ctrl-]

export const cmd = defineCmd({
  name: 'pim-console',
  summary: "Attach to a VM's serial console (Ctrl-] detaches).",
  usage: 'NAME [--ro] [--replay] [--until REGEX] [--timeout S]',
  description: `
Two-way and raw on a terminal. With --ro the console is only read and copied to stdout,
which works without a terminal (scripts, tests). --replay first prints what the console
already wrote (from the VM's log). --until stops with exit 0 once the output matches
REGEX; --timeout bounds the wait (exit 75).`,
  examples: ['pim-console dev', "pim-console dev --ro --replay --until 'login:' --timeout 60"],
  args: {
    ro: { type: 'boolean', description: 'read-only: stream the console to stdout' },
    replay: { type: 'boolean', description: 'first print what the console already wrote' },
    until: { type: 'string', description: 'exit 0 once the output matches this regular expression', valueHint: 'REGEX' },
    timeout: { type: 'string', description: 'give up after S seconds (exit 75)', valueHint: 'S' },
  },
  positionals: { min: 1, max: 1 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { runningVm, timeoutMs } = await import('../lib/connect.ts');
    const { connectUnix } = await import('../lib/sock.ts');
    const fs = await import('node:fs');
    const name = positionals[0]!;
    const interactive = !args.ro;
    if (interactive && !process.stdin.isTTY) {
      throw new PimError(EXIT.USAGE, 'stdin is not a terminal; use --ro to read the console without typing into it');
    }
    let until: RegExp | undefined;
    try {
      until = args.until ? new RegExp(args.until) : undefined;
    } catch (e) {
      throw new PimError(EXIT.USAGE, `--until is not a valid regular expression: ${(e as Error).message}`);
    }
    const vm = await runningVm(name);
    if (!fs.existsSync(vm.files.serial)) throw new PimError(EXIT.UNAVAILABLE, `${name} has no serial socket (was it started with --console?)`);
    const sock = await connectUnix(vm.files.serial, 5_000, 'serial console');
    let seen = '';
    return new Promise<number>((resolve) => {
      let finished = false;
      const finish = (code: number) => {
        if (finished) return;
        finished = true;
        if (interactive) {
          process.stdin.setRawMode(false);
          process.stdin.pause();
          process.stderr.write('\r\n[detached]\r\n');
        }
        sock.destroy();
        resolve(code);
      };
      const check = (text: string) => {
        if (!until) return;
        seen = (seen + text).slice(-65536);
        if (until.test(seen)) finish(EXIT.OK);
      };
      if (args.replay) {
        try {
          const old = fs.readFileSync(vm.files.log, 'utf8');
          process.stdout.write(old);
          check(old);
        } catch {
          /* no log yet */
        }
      }
      if (args.timeout) {
        const ms = timeoutMs(args.timeout, 0);
        setTimeout(() => {
          process.stderr.write(`pim-console: ${until ? `no match for ${until} ` : ''}within ${args.timeout} s\n`);
          finish(until ? EXIT.TEMPFAIL : EXIT.OK);
        }, ms).unref();
      }
      sock.on('data', (d: Buffer) => {
        if (finished) return;
        process.stdout.write(d);
        check(d.toString('utf8'));
      });
      sock.on('close', () => {
        if (!finished) process.stderr.write(`pim-console: ${name}'s console closed (the VM stopped)\n`);
        finish(until ? EXIT.UNAVAILABLE : EXIT.OK);
      });
      sock.on('error', () => undefined);
      if (interactive) {
        process.stderr.write(`Connected to ${name}'s serial console. Ctrl-] detaches.\r\n`);
        process.stdin.setRawMode(true);
        process.stdin.resume();
        process.stdin.on('data', (d: Buffer) => {
          const i = d.indexOf(DETACH);
          if (i >= 0) {
            if (i > 0) sock.write(d.subarray(0, i));
            finish(EXIT.OK);
          } else sock.write(d);
        });
      }
    });
  },
});

main(cmd);
