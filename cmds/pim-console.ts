/**
 * pim-console: attach to a VM's serial console. On a terminal it is raw and
 * two-way; Ctrl-] detaches. Without a terminal it refuses, unless --ro
 * (read-only) is given: then it streams the console to stdout, optionally
 * starting with what was already logged (--replay) and stopping when a line
 * matches --until.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

const DETACH = 0x1d; // Ctrl-]

export default defineCommand({
  meta: {
    name: 'pim-console',
    version: VERSION,
    description: "Attach to a VM's serial console (Ctrl-] detaches).",
    details: `
Two-way and raw on a terminal. With --ro the console is only read and copied to stdout,
which works without a terminal (scripts, tests) and while someone is attached: it follows
the VM's log, where QEMU copies the console, and ends when the VM stops. --replay first prints what the console
already wrote (from the VM's log). --until stops with exit 0 once the output matches
REGEX; --timeout bounds the wait (exit 75).`,
    examples: ['pim-console dev', "pim-console dev --ro --replay --until 'login:' --timeout 60"],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    ro: { type: 'boolean', description: 'read-only: stream the console to stdout' },
    replay: { type: 'boolean', description: 'first print what the console already wrote' },
    until: { type: 'string', description: 'exit 0 once the output matches this regular expression', valueHint: 'REGEX' },
    timeout: { type: 'string', description: 'give up after S seconds (exit 75)', valueHint: 'S' },
  },
  async run({ args }) {
    const { runningVm } = await import('../lib/vm/connect.ts');
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const { connectUnix } = await import('../lib/core/sock.ts');
    const fs = await import('node:fs');
    const name = args.name;
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
    const waitMs = args.timeout !== undefined ? parseTimeout(args.timeout, 0) : null;
    const vm = await runningVm(name);
    if (!fs.existsSync(vm.files.serial)) throw new PimError(EXIT.UNAVAILABLE, `${name} has no serial socket (was it started with --console?)`);
    // Two-way: the serial socket (QEMU serves one client at a time). Read-only:
    // follow the log QEMU copies the console into, which never misses a byte
    // between --replay and what comes next, and leaves the socket free for a
    // person attached at the same time.
    const sock = interactive ? await connectUnix(vm.files.serial, 5_000, 'serial console') : null;
    const { stdout } = await import('../lib/cli/output.ts');
    const out = stdout();
    let seen = '';
    // read-only: the log, opened as a regular file only (never blocking on a FIFO put there)
    let roFd: number | null = null;
    if (!interactive) {
      const { openRegular } = await import('../lib/core/fs.ts');
      roFd = openRegular(vm.files.log);
      if (roFd === null) throw new PimError(EXIT.UNAVAILABLE, `${name} has no console log ${vm.files.log}; see pim-ps`);
    }
    return new Promise<number>((resolve) => {
      let finished = false;
      let stopFollowing = () => {};
      const finish = (code: number) => {
        if (finished) return;
        finished = true;
        if (interactive) {
          process.stdin.setRawMode(false);
          process.stdin.pause();
          process.stderr.write('\r\n[detached]\r\n');
        }
        sock?.destroy();
        stopFollowing();
        resolve(code);
      };
      const output = (d: Buffer) => {
        if (finished) return;
        out.write(d);
        if (!until) return;
        seen = (seen + d.toString('utf8')).slice(-65536);
        if (until.test(seen)) finish(EXIT.OK);
      };
      const stopped = () => {
        if (!finished) process.stderr.write(`pim-console: ${name}'s console closed (the VM stopped)\n`);
        finish(until ? EXIT.UNAVAILABLE : EXIT.OK);
      };
      if (waitMs !== null) {
        setTimeout(() => {
          process.stderr.write(`pim-console: ${until ? `no match for ${until} ` : ''}within ${args.timeout} s\n`);
          finish(until ? EXIT.TEMPFAIL : EXIT.OK);
        }, waitMs).unref();
      }
      if (sock) {
        if (args.replay) {
          try {
            output(fs.readFileSync(vm.files.log));
          } catch {
            /* no log yet */
          }
        }
        sock.on('data', output);
        sock.on('close', stopped);
        sock.on('error', () => undefined);
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
        return;
      }
      // read-only: one watcher on the runtime dir sees the log grow and the
      // pidfile go (QEMU removes it when it exits)
      const { basename, dirname } = process.getBuiltinModule('node:path') as typeof import('node:path');
      const fd = roFd!;
      let pos = args.replay ? 0 : fs.fstatSync(fd).size;
      const buf = Buffer.alloc(65536);
      const pump = () => {
        if (fs.fstatSync(fd).size < pos) pos = 0; // the log was started anew
        let n: number;
        while (!finished && (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0) {
          pos += n;
          output(Buffer.from(buf.subarray(0, n)));
        }
      };
      const logName = basename(vm.files.log);
      const pidName = basename(vm.files.pid);
      const watcher = fs.watch(dirname(vm.files.log), (_ev, file) => {
        if (file === logName || file === null) pump();
        if ((file === pidName || file === null) && !fs.existsSync(vm.files.pid)) {
          pump();
          stopped();
        }
      });
      stopFollowing = () => {
        watcher.close();
        fs.closeSync(fd);
      };
      pump();
      if (!fs.existsSync(vm.files.pid)) stopped();
    });
  },
});

