/**
 * Splits a byte stream into JSON messages, as QMP and the guest agent send
 * them: one JSON object per line. With `delimited`, a 0xFF byte (the guest
 * agent's sync delimiter) throws away whatever came before it.
 */
export class JsonLines {
  private buf = '';
  private readonly delimited: boolean;
  /** Bytes seen since the last 0xFF; in delimited mode lines are dropped until one arrives. */
  private awaitingDelimiter = false;

  constructor(opts: { delimited?: boolean } = {}) {
    this.delimited = opts.delimited ?? false;
  }

  /** In delimited mode: drop everything until the next 0xFF byte. */
  expectDelimiter(): void {
    if (!this.delimited) return;
    this.awaitingDelimiter = true;
    this.buf = '';
  }

  /** Feed bytes; returns the complete messages (objects) and lines that did not parse. */
  push(chunk: Buffer): { messages: unknown[]; garbage: string[] } {
    let data = chunk;
    if (this.delimited) {
      const ff = chunk.lastIndexOf(0xff);
      if (ff >= 0) {
        this.awaitingDelimiter = false;
        this.buf = '';
        data = chunk.subarray(ff + 1);
      } else if (this.awaitingDelimiter) {
        return { messages: [], garbage: [] };
      }
    }
    this.buf += data.toString('utf8');
    const messages: unknown[] = [];
    const garbage: string[] = [];
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      try {
        messages.push(JSON.parse(line));
      } catch {
        garbage.push(line);
      }
    }
    return { messages, garbage };
  }
}
