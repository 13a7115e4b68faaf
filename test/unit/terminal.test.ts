/**
 * What reaches the user's terminal (issue 19): a guest's bytes made safe
 * (only text, newlines, tabs and colour pass; other control bytes are shown
 * escaped), the cut of `pim-console --until` at the matching line, and the
 * status line that is cleared before any other stderr line.
 */
import { describe, expect, it } from 'vitest';
import { PassThrough } from 'node:stream';
import { TermFilter, termSafe, guestSink } from '../../lib/core/termsafe.ts';
import { untilCut } from '../../lib/vm/console.ts';
import { StatusBoard, StatusLine } from '../../lib/cli/status.ts';
import { formatRecords, humanBytes, humanDuration } from '../../lib/cli/output.ts';

describe('termSafe: a guest cannot drive the terminal', () => {
  it('passes text, newlines, CRLF, tabs, UTF-8 and SGR colour as they are', () => {
    const s = 'plain\ttab\r\nnext line é ✓\n\x1b[1;32mgreen\x1b[0m \x1b[m\x1b[38:5:208m';
    expect(termSafe(s)).toBe(s);
  });
  it('shows a cursor-position query and other CSI sequences escaped', () => {
    expect(termSafe('a\x1b[6nb')).toBe('a^[[6nb');
    expect(termSafe('\x1b[2J\x1b[H\x1b[?1049h')).toBe('^[[2J^[[H^[[?1049h');
  });
  it('shows OSC (title, clipboard), DCS, BEL, backspace, DEL, NUL and a lone CR escaped', () => {
    expect(termSafe('\x1b]0;owned\x07')).toBe('^[]0;owned^G');
    expect(termSafe('\x1b]52;c;aGk=\x1b\\')).toBe('^[]52;c;aGk=^[\\');
    expect(termSafe('\x1bP+q\x1b\\')).toBe('^[P+q^[\\');
    expect(termSafe('x\by\x7f\x00z\rw')).toBe('x^Hy^?^@z^Mw');
  });
  it('shows C1 controls (8-bit CSI U+009B) as \\xNN', () => {
    expect(termSafe('a\u009b6nb')).toBe('a\\x9b6nb');
  });
  it('holds a sequence or a character split between chunks until the next one', () => {
    const f = new TermFilter();
    const enc = Buffer.from('ok \x1b[31mred\x1b[6n é\r\n');
    let out = '';
    for (const b of enc) out += f.write(Buffer.from([b])); // one byte at a time
    out += f.end();
    expect(out).toBe('ok \x1b[31mred^[[6n é\r\n');
  });
  it('a sequence left unfinished at the end is shown escaped', () => {
    const f = new TermFilter();
    expect(f.write('x\x1b[12')).toBe('x');
    expect(f.end()).toBe('^[[12');
  });
  it('guestSink filters for a terminal and passes the bytes as they are to a pipe', () => {
    const chunks = (tty: boolean) => {
      const out = new PassThrough();
      const got: Buffer[] = [];
      out.on('data', (d: Buffer) => got.push(Buffer.from(d)));
      const sink = guestSink(out, tty);
      sink.write(Buffer.from('a\x1b[6n\x00b'));
      sink.end();
      return Buffer.concat(got).toString('latin1');
    };
    expect(chunks(true)).toBe('a^[[6n^@b');
    expect(chunks(false)).toBe('a\x1b[6n\x00b');
  });
});

