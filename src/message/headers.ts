/**
 * The header block of a message: finding where it ends (incrementally, while the
 * data arrives), splitting it into fields, and editing it without disturbing the
 * bytes of fields nobody touched.
 *
 * Where the header block ends follows RFC 5322 pragmatically: it is the run of
 * lines at the top that are header fields ("name:" with a printable-ASCII name,
 * optionally followed by blanks before the colon as in the obsolete syntax) or
 * continuation lines (starting with SP/HT) of such a field. An empty line ends it
 * and is consumed as the separator. Any other line (no colon, a space inside the
 * name, a first line starting with whitespace, an mbox "From " line...) also ends
 * it, but is not consumed: it is the first body line, and the message has no
 * separator. Either way the bytes stay exactly as received.
 */
import type { HeaderField, MessageHeaders } from './types';

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;
const COLON = 0x3a;

const CRLF = Buffer.from('\r\n', 'latin1');

function isNameByte(c: number): boolean {
  return c >= 33 && c <= 126 && c !== COLON;
}

/** Where a header block ends inside the data it was found in. */
export interface HeaderBlockEnd {
  /** Offset just past the last header field (fields occupy [0, fieldsEnd)). */
  fieldsEnd: number;
  /** Offset of the first body byte: fieldsEnd, plus the separator line if there was one. */
  bodyStart: number;
}

type LineState = 'start' | 'cr' | 'name' | 'namews' | 'rest';

/**
 * Finds the end of the header block in data fed in arbitrary pieces and keeps a
 * copy of the header bytes. Only the name part of each line is looked at byte by
 * byte; the rest of a field line is skipped with indexOf, and nothing after the
 * header block is examined or copied.
 */
export class HeaderScanner {
  private acc: Buffer = Buffer.allocUnsafe(4096);
  /** Bytes of header data copied into acc. */
  private length = 0;
  private state: LineState = 'start';
  private lineStart = 0;
  private haveField = false;
  private end_: HeaderBlockEnd | undefined;

  /** Set once the end of the header block is known. */
  get end(): HeaderBlockEnd | undefined {
    return this.end_;
  }

  /** Bytes fed so far that belong (or may still belong) to the header block. */
  get scanned(): number {
    return this.length;
  }

  /** Scans the next piece of data; returns true when the header block is complete. */
  feed(b: Buffer): boolean {
    if (this.end_) return true;
    const base = this.length;
    const n = b.length;
    let i = 0;
    let stop = -1; // local offset in b where the block (separator included) ends
    scan: while (i < n) {
      switch (this.state) {
        case 'rest': {
          const lf = b.indexOf(LF, i);
          if (lf === -1) {
            i = n;
            break scan;
          }
          i = lf + 1;
          this.state = 'start';
          this.lineStart = base + i;
          break;
        }
        case 'start': {
          const c = b[i];
          if (c === CR) {
            this.state = 'cr';
            i++;
          } else if (c === LF) {
            // A lone LF as the empty line only occurs in data that breaks the
            // bare-newline policy; it is taken as the separator like "\r\n".
            this.end_ = { fieldsEnd: base + i, bodyStart: base + i + 1 };
            stop = i + 1;
            break scan;
          } else if (c === SP || c === HT) {
            if (!this.haveField) {
              this.endBeforeLine();
              stop = this.lineStart - base;
              break scan;
            }
            this.state = 'rest';
            i++;
          } else if (isNameByte(c)) {
            this.state = 'name';
            i++;
          } else {
            this.endBeforeLine();
            stop = this.lineStart - base;
            break scan;
          }
          break;
        }
        case 'cr': {
          if (b[i] === LF) {
            this.end_ = { fieldsEnd: this.lineStart, bodyStart: base + i + 1 };
            stop = i + 1;
          } else {
            this.endBeforeLine();
            stop = this.lineStart - base;
          }
          break scan;
        }
        case 'name': {
          let c = b[i];
          while (isNameByte(c) && ++i < n) c = b[i];
          if (i === n) break scan;
          if (c === COLON) {
            this.haveField = true;
            this.state = 'rest';
            i++;
          } else if (c === SP || c === HT) {
            this.state = 'namews';
            i++;
          } else {
            this.endBeforeLine();
            stop = this.lineStart - base;
            break scan;
          }
          break;
        }
        case 'namews': {
          const c = b[i];
          if (c === COLON) {
            this.haveField = true;
            this.state = 'rest';
          } else if (c !== SP && c !== HT) {
            this.endBeforeLine();
            stop = this.lineStart - base;
            break scan;
          }
          i++;
          break;
        }
      }
    }
    // The end can lie before the start of this piece (a non-header line begun in
    // an earlier piece): nothing of it is copied then, and the copy is cut back.
    const take = stop === -1 ? n : Math.max(0, stop);
    this.copy(b, take);
    return this.end_ !== undefined;
  }

