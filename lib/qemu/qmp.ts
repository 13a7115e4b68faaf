/**
 * QMP, the QEMU Machine Protocol. `QmpProtocol` is the protocol alone: it is
 * given the messages that arrive and a function to send lines, and knows
 * nothing of sockets, so it is tested on recorded exchanges. `QmpClient`
 * ties it to a unix socket.
 *
 * Flow: server greets {"QMP":{...}}; client sends qmp_capabilities; then
 * requests carry an "id" and replies ({"return"} or {"error"}) are routed
 * back by it. Events ({"event"}) go to their own stream.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { JsonLines } from './jsonlines.ts';

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends PimError {
  readonly qmpClass: string;
  constructor(cls: string, desc: string) {
    super(EXIT.DATAERR, `QMP error ${cls}: ${desc}`);
    this.qmpClass = cls;
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | undefined;
  command: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export class QmpProtocol {
  greeting: Obj | undefined;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedWith: Error | undefined;
  private greetingWaiters: Array<{ resolve: (g: Obj) => void; reject: (e: Error) => void }> = [];
  /** event listeners; an event that arrives while nobody listens is dropped, never kept */
  private readonly listeners = new Set<(ev: QmpEvent) => void>();
  /** replies that arrived after their request had timed out (they are dropped) */
  lateReplies = 0;

  private readonly decoder = new JsonLines();

  private readonly send: (line: string) => void;
  private readonly label: string;
  constructor(send: (line: string) => void, label = 'QMP') {
    this.send = send;
    this.label = label;
  }

  /** Hand the protocol raw bytes from the server. */
  feed(chunk: Buffer): void {
    for (const m of this.decoder.push(chunk).messages) this.receive(m);
  }

  /** Hand the protocol one decoded message from the server. */
  receive(msg: unknown): void {
    if (!isObj(msg)) return;
    if ('QMP' in msg) {
      this.greeting = msg.QMP as Obj;
      for (const w of this.greetingWaiters.splice(0)) w.resolve(this.greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      for (const l of [...this.listeners]) l(ev);
      return;
    }
    const id = msg.id === undefined ? undefined : String(msg.id);
    if (id === undefined) return; // a reply we did not ask for (no id): ignore
    const p = this.pending.get(id);
    if (!p) {
      this.lateReplies++;
      return;
    }
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if ('error' in msg && isObj(msg.error)) {
      p.reject(new QmpError(String(msg.error.class ?? 'GenericError'), String(msg.error.desc ?? '')));
    } else {
      p.resolve(msg.return);
    }
  }

  /** Call `listener` for every event from now on; the returned function unsubscribes. */
  subscribe(listener: (ev: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  waitGreeting(timeoutMs: number): Promise<Obj> {
    if (this.greeting) return Promise.resolve(this.greeting);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new PimError(EXIT.TEMPFAIL, `${this.label}: no greeting within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.greetingWaiters.push({
        resolve: (g) => (clearTimeout(timer), resolve(g)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
    });
  }

  /** Send a command; the promise settles with its `return` value, or rejects. */
  request(execute: string, args?: unknown, timeoutMs = 10_000): Promise<unknown> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = `pim-${this.nextId++}`;
    const msg: Obj = { execute, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.pending.delete(id);
              reject(new PimError(EXIT.TEMPFAIL, `${this.label}: ${execute} got no reply within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      this.pending.set(id, { resolve, reject, timer, command: execute });
      this.send(JSON.stringify(msg) + '\n');
    });
  }

  /** The connection is gone: every pending request fails with `err`. */
  close(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const w of this.greetingWaiters.splice(0)) w.reject(err);
  }

  get pendingCount(): number {
    return this.pending.size;
  }
}

export interface QmpClientOptions {
  timeoutMs?: number;
}

/** A QMP connection over a unix socket, capabilities negotiated. */
export class QmpClient {
  private readonly sock: import('node:net').Socket;
  readonly proto: QmpProtocol;
  private readonly timeoutMs: number;
  private readonly caps: Promise<unknown>;
  private constructor(sock: import('node:net').Socket, proto: QmpProtocol, timeoutMs: number, caps: Promise<unknown>) {
    this.sock = sock;
    this.proto = proto;
    this.timeoutMs = timeoutMs;
    this.caps = caps;
  }

  static async connect(path: string, opts: QmpClientOptions = {}): Promise<QmpClient> {
    const { connectUnix } = await import('../core/sock.ts');
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const sock = await connectUnix(path, timeoutMs, 'QMP');
    const proto = new QmpProtocol((line) => sock.write(line), 'QMP');
    sock.on('data', (chunk: Buffer) => proto.feed(chunk));
    const onGone = (e?: Error) =>
      proto.close(
        new PimError(
          EXIT.UNAVAILABLE,
          `QMP connection to ${path} closed${e ? `: ${e.message}` : ''}; is the VM still running?`,
        ),
      );
    sock.on('error', onGone);
    sock.on('close', () => onGone());
    try {
      await proto.waitGreeting(timeoutMs);
    } catch (e) {
      sock.destroy();
      throw e;
    }
    // Capabilities negotiation is pipelined with the first command: QMP
    // answers in order, so neither waits for the other's round trip.
    const caps = proto.request('qmp_capabilities', undefined, timeoutMs);
    caps.catch(() => sock.destroy());
    return new QmpClient(sock, proto, timeoutMs, caps);
  }

  async execute(cmd: string, args?: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    const reply = this.proto.request(cmd, args, timeoutMs);
    reply.catch(() => undefined); // observed below, after the capabilities
    await this.caps;
    return reply;
  }

  /** Call `listener` for every event from now on; the returned function unsubscribes. */
  subscribe(listener: (ev: QmpEvent) => void): () => void {
    return this.proto.subscribe(listener);
  }

  /**
   * Resolves with the first event named `name` from now on, or null on
   * timeout or when the connection closes. To not miss an event that a
   * command causes, call this before sending the command.
   */
  waitEvent(name: string, timeoutMs: number): Promise<QmpEvent | null> {
    return new Promise((resolve) => {
      const done = (ev: QmpEvent | null) => {
        clearTimeout(timer);
        unsubscribe();
        this.sock.off('close', onClose);
        resolve(ev);
      };
      const onClose = () => done(null);
      const timer = setTimeout(() => done(null), timeoutMs);
      const unsubscribe = this.proto.subscribe((ev) => {
        if (ev.event === name) done(ev);
      });
      this.sock.once('close', onClose);
    });
  }

  /** Resolves when the server closes the connection (QEMU exited), or false on timeout. */
  waitClosed(timeoutMs: number): Promise<boolean> {
    if (this.sock.destroyed || this.sock.readyState === 'closed') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.sock.once('close', () => (clearTimeout(timer), resolve(true)));
    });
  }

  close(): void {
    this.sock.destroy();
  }
}
