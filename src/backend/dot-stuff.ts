import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const CRLF_DOT = Buffer.from('\r\n.');
const DOT_BUF = Buffer.from('.');
const CRLF = Buffer.from('\r\n');
/** The end-of-data line; the CRLF before it belongs to the last message line. */
export const DATA_TERMINATOR = Buffer.from('.\r\n');

/** Where the previous chunk left us: only CRLF (or the start of the message) begins a line. */
const enum At {
  MidLine,
  AfterCr,
  LineStart,
}

/**
 * Incremental SMTP dot-stuffing (RFC 5321 4.5.2) on Buffers.
 *
 * Only a "." at the very start or right after CRLF is doubled: bare CR or LF never start a line here,
 * matching the CRLF-normalised input the proxy produces. Chunks without a line-leading dot are passed
 * through without copying.
 */
export class DotStuffer {
  private at: At = At.LineStart;
  /** Message bytes seen so far (before stuffing). */
  bytesIn = 0;

  /** The stuffed form of `chunk`; may be `chunk` itself. */
  push(chunk: Buffer): Buffer {
    const len = chunk.length;
    if (len === 0) return chunk;
    this.bytesIn += len;
    // Dots to double, as indexes into chunk; the extra dot goes in front of each.
    let first = -1;
    if (this.at === At.LineStart && chunk[0] === DOT) first = 0;
    else if (this.at === At.AfterCr && chunk[0] === LF && len > 1 && chunk[1] === DOT) first = 1;
    let next = chunk.indexOf(CRLF_DOT);

    const prevAt = this.at;
    if (len >= 2 && chunk[len - 2] === CR && chunk[len - 1] === LF) this.at = At.LineStart;
    else if (chunk[len - 1] === CR) this.at = At.AfterCr;
    else if (len === 1 && chunk[0] === LF && prevAt === At.AfterCr) this.at = At.LineStart;
    else this.at = At.MidLine;

    if (first < 0 && next < 0) return chunk;
    const parts: Buffer[] = [];
    let start = 0;
    const insertAt = (p: number): void => {
      if (p > start) parts.push(chunk.subarray(start, p));
      parts.push(DOT_BUF);
      start = p; // the original dot starts the next part
    };
    if (first >= 0) insertAt(first);
    while (next >= 0) {
      insertAt(next + 2);
      next = chunk.indexOf(CRLF_DOT, next + 3);
    }
    parts.push(chunk.subarray(start));
    return Buffer.concat(parts);
  }

  /** True when the bytes so far end with CRLF, or there were none (an empty message needs no CRLF). */
  get atLineStart(): boolean {
    return this.at === At.LineStart;
  }

  /** What must follow the last chunk: CRLF if the message did not end with one, then ".\r\n". */
  terminator(): Buffer {
    return this.at === At.LineStart ? DATA_TERMINATOR : Buffer.concat([CRLF, DATA_TERMINATOR]);
  }
}

export interface DotStuffOptions extends TransformOptions {
  /** Append the end-of-data sequence (with a CRLF first when needed) at the end. Default false. */
  terminate?: boolean;
}

/** A Transform around DotStuffer, for callers that want to pipe. */
export class DotStuffTransform extends Transform {
  readonly stuffer = new DotStuffer();
  private readonly terminate: boolean;

  constructor(opts: DotStuffOptions = {}) {
    const { terminate = false, ...rest } = opts;
    super(rest);
    this.terminate = terminate;
  }

  override _transform(chunk: Buffer | string, encoding: BufferEncoding, cb: TransformCallback): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk;
    cb(null, this.stuffer.push(buf));
  }

  override _flush(cb: TransformCallback): void {
    if (this.terminate) this.push(this.stuffer.terminator());
    cb();
  }
}

/** Dot-stuff a whole message at once (tests, small messages). Does not add the terminator. */
export function dotStuff(message: Buffer): Buffer {
  return new DotStuffer().push(message);
}