  /** No more data: whatever has been seen is the header block. */
  finish(): HeaderBlockEnd {
    if (!this.end_) {
      if (this.state === 'start' || this.state === 'rest') {
        // Complete lines, or a last field line without its CRLF.
        this.end_ = { fieldsEnd: this.length, bodyStart: this.length };
      } else {
        // An unfinished line that never became a field is body.
        this.endBeforeLine();
      }
    }
    return this.end_!;
  }

  /**
   * Ends the block before the current line, as if it were a body line: used for
   * a header block that grows past its size limit.
   */
  cut(): HeaderBlockEnd {
    if (!this.end_) this.endBeforeLine();
    return this.end_!;
  }

  /** The header block bytes (fields + separator), valid once the end is known. */
  block(): Buffer {
    const end = this.end_ ? this.end_.bodyStart : this.length;
    return this.acc.subarray(0, end);
  }

  /** Builds the MessageHeaders for the block found. */
  headers(): HeaderBlock {
    const end = this.finish();
    const buf = Buffer.from(this.block()); // own copy, so acc's spare capacity is freed
    const fields = parseHeaderFields(buf.subarray(0, end.fieldsEnd));
    const separator = end.bodyStart > end.fieldsEnd ? buf.subarray(end.fieldsEnd, end.bodyStart) : null;
    this.acc = Buffer.alloc(0);
    return new HeaderBlock(fields, separator);
  }

  private endBeforeLine(): void {
    this.end_ = { fieldsEnd: this.lineStart, bodyStart: this.lineStart };
  }

  private copy(b: Buffer, take: number): void {
    if (this.end_ && this.end_.bodyStart < this.length) {
      this.length = this.end_.bodyStart;
      return;
    }
    if (take === 0) return;
    const need = this.length + take;
    if (need > this.acc.length) {
      // Doubling keeps the copying linear even when data arrives a byte at a time.
      const grown = Buffer.allocUnsafe(Math.max(need, this.acc.length * 2));
      this.acc.copy(grown, 0, 0, this.length);
      this.acc = grown;
    }
    b.copy(this.acc, this.length, 0, take);
    this.length = need;
  }
}

/** Locates the header block of a complete message held in one Buffer. */
export function findHeaderBlockEnd(data: Buffer): HeaderBlockEnd {
  const s = new HeaderScanner();
  s.feed(data);
  return s.finish();
}

/** Parses the header block at the top of a complete message held in one Buffer. */
export function parseHeaderBlock(data: Buffer): { headers: HeaderBlock; bodyStart: number } {
  const s = new HeaderScanner();
  s.feed(data);
  const end = s.finish();
  return { headers: s.headers(), bodyStart: end.bodyStart };
}

function trimWsp(s: string): string {
  // Not String.prototype.trim: it also strips U+00A0, and byte 0xA0 decoded as
  // latin1 is often half of a UTF-8 character.
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === SP || s.charCodeAt(a) === HT)) a++;
  while (b > a && (s.charCodeAt(b - 1) === SP || s.charCodeAt(b - 1) === HT)) b--;
  return s.slice(a, b);
}

/** Builds a HeaderField from its raw bytes (first line, continuation lines, final CRLF). */
export function makeField(raw: Buffer): HeaderField {
  const colon = raw.indexOf(COLON);
  let name: string;
  let value: string;
  if (colon === -1) {
    name = trimWsp(raw.toString('latin1').replace(/\r?\n|\r/g, ''));
    value = '';
  } else {
    name = trimWsp(raw.toString('latin1', 0, colon));
    // Unfolding removes the line breaks and keeps the whitespace that follows
    // them (RFC 5322 2.2.3); inside a field every line break is such a fold.
    value = trimWsp(raw.toString('latin1', colon + 1).replace(/\r?\n|\r/g, ''));
  }
  return Object.freeze({ name, value, raw });
}

/**
 * Splits a header block (fields only, no separator) into fields: a field ends at
 * a line break not followed by SP/HT.
 */
export function parseHeaderFields(block: Buffer): HeaderField[] {
  const fields: HeaderField[] = [];
  const n = block.length;
  let pos = 0;
  while (pos < n) {
    let lf = block.indexOf(LF, pos);
    let next = lf === -1 ? n : lf + 1;
    while (next < n && (block[next] === SP || block[next] === HT)) {
      lf = block.indexOf(LF, next);
      next = lf === -1 ? n : lf + 1;
    }
    fields.push(makeField(block.subarray(pos, next)));
    pos = next;
  }
  return fields;
}

function checkName(name: string): void {
  if (name.length === 0) throw new TypeError('header field name is empty');
  for (let i = 0; i < name.length; i++) {
    if (!isNameByte(name.charCodeAt(i))) {
      throw new TypeError(`invalid header field name ${JSON.stringify(name)}: only printable ASCII without ":"`);
    }
  }
}

