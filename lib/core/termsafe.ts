/**
 * What a guest wrote, made safe for the user's terminal: a guest must not be
 * able to drive it (ESC[6n makes the terminal answer into the next prompt;
 * OSC sequences set titles or the clipboard). Printable text, newlines, CRLF,
 * tabs and colour (SGR: ESC [ digits ; : m) pass; every other control byte is
 * shown in caret notation (ESC [ 6 n -> ^[[6n, BEL -> ^G, a lone CR -> ^M,
 * DEL -> ^?), and C1 controls (U+0080-U+009F, which some terminals obey) as
 * \xNN. Only for a terminal: a pipe gets the bytes as they are.
 *
 * Stateful: a sequence or a UTF-8 character split between two chunks is
 * held back until the next one (or `end`).
 */
import { StringDecoder } from 'node:string_decoder';

/** An SGR sequence whose parameters could still continue: held for the next chunk (bounded). */
const SGR_PARTIAL = /^\x1b(\[[0-9;:]{0,64})?$/;
const SGR = /^\x1b\[[0-9;:]{0,64}m/;

const caret = (c: number): string => (c === 0x7f ? '^?' : `^${String.fromCharCode(c + 0x40)}`);

export class TermFilter {
  private readonly dec = new StringDecoder('utf8');
  /** text held back: an unfinished escape sequence, or a CR that may start CRLF */
  private held = '';

  /** The safe text for this chunk (without what must wait for the next one). */
  write(chunk: Buffer | string): string {
    return this.run(this.held + (typeof chunk === 'string' ? chunk : this.dec.write(chunk)), false);
  }

  /** What was held back, made safe: the input ended. */
  end(): string {
    return this.run(this.held + this.dec.end(), true);
  }

  private run(s: string, final: boolean): string {
    this.held = '';
    let out = '';
    let i = 0;
    while (i < s.length) {
      const c = s.charCodeAt(i);
      if (c === 0x1b) {
        const rest = s.slice(i, i + 70);
        const m = SGR.exec(rest);
        if (m) {
          out += m[0];
          i += m[0].length;
          continue;
        }
        if (!final && SGR_PARTIAL.test(s.slice(i))) {
          this.held = s.slice(i);
          return out;
        }
        out += '^[';
        i++;
        continue;
      }
      if (c === 0x0d) {
        if (i + 1 === s.length && !final) {
          this.held = '\r';
          return out;
        }
        const next = s.charCodeAt(i + 1);
        out += next === 0x0a || next === 0x0d ? '\r' : '^M'; // CRLF, and CR CR LF from a getty
        i++;
        continue;
      }
      if ((c < 0x20 && c !== 0x0a && c !== 0x09) || c === 0x7f) out += caret(c);
      else if (c >= 0x80 && c <= 0x9f) out += `\\x${c.toString(16)}`;
      else out += s[i];
      i++;
    }
    return out;
  }
}

/** One buffer made safe at once (the whole of it: nothing is held back). */
export function termSafe(data: Buffer | string): string {
  const f = new TermFilter();
  return f.write(data) + f.end();
}

/**
 * A sink for a guest's bytes: filtered through a TermFilter when `out` is a
 * terminal, passed as they are otherwise.
 */
export function guestSink(
  out: NodeJS.WritableStream,
  tty = Boolean((out as NodeJS.WriteStream).isTTY),
): { write(d: Buffer): void; end(): void } {
  if (!tty) return { write: (d) => void out.write(d), end: () => undefined };
  const f = new TermFilter();
  return {
    write: (d) => {
      const s = f.write(d);
      if (s) out.write(s);
    },
    end: () => {
      const s = f.end();
      if (s) out.write(s);
    },
  };
}
