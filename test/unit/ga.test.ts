import { describe, expect, it } from 'vitest';
import { GaProtocol, GaError } from '../../lib/qemu/ga.ts';
import { GA_SYNC_12345, GA_OSINFO, GA_NOT_FOUND, GA_INTERFACES } from './fixtures/recorded.ts';

function agent() {
  const sent: Buffer[] = [];
  let id = 12345;
  const p = new GaProtocol(
    (b) => sent.push(b),
    () => id,
  );
  return { p, sent, setId: (n: number) => (id = n) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('GaProtocol on recorded exchanges', () => {
  it('syncs with 0xFF + guest-sync-delimited and skips everything before the delimiter', async () => {
    const { p, sent } = agent();
    const r = p.request('guest-get-osinfo');
    await tick();
    expect(sent[0]![0]).toBe(0xff);
    expect(JSON.parse(sent[0]!.subarray(1).toString())).toEqual({
      execute: 'guest-sync-delimited',
      arguments: { id: 12345 },
    });
    // recorded: the agent first complains about the stray 0xFF, then sends 0xFF + the sync reply
    p.feed(GA_SYNC_12345);
    await tick();
    expect(JSON.parse(sent[1]!.toString())).toEqual({ execute: 'guest-get-osinfo' });
    p.feed(Buffer.from(GA_OSINFO));
    await expect(r).resolves.toMatchObject({ 'pretty-name': 'pim testbed (Debian packages)', machine: 'x86_64' });
  });

  it('drops stale replies from before the sync, byte by byte', async () => {
    const { p } = agent();
    const r = p.request('guest-network-get-interfaces');
    await tick();
    const stream = Buffer.concat([Buffer.from(GA_OSINFO), GA_SYNC_12345]); // a late reply, then the sync
    for (const byte of stream) p.feed(Buffer.from([byte]));
    await tick();
    for (const byte of Buffer.from(GA_INTERFACES)) p.feed(Buffer.from([byte]));
    const ifaces = (await r) as Array<{ name: string }>;
    expect(ifaces.map((i) => i.name)).toEqual(['lo', 'eth0']);
  });

  it('turns an agent error into GaError (exit 65)', async () => {
    const { p } = agent();
    const r = p.request('guest-nope');
    await tick();
    p.feed(GA_SYNC_12345);
    await tick();
    p.feed(Buffer.from(GA_NOT_FOUND));
    const e = (await r.catch((x) => x)) as GaError;
    expect(e).toBeInstanceOf(GaError);
    expect(e.gaClass).toBe('CommandNotFound');
    expect(e.code).toBe(65);
  });

  it('after a timeout, syncs again and ignores the late reply', async () => {
    const { p, sent, setId } = agent();
    const first = p.request('guest-get-osinfo', undefined, 200);
    await tick();
    p.feed(GA_SYNC_12345);
    await expect(first).rejects.toMatchObject({ code: 75 });
    expect(p.isSynced).toBe(false);
    setId(777);
    const second = p.request('guest-get-osinfo', undefined, 1000);
    await tick();
    const resync = sent[sent.length - 1]!;
    expect(resync[0]).toBe(0xff);
    expect(JSON.parse(resync.subarray(1).toString())).toMatchObject({ arguments: { id: 777 } });
    // the late reply to the first request arrives now: before the delimiter, so dropped
    p.feed(Buffer.from(GA_OSINFO));
    p.feed(Buffer.concat([Buffer.from([0xff]), Buffer.from('{"return": 777}\n')]));
    await tick();
    p.feed(Buffer.from('{"return": {"name": "second"}}\n'));
    await expect(second).resolves.toEqual({ name: 'second' });
  });

  it('guest-shutdown expects no reply: a following guest-sync answer means it was taken', async () => {
    const { p, sent, setId } = agent();
    p.feed(Buffer.alloc(0));
    const r0 = p.request('guest-ping');
    await tick();
    p.feed(GA_SYNC_12345);
    await tick();
    p.feed(Buffer.from('{"return": {}}\n'));
    await r0;
    setId(99);
    const r = p.request('guest-shutdown');
    await tick();
    const lines = sent[sent.length - 1]!.toString()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toEqual([{ execute: 'guest-shutdown' }, { execute: 'guest-sync', arguments: { id: 99 } }]);
    p.feed(Buffer.from('{"return": 99}\n'));
    await expect(r).resolves.toEqual({});
  });

  it('guest-shutdown that fails reports the error', async () => {
    const { p, setId } = agent();
    setId(5);
    const r = p.request('guest-shutdown');
    await tick();
    p.feed(Buffer.concat([Buffer.from([0xff]), Buffer.from('{"return": 5}\n')]));
    await tick();
    p.feed(
      Buffer.from(
        '{"error": {"class": "GenericError", "desc": "child process has failed to shutdown"}}\n{"return": 5}\n',
      ),
    );
    await expect(r).rejects.toMatchObject({ gaClass: 'GenericError' });
  });

  it('guest-shutdown with silence (the guest went down) counts as taken', async () => {
    const { p, setId } = agent();
    setId(8);
    const r = p.request('guest-shutdown', undefined, 100);
    await tick();
    p.feed(Buffer.concat([Buffer.from([0xff]), Buffer.from('{"return": 8}\n')]));
    await expect(r).resolves.toEqual({});
  });

  it('serialises concurrent requests: replies come back in order', async () => {
    const { p, sent } = agent();
    const a = p.request('guest-info');
    const b = p.request('guest-get-osinfo');
    await tick();
    p.feed(GA_SYNC_12345);
    await tick();
    expect(sent.length).toBe(2); // b waits for a
    p.feed(Buffer.from('{"return": {"version": "7.2.22"}}\n'));
    await expect(a).resolves.toEqual({ version: '7.2.22' });
    await tick();
    expect(JSON.parse(sent[2]!.toString())).toEqual({ execute: 'guest-get-osinfo' });
    p.feed(Buffer.from(GA_OSINFO));
    await expect(b).resolves.toMatchObject({ id: 'pimtestbed' });
  });
});