describe('untilCut: pim-console --until stops at the matching line', () => {
  const lines = Array.from({ length: 717 }, (_, i) => `line ${i + 1}\n`).join('');
  it('cuts a replay after the matching line, not at the end of the chunk', () => {
    const d = Buffer.from(lines);
    const cut = untilCut('', d, /line 344\b/);
    expect(d.subarray(0, cut!).toString().split('\n').filter(Boolean).at(-1)).toBe('line 344');
  });
  it('null when nothing matches; the whole chunk when the line has no end yet', () => {
    expect(untilCut('', Buffer.from('abc\n'), /zzz/)).toBeNull();
    expect(untilCut('', Buffer.from('a\nlogin: '), /login:/)).toBe(9);
  });
  it('a match across chunks cuts in the second one, at its own line end', () => {
    const cut = untilCut('boot: pim-test', Buffer.from('bed ready\nmore\n'), /pim-testbed ready/);
    expect(cut).toBe('bed ready\n'.length);
  });
  it('counts bytes, not characters, before the cut (UTF-8)', () => {
    const d = Buffer.from('é✓ ready\nafter\n');
    expect(d.subarray(0, untilCut('', d, /ready/)!).toString()).toBe('é✓ ready\n');
  });
  it('a regex that ends with the newline ends that line there', () => {
    const d = Buffer.from('x\ny\nz\n');
    expect(untilCut('', d, /x\n/)).toBe(2);
  });
});

/** A stream that says it is a terminal, and what was written to it. */
function fakeTty(): { stream: NodeJS.WriteStream; text: () => string } {
  const p = new PassThrough() as unknown as NodeJS.WriteStream & PassThrough;
  let buf = '';
  p.on('data', (d: Buffer) => (buf += d.toString()));
  Object.assign(p, { isTTY: true, columns: 80 });
  return { stream: p, text: () => buf };
}

