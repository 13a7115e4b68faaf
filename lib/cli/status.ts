/**
 * A live status line on stderr, for long work: redrawn in place on a
 * terminal (phase, elapsed time, a detail such as the last console line),
 * absent elsewhere. Log lines printed through `say` appear above it, and so
 * does every other line written to the stream while it is live (the logger's
 * warnings, an error): the stream's write is wrapped so that the status line
 * is cleared before anything else is written, and drawn again after a line
 * ends. `end()` puts the stream back as it was.
 */
import { prog, useColor } from '../core/prog.ts';
import { termSafe } from '../core/termsafe.ts';

/** What long work reports through: a StatusLine, or one row of a StatusBoard (several builds at once). */
export interface Status {
  /** a new phase: one line kept on stderr, then the live line */
  set(phase: string): void;
  /** a new phase on the live line only */
  show(phase: string): void;
  /** the live line's detail */
  update(detail: string): void;
  /** a line that stays, printed above the live line(s) */
  say(line: string): void;
  elapsed(): string;
  hide(): void;
  end(): void;
}

/** A line for a live row: no control byte at all (a row must stay one row). */
const oneRow = (s: string) => s.replace(/[\x00-\x1f\x7f-\x9f]/g, ' ').trim();

const elapsedSince = (t0: number) => {
  const s = Math.round((Date.now() - t0) / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
};

/**
 * Wrap `stream`'s write: `before()` runs before anything else is written (a live
 * line is cleared), `after(midLine)` after it, with whether the text written
 * leaves a line half written. Gives the stream's own write and a way to put it back.
 */
function wrapWrite(
  stream: NodeJS.WriteStream,
  before: () => void,
  after: (midLine: boolean | null) => void,
): { raw: (chunk: string) => boolean; restore: () => void } {
  const own = stream.write;
  const hadOwn = Object.hasOwn(stream, 'write');
  stream.write = ((chunk: unknown, ...rest: unknown[]) => {
    before();
    const r = (own as (...a: unknown[]) => boolean).call(stream, chunk, ...rest);
    const text =
      typeof chunk === 'string'
        ? chunk
        : Buffer.isBuffer(chunk) || chunk instanceof Uint8Array
          ? Buffer.from(chunk).toString('latin1')
          : '';
    after(text.length ? !text.endsWith('\n') : null);
    return r;
  }) as typeof stream.write;
  return {
    raw: own.bind(stream) as (chunk: string) => boolean,
    restore: () => {
      if (hadOwn) stream.write = own;
      else delete (stream as { write?: unknown }).write; // the prototype's again
    },
  };
}

export class StatusLine implements Status {
  private readonly tty: boolean;
  private phase = '';
  private detail = '';
  private readonly t0 = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private shown = false;
  /** the stream's own write, while ours is in its place */
  private raw: ((chunk: string) => boolean) | null = null;
  /** someone else's line is half written: no redraw until it ends */
  private midLine = false;
  /** puts the stream's own write back */
  private restore: () => void = () => undefined;

  private readonly stream: NodeJS.WriteStream;
  constructor(stream: NodeJS.WriteStream = process.stderr) {
    this.stream = stream;
    this.tty = Boolean(stream.isTTY) && process.env.TERM !== 'dumb';
    if (this.tty) {
      const w = wrapWrite(
        stream,
        () => {
          if (this.shown) w.raw('\r\x1b[K');
          this.shown = false;
        },
        (mid) => {
          if (mid !== null) this.midLine = mid;
          if (!this.midLine) this.draw();
        },
      );
      this.raw = w.raw;
      this.restore = w.restore;
      // a clock, not a wait: it redraws the elapsed time once a second
      this.timer = setInterval(() => this.draw(), 1000);
      this.timer.unref();
    }
  }

  /** A new phase: one line on stderr (kept), then the live line. */
  set(phase: string): void {
    this.phase = phase;
    this.detail = '';
    this.say(phase);
  }

  /** A new phase on the live line only (nothing kept; nothing at all off a terminal). */
  show(phase: string): void {
    this.phase = phase;
    this.draw();
  }

  /** The live line's detail (only shown on a terminal). */
  update(detail: string): void {
    this.detail = detail.replace(/[\x00-\x1f\x7f]/g, ' ').trim();
    this.draw();
  }

  /** A line that stays, printed above the live line. */
  say(line: string): void {
    // cleared first and drawn again after, on a terminal; a guest's words (a script's output) made safe there
    this.stream.write(`${prog()}: ${this.tty ? termSafe(line) : line}\n`);
  }

  private out(text: string): void {
    if (this.raw) this.raw(text);
    else this.stream.write(text);
  }

  elapsed(): string {
    return elapsedSince(this.t0);
  }

  private draw(): void {
    if (!this.tty || !this.phase || this.midLine) return;
    const cols = this.stream.columns || 80;
    const dim = useColor(this.stream) ? ['\x1b[2m', '\x1b[0m'] : ['', ''];
    let text = `${this.phase} ${this.elapsed()}${this.detail ? ` | ${this.detail}` : ''}`;
    if (text.length > cols - 1) text = text.slice(0, cols - 2) + '…';
    this.out(`\r${dim[0]}${text}${dim[1]}\x1b[K`);
    this.shown = true;
  }

  /** Take the live line off the screen (before writing to stdout on the same terminal); the next draw brings it back. */
  hide(): void {
    this.clear();
  }

  private clear(): void {
    if (this.shown) this.out('\r\x1b[K');
    this.shown = false;
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.clear();
    this.phase = '';
    this.restore();
    this.restore = () => undefined;
    this.raw = null;
  }
}

/**
 * Several live lines at once, one per build (pim-build run a b c -j N on a
 * terminal): each row `PROFILE: phase elapsed | detail`, the whole board
 * redrawn in place (the cursor moved up over it, cleared to the end of the
 * screen, drawn again). As with StatusLine, every other line written to the
 * stream (a row's `say`, a logger's, an error) is printed above the board:
 * the stream's write is wrapped. Only on a terminal (isTTY, TERM not dumb,
 * NO_COLOR unset): elsewhere `board()` gives null and each build's lines are
 * plain, prefixed with its name.
 */
export class StatusBoard {
  private readonly stream: NodeJS.WriteStream;
  private readonly rows: BoardRow[] = [];
  /** how many rows are on the screen now (0: none) */
  private shown = 0;
  private midLine = false;
  private readonly raw: (chunk: string) => boolean;
  private readonly restore: () => void;
  private readonly timer: NodeJS.Timeout;

  static board(stream: NodeJS.WriteStream = process.stderr): StatusBoard | null {
    const on = Boolean(stream.isTTY) && process.env.TERM !== 'dumb' && !process.env.NO_COLOR;
    return on ? new StatusBoard(stream) : null;
  }

  constructor(stream: NodeJS.WriteStream) {
    this.stream = stream;
    const w = wrapWrite(
      stream,
      () => this.clear(),
      (mid) => {
        if (mid !== null) this.midLine = mid;
        this.draw();
      },
    );
    this.raw = w.raw;
    this.restore = w.restore;
    // a clock, not a wait: the elapsed times once a second
    this.timer = setInterval(() => this.draw(), 1000);
    this.timer.unref();
  }

  /** A live row for `name` (shown until its end()). */
  row(name: string): Status {
    const r = new BoardRow(this, name);
    this.rows.push(r);
    this.draw();
    return r;
  }

  /** @internal a row's line that stays: above the board */
  sayFor(name: string, line: string): void {
    this.stream.write(`${prog()}: [${name}] ${termSafe(line)}\n`);
  }

  /** @internal */
  drop(r: BoardRow): void {
    const i = this.rows.indexOf(r);
    if (i < 0) return;
    this.clear();
    this.rows.splice(i, 1);
    this.draw();
  }

  /** @internal */
  draw(): void {
    if (this.midLine) return;
    this.clear();
    if (!this.rows.length) return;
    const cols = this.stream.columns || 80;
    const dim = useColor(this.stream) ? ['\x1b[2m', '\x1b[0m'] : ['', ''];
    const lines = this.rows.map((r) => {
      let text = r.text();
      if (text.length > cols - 1) text = text.slice(0, cols - 2) + '…';
      return `${dim[0]}${text}${dim[1]}\x1b[K`;
    });
    this.raw(`\r${lines.join('\n')}`);
    this.shown = lines.length;
  }

  /** The board off the screen: up to its first row, cleared to the end of the screen. */
  private clear(): void {
    if (!this.shown) return;
    this.raw(`\r${this.shown > 1 ? `\x1b[${this.shown - 1}A` : ''}\x1b[J`);
    this.shown = 0;
  }

  /** The board off the screen for good, and the stream's write as it was. */
  end(): void {
    clearInterval(this.timer);
    this.clear();
    this.rows.length = 0;
    this.restore();
  }
}

class BoardRow implements Status {
  private readonly board: StatusBoard;
  readonly name: string;
  private phase = 'starting';
  private detail = '';
  private readonly t0 = Date.now();
  constructor(board: StatusBoard, name: string) {
    this.board = board;
    this.name = name;
  }
  text(): string {
    return oneRow(`${this.name}: ${this.phase}... (${this.elapsed()})${this.detail ? ` | ${this.detail}` : ''}`);
  }
  set(phase: string): void {
    this.phase = phase;
    this.detail = '';
    this.say(phase);
  }
  show(phase: string): void {
    this.phase = phase;
    this.board.draw();
  }
  update(detail: string): void {
    this.detail = oneRow(detail);
    this.board.draw();
  }
  say(line: string): void {
    this.board.sayFor(this.name, line);
  }
  elapsed(): string {
    return elapsedSince(this.t0);
  }
  hide(): void {
    /* the board is cleared before any other write */
  }
  end(): void {
    this.board.drop(this);
  }
}
