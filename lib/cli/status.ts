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

export class StatusLine {
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
      const own = stream.write;
      const hadOwn = Object.hasOwn(stream, 'write');
      const raw = own.bind(stream) as (chunk: string) => boolean;
      this.raw = raw;
      stream.write = ((chunk: unknown, ...rest: unknown[]) => {
        if (this.shown) raw('\r\x1b[K');
        this.shown = false;
        const r = (own as (...a: unknown[]) => boolean).call(stream, chunk, ...rest);
        const text =
          typeof chunk === 'string'
            ? chunk
            : Buffer.isBuffer(chunk) || chunk instanceof Uint8Array
              ? Buffer.from(chunk).toString('latin1')
              : '';
        if (text.length) this.midLine = !text.endsWith('\n');
        if (!this.midLine) this.draw();
        return r;
      }) as typeof stream.write;
      this.restore = () => {
        if (hadOwn) stream.write = own;
        else delete (stream as { write?: unknown }).write; // the prototype's again
      };
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
    this.stream.write(`${prog()}: ${line}\n`); // cleared first and drawn again after, on a terminal
  }

  private out(text: string): void {
    if (this.raw) this.raw(text);
    else this.stream.write(text);
  }

  elapsed(): string {
    const s = Math.round((Date.now() - this.t0) / 1000);
    return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
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
