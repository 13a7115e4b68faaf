import { describe, expect, it } from 'vitest';
import { QmpProtocol, QmpError } from '../../lib/qemu/qmp.ts';
import { PimError } from '../../lib/core/exit.ts';
import { QMP_SESSION, QMP_POWERDOWN } from './fixtures/recorded.ts';

/** Feed a recorded server stream in chunks of `size` bytes (splits lines mid-way). */
function feedChunks(p: QmpProtocol, text: string, size: number) {
  const b = Buffer.from(text, 'latin1');
  for (let i = 0; i < b.length; i += size) p.feed(b.subarray(i, i + size));
}

describe('QmpProtocol on a recorded session', () => {
  for (const size of [1, 7, 4096]) {
    it(`routes replies by id and errors as QmpError (chunks of ${size})`, async () => {
      const sent: string[] = [];
      const p = new QmpProtocol((l) => sent.push(l));
      const caps = p.request('qmp_capabilities');
      const status = p.request('query-status');
      const bad = p.request('no-such-cmd');
      expect(sent.map((l) => JSON.parse(l))).toEqual([
        { execute: 'qmp_capabilities', id: 'pim-1' },
        { execute: 'query-status', id: 'pim-2' },
        { execute: 'no-such-cmd', id: 'pim-3' },
      ]);
      feedChunks(p, QMP_SESSION, size);
      expect(p.greeting).toMatchObject({ version: { qemu: { major: 7, minor: 2 } } });
      await expect(caps).resolves.toEqual({});
      await expect(status).resolves.toEqual({ status: 'running', singlestep: false, running: true });
      const err = (await bad.catch((e) => e)) as QmpError;
      expect(err).toBeInstanceOf(QmpError);
      expect(err.qmpClass).toBe('CommandNotFound');
      expect(err.code).toBe(65);
    });
  }

  it('replies out of order still reach their own request', async () => {
    const p = new QmpProtocol(() => undefined);
    const a = p.request('a');
    const b = p.request('b');
    p.feed(Buffer.from('{"return": "B", "id": "pim-2"}\r\n{"return": "A", "id": "pim-1"}\r\n'));
    await expect(a).resolves.toBe('A');
    await expect(b).resolves.toBe('B');
  });

  it('puts events on their own stream, even between a request and its reply, to every listener', async () => {
    const p = new QmpProtocol(() => undefined);
    const seen: string[] = [];
    const other: string[] = [];
    p.subscribe((e) => seen.push(e.event));
    const off = p.subscribe((e) => other.push(e.event));
    const caps = p.request('qmp_capabilities');
    const pd = p.request('system_powerdown');
    p.feed(Buffer.from(QMP_POWERDOWN));
    await expect(caps).resolves.toEqual({});
    await expect(pd).resolves.toEqual({});
    expect(seen).toEqual(['POWERDOWN', 'SHUTDOWN']);
    expect(other).toEqual(['POWERDOWN', 'SHUTDOWN']);
    off();
    p.feed(Buffer.from('{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'));
    expect(seen).toEqual(['POWERDOWN', 'SHUTDOWN', 'STOP']);
    expect(other).toEqual(['POWERDOWN', 'SHUTDOWN']);
  });

  it('keeps nothing when no one listens: events are dropped, not queued', () => {
    const p = new QmpProtocol(() => undefined);
    for (let i = 0; i < 1000; i++) p.feed(Buffer.from('{"event": "RTC_CHANGE", "data": {"offset": 1}}\r\n'));
    expect(p.listenerCount).toBe(0);
    const seen: string[] = [];
    p.subscribe((e) => seen.push(e.event));
    p.feed(Buffer.from('{"event": "STOP"}\r\n'));
    expect(seen).toEqual(['STOP']); // none of the 1000 earlier ones
    expect(
      Object.keys(p).some(
        (k) =>
          Array.isArray((p as unknown as Record<string, unknown>)[k]) &&
          ((p as unknown as Record<string, unknown[]>)[k]!.length ?? 0) >= 1000,
      ),
    ).toBe(false);
  });

  it('fails pending requests with a clear error when the connection drops', async () => {
    const p = new QmpProtocol(() => undefined);
    const r = p.request('query-status');
    p.close(new PimError(69, 'QMP connection closed'));
    await expect(r).rejects.toMatchObject({ code: 69, message: 'QMP connection closed' });
    await expect(p.request('again')).rejects.toMatchObject({ code: 69 });
    expect(p.pendingCount).toBe(0);
  });

  it('times out a request with exit 75 and forgets it', async () => {
    const p = new QmpProtocol(() => undefined);
    const r = p.request('query-status', undefined, 20);
    await expect(r).rejects.toMatchObject({ code: 75 });
    expect(p.pendingCount).toBe(0);
    // a late reply is dropped: it settles nothing and the next request gets its own reply
    const next = p.request('query-version', undefined, 1000);
    p.feed(Buffer.from('{"return": {"late": true}, "id": "pim-1"}\r\n{"return": {"mine": true}, "id": "pim-2"}\r\n'));
    await expect(next).resolves.toEqual({ mine: true });
    expect(p.lateReplies).toBe(1);
    expect(p.pendingCount).toBe(0);
  });

  it('waits for the greeting', async () => {
    const p = new QmpProtocol(() => undefined);
    const g = p.waitGreeting(1000);
    p.feed(Buffer.from(QMP_SESSION.split('\r\n')[0] + '\r\n'));
    await expect(g).resolves.toMatchObject({ capabilities: ['oob'] });
    await expect(new QmpProtocol(() => undefined).waitGreeting(10)).rejects.toMatchObject({ code: 75 });
  });
});
