/**
 * virsh, driven through argv and batched: one virsh process (one connection)
 * runs several commands given as one argv word, `cmd1 ARGS; cmd2 ARGS`,
 * which virsh splits and quotes itself (no shell is involved). Each command
 * is followed by `echo MARK` and `echo --err MARK`, so its output and its
 * errors are told apart from the next one's: virsh goes on after a command
 * that fails. A connection over qemu+ssh:// costs about 0.35 s, so a deploy
 * asks everything it needs to know in one batch, and changes things in as
 * few as it can.
 *
 * The URI's ssh part (user, host, port, keyfile, no_verify) is also how the
 * far side's files are hashed (lib/deploy/libvirt.ts): `ssh HOST sha256sum`.
 */
import { randomBytes } from 'node:crypto';
import { EXIT, PimError } from '../core/exit.ts';
import { run, type RunOpts } from '../core/run.ts';

const PLAIN = /^[A-Za-z0-9_.,:/=@+%-]+$/;

/** One word for virsh's own parser: bare when plain, else in single quotes ('\'' for a quote). */
export function quoteVirsh(word: string): string {
  if (PLAIN.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

export interface VirshResult {
  ok: boolean;
  out: string;
  /** the command's error lines, "error: " taken off */
  err: string;
}

export interface ParsedUri {
  uri: string;
  transport: 'local' | 'ssh' | 'other';
  user: string | null;
  host: string | null;
  port: number | null;
  params: URLSearchParams;
}

/** The parts of a libvirt URI that pim needs: qemu:///system, qemu+ssh://root@kvm1:22/system?keyfile=... */
export function parseUri(uri: string): ParsedUri {
  const m = /^([a-z0-9]+)(?:\+([a-z0-9]+))?:\/\/(?:([^@/]*)@)?([^/:?]*)(?::(\d+))?(\/[^?]*)?(?:\?(.*))?$/i.exec(uri);
  if (!m)
    throw new PimError(
      EXIT.CONFIG,
      `${JSON.stringify(uri)} is not a libvirt URI such as qemu:///system or qemu+ssh://root@kvm1/system`,
    );
  const [, , transport, user, host, port, , query] = m;
  const t = !transport || transport === 'unix' ? (host ? 'other' : 'local') : transport === 'ssh' ? 'ssh' : 'other';
  return {
    uri,
    transport: t,
    user: user || null,
    host: host || null,
    port: port ? Number(port) : null,
    params: new URLSearchParams(query ?? ''),
  };
}

/** ssh's argv (before the remote command) to the host of a qemu+ssh:// URI, as libvirt itself reaches it. */
export function sshArgv(u: ParsedUri): string[] {
  if (u.transport !== 'ssh' || !u.host) throw new PimError(EXIT.SOFTWARE, `${u.uri} is not a qemu+ssh:// URI`);
  const a = ['-o', 'BatchMode=yes', '-T', '-e', 'none'];
  if (u.port) a.push('-p', String(u.port));
  if (u.user) a.push('-l', u.user);
  const key = u.params.get('keyfile');
  if (key) a.push('-i', key);
  if (u.params.get('no_verify') === '1') a.push('-o', 'StrictHostKeyChecking=no');
  a.push('--', u.host);
  return a;
}

/** A word for the remote user's shell, which ssh hands the command to as one string. */
export const quoteSh = (w: string) => (/^[A-Za-z0-9_./=@:-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`);

export class Virsh {
  readonly parsed: ParsedUri;
  /** how many virsh processes (connections) this has started: tests and bench read it with PIM_LOG=debug */
  calls = 0;
  readonly uri: string;
  constructor(uri: string) {
    this.uri = uri;
    this.parsed = parseUri(uri);
  }

  /** Run `cmds` in one virsh process; each result says whether its command failed. */
  async batch(cmds: readonly (readonly string[])[], opts: RunOpts = {}): Promise<VirshResult[]> {
    if (!cmds.length) return [];
    const mark = `@@pim-${randomBytes(6).toString('hex')}-`;
    const script = cmds
      .map((c, i) => `${c.map(quoteVirsh).join(' ')} ; echo ${mark}${i}@@ ; echo --err ${mark}${i}@@`)
      .join(' ; ');
    this.calls++;
    const { log } = await import('../core/log.ts');
    log.debug(`virsh -c ${this.uri}: ${cmds.map((c) => c[0]).join(', ')}`);
    const r = await run('virsh', ['-q', '-c', this.uri, script], { ...opts, hint: 'install libvirt-clients (virsh)' });
    const outs = r.stdout.split(new RegExp(`${reEscape(mark)}\\d+@@`));
    const errs = r.stderr.split(new RegExp(`error: ${reEscape(mark)}\\d+@@\\n?`));
    if (outs.length < cmds.length + 1 || errs.length < cmds.length + 1) {
      const last =
        r.stderr.trim().split('\n').filter(Boolean).pop() ?? (r.timedOut ? 'timed out' : `exit status ${r.code}`);
      const down = /failed to connect|no valid connection|Cannot recv data|End of file/i.test(r.stderr);
      throw new PimError(
        down ? EXIT.UNAVAILABLE : r.timedOut ? EXIT.TEMPFAIL : EXIT.SOFTWARE,
        `virsh -c ${this.uri}: ${last.replace(/^error: /, '')}`,
      );
    }
    return cmds.map((_, i) => {
      const err = errs[i]!.split('\n')
        .filter((l) => l.startsWith('error: '))
        .map((l) => l.slice(7))
        .join('\n');
      return { ok: !err, out: outs[i]!.replace(/^\n/, ''), err };
    });
  }

  /** Run `cmds` in one virsh process and require every one to succeed (`code` and the first error otherwise). */
  async must(
    cmds: readonly (readonly string[])[],
    what: string,
    code: PimError['code'] = EXIT.SOFTWARE,
    opts: RunOpts = {},
  ): Promise<VirshResult[]> {
    const res = await this.batch(cmds, opts);
    const bad = res.findIndex((r) => !r.ok);
    if (bad >= 0) throw new PimError(code, `${what}: ${cmds[bad]![0]}: ${res[bad]!.err.split('\n').pop()}`);
    return res;
  }
}

const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