describe('StatusLine: any other stderr line clears it first', () => {
  it('a line written by anything else (a logger) starts on a clear line, and the status is drawn again after it', async () => {
    const t = fakeTty();
    const env = process.env.TERM;
    process.env.TERM = 'xterm';
    const st = new StatusLine(t.stream);
    try {
      st.update('cloud-init is setting up dev');
      st.set('waiting');
      t.stream.write('pim-build: warning: KVM failed\n');
      await new Promise((r) => setImmediate(r));
      const out = t.text();
      const at = out.indexOf('pim-build: warning: KVM failed');
      // the status line was on screen, then cleared right before the warning
      expect(out.slice(0, at)).toMatch(/waiting 0s[^\n]*\x1b\[K\r\x1b\[K$/);
      // and it comes back under the warning
      expect(out.slice(at)).toMatch(/KVM failed\n\r[^\n]*waiting/);
    } finally {
      st.end();
      process.env.TERM = env;
    }
    // once ended, writes are no longer touched
    const before = t.text().length;
    t.stream.write('after\n');
    await new Promise((r) => setImmediate(r));
    expect(t.text().slice(before)).toBe('after\n');
  });
});

describe('StatusBoard: one live line per build (pim-build run a b -j 2 on a terminal)', () => {
  const withEnv = async (env: Record<string, string | undefined>, f: () => Promise<void> | void) => {
    const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    for (const [k, v] of Object.entries(env)) v === undefined ? delete process.env[k] : (process.env[k] = v);
    try {
      await f();
    } finally {
      for (const [k, v] of Object.entries(old)) v === undefined ? delete process.env[k] : (process.env[k] = v);
    }
  };
  const tick = () => new Promise((r) => setImmediate(r));

  it('draws a row per build, redraws the board in place above each kept line, and makes a guest line safe', async () => {
    await withEnv({ TERM: 'xterm', NO_COLOR: '1' }, async () => {
      const t = fakeTty();
      const board = new StatusBoard(t.stream);
      const a = board.row('ja');
      const b = board.row('jb');
      a.set('installing ja');
      b.update('login: \x1b]0;title\x07');
      b.say('jb.sh| \x1b[6nowned');
      a.end();
      await tick();
      const out = t.text();
      // the board: both rows at once, each cleared to its end, one a line
      expect(out).toMatch(/\rja: installing ja\.\.\. \(0s\)\x1b\[K\njb: starting\.\.\. \(0s\)\x1b\[K/);
      // taken off before a kept line: up over the first row, cleared to the end of the screen
      expect(out).toContain('\r\x1b[1A\x1b[J');
      // the kept lines: prefixed with the build, the guest's escape shown, not sent
      expect(out).toContain(': [ja] installing ja\n');
      expect(out).toContain('[jb] jb.sh| ^[[6nowned\n');
      // no control byte in a row: the detail's OSC is blanked
      expect(out).toMatch(/jb: starting\.\.\. \(0s\) \| login:\s+\]0;title\x1b\[K/);
      // a's row gone: only jb's is drawn last
      expect(out.slice(out.lastIndexOf('\x1b[J'))).toMatch(/^\x1b\[J\rjb: [^\n]*\x1b\[K$/);
      board.end();
      const before = t.text().length;
      t.stream.write('after\n');
      await tick();
      expect(t.text().slice(before)).toBe('after\n');
    });
  });

  it('is only for a terminal: none off a TTY, with TERM=dumb or with NO_COLOR', async () => {
    const t = fakeTty();
    await withEnv({ TERM: 'dumb', NO_COLOR: undefined }, () => expect(StatusBoard.board(t.stream)).toBeNull());
    await withEnv({ TERM: 'xterm', NO_COLOR: '1' }, () => expect(StatusBoard.board(t.stream)).toBeNull());
    await withEnv({ TERM: 'xterm', NO_COLOR: undefined }, () => {
      expect(StatusBoard.board(new PassThrough() as unknown as NodeJS.WriteStream)).toBeNull();
      const b = StatusBoard.board(t.stream);
      expect(b).not.toBeNull();
      b!.end();
    });
  });
});

describe('the table printer for terminals (issue 19)', () => {
  it('prints the header even with no records on a terminal; a pipe gets nothing', () => {
    expect(formatRecords([], ['state', 'pid'], { tty: true })).toMatch(/^NAME\s+STATE\s+PID\n$/);
    expect(formatRecords([], ['state', 'pid'])).toBe('');
  });
  it('shows byte counts human-sized on a terminal; a pipe and JSON keep the number', () => {
    const recs = [{ name: 'deb', size: 661651456, url: 'x' }];
    expect(formatRecords(recs, ['size', 'url'], { tty: true }).split('\n')[1]).toMatch(/^deb\s+631\.0 MiB\s+x$/);
    expect(formatRecords(recs, ['size', 'url'])).toBe('deb\t661651456\tx\n');
    expect(JSON.parse(formatRecords(recs, ['size'], { json: true })).size).toBe(661651456);
    expect(humanBytes(512)).toBe('512 B');
    expect(humanBytes(4096)).toBe('4.0 KiB');
  });
  it('fits the width: the widest column is cut in the middle, no row is longer than the terminal', () => {
    const long = '/home/someone/.local/share/pim/builds/dev-0123456789ab/dev.qcow2';
    const recs = [
      { name: 'dev', state: 'running', pid: 4242, ssh_port: 40001, uptime: '3m4s', image: long, kind: 'run' },
      { name: 'web', state: 'paused', pid: 4243, ssh_port: 40002, uptime: '12s', image: '/tmp/w.qcow2', kind: 'run' },
    ];
    const out = formatRecords(recs, ['state', 'pid', 'ssh_port', 'uptime', 'image', 'kind'], {
      tty: true,
      columns: 80,
    });
    for (const line of out.trimEnd().split('\n')) expect(line.length).toBeLessThan(80);
    expect(out).toContain('…');
    expect(out).toMatch(/\/home\/someone.*….*dev\.qcow2/);
    // wide enough: nothing is cut
    expect(formatRecords(recs, ['state', 'image'], { tty: true, columns: 200 })).toContain(long);
  });
  it('uptime reads the same in pim-ps and pim-status', () => {
    expect(humanDuration(44)).toBe('44s');
    expect(humanDuration(184)).toBe('3m4s');
    expect(humanDuration(null)).toBe('-');
  });
});