function encodeValue(value: string): Buffer {
  // Values are read as latin1 (get() and friends), so a value that fits latin1 is
  // written back the same way: reading a field and writing it back keeps its
  // bytes, 8-bit ones included. Anything beyond latin1 can only be UTF-8.
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0xff) return Buffer.from(value, 'utf8');
  }
  return Buffer.from(value, 'latin1');
}

/**
 * Line breaks allowed inside a new value: folds, CRLF then SP/HT then some
 * text, so the field cannot end early and no whitespace-only line (an end of
 * the header block to some MTAs) can appear.
 */
const FOLD = /\r\n(?=[ \t]+[^ \t\r\n])/g;

/**
 * Builds a new field `Name: value\r\n`. The value is written as given: folded
 * only where it has folds (see FOLD); other CR and LF are refused.
 */
export function newField(name: string, value: string): HeaderField {
  checkName(name);
  if (/[\r\n]/.test(value.replace(FOLD, ''))) {
    throw new TypeError(`header field value for ${name} contains CR or LF other than folding (CRLF, whitespace, text); add a field per value`);
  }
  const raw = Buffer.concat([Buffer.from(name + ': ', 'latin1'), encodeValue(value), CRLF]);
  return Object.freeze({ name, value: trimWsp(value.replace(/\r\n/g, '')), raw });
}

/**
 * MessageHeaders over the received fields. Edits change the field list only;
 * a field that is not removed keeps its received bytes.
 */
export class HeaderBlock implements MessageHeaders {
  private list: HeaderField[];
  /** The empty line that ended the received block, or null if there was none. */
  private readonly separator: Buffer | null;
  private edited = false;
  private fieldBytes: Buffer | undefined;
  /**
   * Decides whether a block received without a separator gets one. The message
   * replaces this (a body must be set off once anything was changed); on its
   * own the block adds one as soon as it is edited, which is always valid.
   */
  private wantsSeparator: (headersEdited: boolean) => boolean = (edited) => edited;

  constructor(fields: HeaderField[], separator: Buffer | null) {
    this.list = fields.slice();
    this.separator = separator;
  }

  /** True if the received block ended with an empty line. */
  get hasSeparator(): boolean {
    return this.separator !== null;
  }

  /** True once a field was added or removed. */
  get modified(): boolean {
    return this.edited;
  }

  /** Used by SpooledMessage, which knows whether a body follows. */
  setSeparatorPolicy(fn: (headersEdited: boolean) => boolean): void {
    this.wantsSeparator = fn;
  }

  fields(): readonly HeaderField[] {
    return this.list.slice();
  }

  get(name: string): string | undefined {
    const key = name.toLowerCase();
    return this.list.find((f) => f.name.toLowerCase() === key)?.value;
  }

  getAll(name: string): string[] {
    const key = name.toLowerCase();
    return this.list.filter((f) => f.name.toLowerCase() === key).map((f) => f.value);
  }

  count(name: string): number {
    const key = name.toLowerCase();
    let n = 0;
    for (const f of this.list) if (f.name.toLowerCase() === key) n++;
    return n;
  }

  prepend(name: string, value: string): void {
    this.list.unshift(newField(name, value));
    this.changed();
  }

  append(name: string, value: string): void {
    this.list.push(newField(name, value));
    this.changed();
  }

  remove(name: string, match?: (field: HeaderField) => boolean): number {
    const key = name.toLowerCase();
    const before = this.list.length;
    this.list = this.list.filter((f) => f.name.toLowerCase() !== key || (match !== undefined && !match(f)));
    const removed = before - this.list.length;
    if (removed) this.changed();
    return removed;
  }

  toBuffer(): Buffer {
    const sep = this.separator ?? (this.wantsSeparator(this.edited) ? CRLF : null);
    const fields = this.fieldsBuffer(sep !== null);
    if (!sep) return fields;
    return Buffer.concat([fields, sep], fields.length + sep.length);
  }

  private changed(): void {
    this.edited = true;
    this.fieldBytes = undefined;
  }

  private fieldsBuffer(followed: boolean): Buffer {
    if (!this.fieldBytes) {
      const parts: Buffer[] = [];
      for (let i = 0; i < this.list.length; i++) {
        const raw = this.list[i].raw;
        parts.push(raw);
        // Only a last line at the very end of the data can lack its line
        // break; once something follows it, it needs one to stay a line.
        if (i < this.list.length - 1 && raw[raw.length - 1] !== LF) parts.push(CRLF);
      }
      this.fieldBytes = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    }
    const f = this.fieldBytes;
    if (followed && f.length > 0 && f[f.length - 1] !== LF) return Buffer.concat([f, CRLF]);
    return f;
  }
}
