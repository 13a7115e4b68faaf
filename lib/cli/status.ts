/**
 * A live status line on stderr, for long work: redrawn in place on a
 * terminal (phase, elapsed time, a detail such as the last console line),
 * absent elsewhere. Log lines printed through `say` appear above it.
 */
import { prog, useColor } from '../core/prog.ts';

export class StatusLine {
  private readonly tty: boolean;
  private phase = '';
  private detail = '';
  private readonly t0 = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private shown = false;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {
    this.tty = Boolean(stream.isTTY) && process.env.TERM !== 'dumb';
    if (this.tty) {
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

  /** The live line's detail (only shown on a terminal). */
  update(detail: string): void {
    this.detail = detail.replace(/[\x00-\x1f\x7f]/g, ' ').trim();
    this.draw();
  }

  /** A line that stays, printed above the live line. */
  say(line: string): void {
    this.clear();
    this.stream.write(`${prog()}: ${line}\n`);
    this.draw();
  }

  elapsed(): string {
    const s = Math.round((Date.now() - this.t0) / 1000);
    return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
  }

  private draw(): void {
    if (!this.tty || !this.phase) return;
    const cols = this.stream.columns || 80;
    const dim = useColor(this.stream) ? ['\x1b[2m', '\x1b[0m'] : ['', ''];
    let text = `${this.phase} ${this.elapsed()}${this.detail ? ` | ${this.detail}` : ''}`;
    if (text.length > cols - 1) text = text.slice(0, cols - 2) + '…';
    this.stream.write(`\r${dim[0]}${text}${dim[1]}\x1b[K`);
    this.shown = true;
  }

  private clear(): void {
    if (this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.clear();
    this.phase = '';
  }
}
