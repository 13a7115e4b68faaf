/**
 * The QEMU guest agent protocol. Same wire format as QMP, but no greeting,
 * no capabilities and no request ids: replies come back in order. So the
 * client first synchronises: it sends a 0xFF byte (the agent drops any
 * half-read input) and `guest-sync-delimited` with a random id; the agent
 * answers 0xFF then {"return": id}. Everything before that is stale and
 * thrown away. After a timeout the stream may hold a late reply, so the
 * next request synchronises again. `guest-shutdown` (and a few others) send
 * no reply when they succeed.
 *
 * `GaProtocol` is the protocol alone (bytes in, bytes out); `GaClient` ties
 * it to the unix socket of the VM's virtio-serial channel.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { JsonLines } from './jsonlines.ts';

/** Commands that send no reply on success. */
export const NO_REPLY = new Set(['guest-shutdown', 'guest-suspend-disk', 'guest-suspend-ram', 'guest-suspend-hybrid']);

export class GaError extends PimError {
  readonly gaClass: string;
  constructor(cls: string, desc: string) {
    super(EXIT.DATAERR, `guest agent error ${cls}: ${desc}`);
    this.gaClass = cls;
  }
}

/** No reply to guest-sync in time: why is for the caller to find out (lib/vm/connect.ts asks QMP). */
export class GaSilent extends PimError {
  readonly timeoutMs: number;
  constructor(timeoutMs: number) {
    super(
      EXIT.UNAVAILABLE,
      `the guest agent gave no reply to guest-sync within ${timeoutMs} ms; is qemu-guest-agent running in the guest?`,
    );
    this.timeoutMs = timeoutMs;
    this.name = 'GaSilent';
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

interface Waiter {
  accept: (msg: Obj) => boolean; // true: consumed and settled
  fail: (e: Error) => void;
}

export class GaProtocol {
  private readonly decoder = new JsonLines({ delimited: true });
  private synced = false;
  private waiter: Waiter | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private closedWith: Error | undefined;

  private readonly send: (data: Buffer) => void;
  private readonly newSyncId: () => number;
  constructor(send: (data: Buffer) => void, newSyncId: () => number = () => Math.floor(Math.random() * 0x7fffffff)) {
    this.send = send;
    this.newSyncId = newSyncId;
  }

  feed(chunk: Buffer): void {
    for (const m of this.decoder.push(chunk).messages) {
      if (!isObj(m)) continue;
      const w = this.waiter;
      if (w && w.accept(m)) this.waiter = undefined;
      // anything else is a stale reply: dropped
    }
  }

  close(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.fail(err);
  }

  get isSynced(): boolean {
    return this.synced;
  }

  /** Wait for one message that `accept` takes, or time out. */
  private await<T>(
    timeoutMs: number,
    what: string,
    accept: (m: Obj, settle: (v: T) => void, fail: (e: Error) => void) => boolean,
  ): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        this.synced = false;
        reject(new PimError(EXIT.TEMPFAIL, `guest agent: ${what} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const settle = (v: T) => (clearTimeout(timer), resolve(v));
      const fail = (e: Error) => (clearTimeout(timer), reject(e));
      this.waiter = { accept: (m) => accept(m, settle, fail), fail };
    });
  }

  /** guest-sync-delimited: after it, the next reply belongs to the next request. */
  sync(timeoutMs: number): Promise<void> {
    const id = this.newSyncId();
    this.decoder.expectDelimiter();
    const p = this.await<void>(timeoutMs, 'guest-sync-delimited', (m, settle) => {
      if (m.return === id) {
        this.synced = true;
        settle();
        return true;
      }
      return false; // a stale reply from before: skip
    });
    this.send(
      Buffer.concat([
        Buffer.from([0xff]),
        Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n'),
      ]),
    );
    return p;
  }

  /** Run one command (serialised; syncs first when needed). Resolves with its `return`. */
  request(execute: string, args?: unknown, timeoutMs = 10_000): Promise<unknown> {
    const run = async () => {
      if (!this.synced) await this.sync(timeoutMs);
      const msg: Obj = { execute };
      if (args !== undefined) msg.arguments = args;
      if (NO_REPLY.has(execute)) return this.requestNoReply(msg, timeoutMs);
      const p = this.await<unknown>(timeoutMs, execute, (m, settle, fail) => {
        if ('error' in m && isObj(m.error))
          fail(new GaError(String(m.error.class ?? 'GenericError'), String(m.error.desc ?? '')));
        else settle(m.return);
        return true;
      });
      this.send(Buffer.from(JSON.stringify(msg) + '\n'));
      return p;
    };
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  /**
   * A command with no reply on success: send it, then a guest-sync. An error reply
   * before the sync reply means it failed; the sync reply, the agent going
   * away, or silence (the guest is going down) mean it was taken.
   */
  private async requestNoReply(msg: Obj, timeoutMs: number): Promise<unknown> {
    const id = this.newSyncId();
    const p = this.await<unknown>(timeoutMs, String(msg.execute), (m, settle, fail) => {
      if ('error' in m && isObj(m.error)) {
        fail(new GaError(String(m.error.class ?? 'GenericError'), String(m.error.desc ?? '')));
        return true;
      }
      if (m.return === id) {
        settle({});
        return true;
      }
      return false;
    });
    // A plain guest-sync (no 0xFF: the stream is in step) so that an error
    // reply to the command itself is not thrown away with the delimiter.
    this.send(
      Buffer.from(JSON.stringify(msg) + '\n' + JSON.stringify({ execute: 'guest-sync', arguments: { id } }) + '\n'),
    );
    try {
      return await p;
    } catch (e) {
      if (e instanceof GaError) throw e;
      this.synced = false;
      return {}; // no answer: the guest is shutting down
    }
  }
}

/** A guest-agent connection over the VM's unix socket. */
export class GaClient {
  private readonly sock: import('node:net').Socket;
  readonly proto: GaProtocol;
  private readonly timeoutMs: number;
  private constructor(sock: import('node:net').Socket, proto: GaProtocol, timeoutMs: number) {
    this.sock = sock;
    this.proto = proto;
    this.timeoutMs = timeoutMs;
  }

  static async connect(path: string, timeoutMs = 5_000): Promise<GaClient> {
    const { connectUnix } = await import('../core/sock.ts');
    const sock = await connectUnix(path, timeoutMs, 'guest agent');
    const proto = new GaProtocol((b) => sock.write(b));
    sock.on('data', (c: Buffer) => proto.feed(c));
    const gone = (e?: Error) =>
      proto.close(
        new PimError(EXIT.UNAVAILABLE, `guest agent connection closed${e ? `: ${e.message}` : ''}; is the VM running?`),
      );
    sock.on('error', gone);
    sock.on('close', () => gone());
    return new GaClient(sock, proto, timeoutMs);
  }

  /** Runs a command; a sync timeout means no agent answers (exit 69). */
  async execute(cmd: string, args?: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    if (!this.proto.isSynced) {
      try {
        await this.proto.sync(timeoutMs);
      } catch (e) {
        if (e instanceof PimError && e.code === EXIT.TEMPFAIL) {
          throw new GaSilent(timeoutMs);
        }
        throw e;
      }
    }
    return this.proto.request(cmd, args, timeoutMs);
  }

  /** The agent has answered a sync on this connection. */
  get synced(): boolean {
    return this.proto.isSynced;
  }

  close(): void {
    this.sock.destroy();
  }
}
