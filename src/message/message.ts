/**
 * The spooled message handed to plugins. The received bytes stay where the spool
 * put them (memory chunks or the temp file); the body is a list of parts (new
 * Buffers and ranges of the received body), so edits never copy the message and
 * an unedited message streams out exactly as received.
 */
import { Readable } from 'node:stream';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { BodyPart, BodyRange, Message } from './types';
import type { HeaderBlock } from './headers';
import type { SpoolViolation } from './spool';

const CR = 0x0d;
const LF = 0x0a;
const READ_HIGH_WATER_MARK = 96 * 1024;
/*
 * A spool file is read back in chunks of 96 KiB: under glibc malloc's mmap
 * threshold (128 KiB). Once a bigger Buffer is freed, glibc raises that
 * threshold and serves later big Buffers from its heap, which it cannot give
 * back to the system while anything lives above them: with 1 MiB chunks the
 * 5 MB cells of the bench left 40-55 MB of freed memory in prequeue's RSS, with
 * 96 KiB 25-30 MB less, at the same CPU a message (bench/README.md). Each
 * message being relayed holds a few chunks at once (the stream's buffer, the
 * socket's queue); when very many are read back at once the chunks shrink so
 * that together they stay near READ_BACK_BUDGET.
 */
const READ_BACK_BUDGET = 8 * 1024 * 1024;
const MIN_READ_CHUNK = 64 * 1024;
let readingBack = 0;
/** A message stream holds one chunk ahead of its reader, not a megabyte's worth of them. */
const STREAM_HIGH_WATER_MARK = MIN_READ_CHUNK;

/** The chunk size for one more file read back now. */
export function readBackChunkSize(active = readingBack + 1): number {
  return Math.max(MIN_READ_CHUNK, Math.min(READ_HIGH_WATER_MARK, Math.floor(READ_BACK_BUDGET / active / MIN_READ_CHUNK) * MIN_READ_CHUNK));
}

/** bodyBuffer()'s limit when none is given. */
export const DEFAULT_BODY_BUFFER_LIMIT = 16 * 1024 * 1024;

/** Where the received bytes are kept. Offsets are from the start of the message. */
export interface SpoolStore {
  readonly size: number;
  /** The temp file, for a file-backed store. */
  readonly path: string | undefined;
  /** The bytes [start, end) in pieces, read lazily. */
  chunks(start: number, end: number): AsyncIterable<Buffer>;
  /** The bytes [start, end) as a new Buffer. */
  read(start: number, end: number): Promise<Buffer>;
  /** Drops the data (the file itself is removed by its owner). */
  release(): void;
}

/** Received bytes held as the list of chunks they arrived in (never concatenated). */
export class MemoryStore implements SpoolStore {
  readonly path = undefined;
  readonly size: number;
  private list: readonly Buffer[];
  /** Start offset of each chunk, for binary search. */
  private readonly offsets: number[];
  private released = false;

  constructor(chunks: readonly Buffer[]) {
    this.list = chunks.filter((c) => c.length > 0);
    this.offsets = new Array<number>(this.list.length);
    let pos = 0;
    for (let i = 0; i < this.list.length; i++) {
      this.offsets[i] = pos;
      pos += this.list[i].length;
    }
    this.size = pos;
  }

  async *chunks(start: number, end: number): AsyncGenerator<Buffer> {
    yield* this.slices(start, end);
  }

  async read(start: number, end: number): Promise<Buffer> {
    return Buffer.concat(this.slices(start, end), end - start);
  }

  release(): void {
    this.released = true;
    this.list = [];
  }

  /** The bytes [start, end) as subarrays of the chunks, at once. */
  slices(start: number, end: number): Buffer[] {
    if (this.released) throw new Error('message data was disposed');
    checkRange(start, end, this.size);
    const out: Buffer[] = [];
    if (start === end) return out;
    let lo = 0;
    let hi = this.list.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid] <= start) lo = mid;
      else hi = mid - 1;
    }
    for (let i = lo; i < this.list.length && this.offsets[i] < end; i++) {
      const off = this.offsets[i];
      const c = this.list[i];
      out.push(c.subarray(Math.max(0, start - off), Math.min(c.length, end - off)));
    }
    return out;
  }
}

/** Received bytes in the spool's temp file. */
export class FileStore implements SpoolStore {
  private released = false;

  constructor(
    readonly path: string,
    readonly size: number,
  ) {}

  /**
   * Read on demand, one chunk at a time, into a new Buffer each (the reader may
   * hold on to it): unlike a ReadStream, nothing is read ahead of the reader,
   * so a message being relayed holds the chunk its stream buffers and the one
   * the socket is sending, no third.
   */
  async *chunks(start: number, end: number): AsyncGenerator<Buffer> {
    if (this.released) throw new Error('message data was disposed');
    checkRange(start, end, this.size);
    if (start === end) return;
    const size = readBackChunkSize();
    readingBack++;
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(this.path, 'r');
      let pos = start;
      while (pos < end) {
        const buf = Buffer.allocUnsafe(Math.min(size, end - pos));
        let got = 0;
        while (got < buf.length) {
          const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
          if (bytesRead === 0) throw new Error(`spool file ${this.path} is shorter than expected`);
          got += bytesRead;
        }
        pos += got;
        yield buf;
      }
    } finally {
      readingBack--;
      await fh?.close();
    }
  }

  async read(start: number, end: number): Promise<Buffer> {
    if (this.released) throw new Error('message data was disposed');
    checkRange(start, end, this.size);
    const len = end - start;
    const buf = Buffer.allocUnsafe(len);
    if (len === 0) return buf;
    const fh = await fsp.open(this.path, 'r');
    try {
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, start + got);
        if (bytesRead === 0) throw new Error(`spool file ${this.path} is shorter than expected`);
        got += bytesRead;
      }
    } finally {
      await fh.close();
    }
    return buf;
  }

  release(): void {
    this.released = true;
  }
}

function checkRange(start: number, end: number, size: number): void {
  if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= size)) {
    throw new RangeError(`range [${start}, ${end}) is outside [0, ${size})`);
  }
}

/**
 * Turns every bare CR and bare LF into CRLF. Data a plugin adds must not bring
 * back what the spool keeps out (see spool.ts): a "\n.\n" in a footer would be
 * an end-of-data sequence for some MTAs. Returns the Buffer itself when clean.
 */
export function toCrlf(b: Buffer): Buffer {
  const inserts: number[] = [];
  const n = b.length;
  let cr = b.indexOf(CR);
  let lf = b.indexOf(LF);
  while (cr !== -1 || lf !== -1) {
    if (cr !== -1 && (lf === -1 || cr < lf)) {
      if (cr + 1 === lf) {
        cr = b.indexOf(CR, lf + 1);
        lf = b.indexOf(LF, lf + 1);
      } else {
        inserts.push(cr + 1, LF);
        cr = cr + 1 < n ? b.indexOf(CR, cr + 1) : -1;
      }
    } else {
      inserts.push(lf, CR);
      lf = b.indexOf(LF, lf + 1);
    }
  }
  if (!inserts.length) return b;
  const out = Buffer.allocUnsafe(n + inserts.length / 2);
  let src = 0;
  let dst = 0;
  for (let k = 0; k < inserts.length; k += 2) {
    dst += b.copy(out, dst, src, inserts[k]);
    out[dst++] = inserts[k + 1];
    src = inserts[k];
  }
  b.copy(out, dst, src, n);
  return out;
}

function partLength(p: BodyPart): number {
  return Buffer.isBuffer(p) ? p.length : p.end - p.start;
}

export interface SpooledMessageInit {
  store: SpoolStore;
  headers: HeaderBlock;
  /** Offset of the first body byte in the store. */
  bodyStart: number;
  violations?: readonly SpoolViolation[];
  truncated?: boolean;
  /** Frees what the store lives in (the spool's temp file). */
  dispose?: () => Promise<void>;
}

export class SpooledMessage implements Message {
  /** Bytes spooled (header + body) before any change; after normalization if the spool normalized. */
  readonly receivedSize: number;
  readonly headers: HeaderBlock;
  readonly hasBody: boolean;
  /** What the spool found wrong with the data (empty for a clean message). */
  readonly violations: readonly SpoolViolation[];
  /** True if the message was over the size limit and only its first maxSize bytes were kept. */
  readonly truncated: boolean;

  private readonly store: SpoolStore;
  private readonly bodyStart: number;
  private readonly bodyLength: number;
  private parts: BodyPart[];
  private bodyEdited = false;
  private disposed = false;
  private disposing: Promise<void> | undefined;
  private readonly disposeStore: (() => Promise<void>) | undefined;

  constructor(init: SpooledMessageInit) {
    this.store = init.store;
    this.headers = init.headers;
    this.bodyStart = init.bodyStart;
    this.receivedSize = init.store.size;
    this.bodyLength = init.store.size - init.bodyStart;
    this.hasBody = init.headers.hasSeparator;
    this.violations = init.violations ?? [];
    this.truncated = init.truncated ?? false;
    this.disposeStore = init.dispose;
    this.parts = this.bodyLength > 0 ? [this.originalBody()] : [];
    // A message received without a separator gets one only once it is changed
    // and has a body: otherwise a new field would run into the first body line
    // (or an added body would be read as header fields).
    this.headers.setSeparatorPolicy((headersEdited) => (headersEdited || this.bodyEdited) && this.bodySize() > 0);
  }

  /** The temp file holding the received bytes, if the message was big enough for one. */
  get tempPath(): string | undefined {
    return this.store.path;
  }

  /** True once the body was changed. */
  get bodyModified(): boolean {
    return this.bodyEdited;
  }

  originalBody(): BodyRange {
    return { kind: 'range', start: 0, end: this.bodyLength };
  }

  /** The current body as a list of parts (a copy). */
  bodyParts(): BodyPart[] {
    return this.parts.slice();
  }

  bodySize(): number {
    let n = 0;
    for (const p of this.parts) n += partLength(p);
    return n;
  }

  size(): number {
    return this.headers.toBuffer().length + this.bodySize();
  }

  bodyStream(): Readable {
    return Readable.from(this.bodyChunks(this.parts.slice(), this.bodyEdited), {
      objectMode: false,
      highWaterMark: STREAM_HIGH_WATER_MARK,
    });
  }

  receivedBodyStream(): Readable {
    const parts: BodyPart[] = this.bodyLength > 0 ? [this.originalBody()] : [];
    return Readable.from(this.bodyChunks(parts, false), { objectMode: false, highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  stream(): Readable {
    // Snapshot now: edits made while the message streams do not mix into it.
    const head = this.headers.toBuffer();
    const parts = this.parts.slice();
    const edited = this.bodyEdited;
    if (!edited && this.store instanceof MemoryStore) return this.memoryStream(head, parts);
    const self = this;
    async function* all(): AsyncGenerator<Buffer> {
      if (head.length) yield head;
      yield* self.bodyChunks(parts, edited);
    }
    return Readable.from(all(), { objectMode: false, highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  /**
   * An unedited message held in memory, without an async generator: one promise
   * and a few microtasks per chunk add up at thousands of small messages a second.
   * The bytes are taken when reading starts, as the generator does.
   */
  private memoryStream(head: Buffer, parts: BodyPart[]): Readable {
    const self = this;
    const store = this.store as MemoryStore;
    let chunks: Buffer[] | undefined;
    let next = 0;
    return new Readable({
      highWaterMark: STREAM_HIGH_WATER_MARK,
      read: function (this: Readable) {
        if (!chunks) {
          try {
            self.checkLive();
            chunks = head.length ? [head] : [];
            for (const p of parts) {
              if (Buffer.isBuffer(p)) chunks.push(p);
              else for (const c of store.slices(self.bodyStart + p.start, self.bodyStart + p.end)) if (c.length) chunks.push(c);
            }
          } catch (err) {
            this.destroy(err as Error);
            return;
          }
        }
        while (next < chunks.length) if (!this.push(chunks[next++])) return;
        this.push(null);
      },
    });
  }

  async bodyTail(n: number): Promise<Buffer> {
    this.checkLive();
    const parts = this.parts.slice();
    const pieces: Buffer[] = [];
    let need = Math.max(0, Math.floor(n));
    for (let i = parts.length - 1; i >= 0 && need > 0; i--) {
      const p = parts[i];
      const len = partLength(p);
      const take = Math.min(len, need);
      if (Buffer.isBuffer(p)) pieces.push(p.subarray(len - take));
      else pieces.push(await this.store.read(this.bodyStart + p.end - take, this.bodyStart + p.end));
      need -= take;
    }
    return Buffer.concat(pieces.reverse());
  }

  async bodyBuffer(limit: number = DEFAULT_BODY_BUFFER_LIMIT): Promise<Buffer> {
    this.checkLive();
    const parts = this.parts.slice();
    let size = 0;
    for (const p of parts) size += partLength(p);
    if (size > limit) {
      const err = new Error(
        `message body is ${size} bytes, more than the ${limit} bytes bodyBuffer() may read into memory; use bodyStream() or pass a higher limit`,
      );
      (err as NodeJS.ErrnoException).code = 'ERR_BODY_TOO_LARGE';
      throw err;
    }
    const pieces: Buffer[] = [];
    for (const p of parts) {
      pieces.push(Buffer.isBuffer(p) ? p : await this.store.read(this.bodyStart + p.start, this.bodyStart + p.end));
    }
    return Buffer.concat(pieces, size);
  }

  /**
   * Replaces the body. Buffer parts are kept (not copied) after their bare CR/LF
   * are turned into CRLF; ranges refer to the received body (see originalBody()).
   * A range should not start or end inside a CRLF: streaming fails rather than
   * relay the bare CR or LF that would leave.
   */
  replaceBody(parts: BodyPart[]): void {
    const next: BodyPart[] = [];
    for (const p of parts) {
      const part = this.checkPart(p);
      if (partLength(part) > 0) next.push(part);
    }
    this.parts = next;
    this.bodyEdited = true;
  }

  /** Strings are encoded as UTF-8; bare CR/LF become CRLF. */
  appendBody(data: Buffer | string): void {
    const b = toCrlf(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
    if (b.length) this.parts.push(b);
    this.bodyEdited = true;
  }

  /** Strings are encoded as UTF-8; bare CR/LF become CRLF. */
  prependBody(data: Buffer | string): void {
    const b = toCrlf(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
    if (b.length) this.parts.unshift(b);
    this.bodyEdited = true;
  }

  dispose(): Promise<void> {
    this.disposing ??= (async () => {
      this.disposed = true;
      this.store.release();
      await this.disposeStore?.();
    })();
    return this.disposing;
  }

  private checkLive(): void {
    if (this.disposed) throw new Error('message was disposed');
  }

  private checkPart(p: BodyPart | string): BodyPart {
    if (typeof p === 'string') return toCrlf(Buffer.from(p, 'utf8'));
    if (Buffer.isBuffer(p)) return toCrlf(p);
    if (p && p.kind === 'range') {
      const { start, end } = p;
      if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= this.bodyLength)) {
        throw new RangeError(`body range [${start}, ${end}) is outside the received body [0, ${this.bodyLength})`);
      }
      return { kind: 'range', start, end };
    }
    throw new TypeError('a body part is a Buffer or a BodyRange');
  }

  /**
   * The body's bytes in order. An edited body is checked where parts meet: a
   * part must not start with LF unless the previous one ended with CR, and vice
   * versa, or the relay would carry a bare newline the spool kept out.
   */
  private async *bodyChunks(parts: BodyPart[], check: boolean): AsyncGenerator<Buffer> {
    this.checkLive();
    let last = LF; // the body starts at a line start
    let offset = 0;
    for (const p of parts) {
      let first = check;
      const src: Iterable<Buffer> | AsyncIterable<Buffer> = Buffer.isBuffer(p)
        ? [p]
        : this.store.chunks(this.bodyStart + p.start, this.bodyStart + p.end);
      for await (const c of src) {
        if (c.length === 0) continue;
        if (first) {
          first = false;
          if ((last === CR) !== (c[0] === LF)) throw bareAt(offset, last === CR ? 'CR' : 'LF');
        }
        yield c;
        offset += c.length;
        last = c[c.length - 1];
      }
    }
    if (check && last === CR) throw bareAt(offset, 'CR');
  }
}

function bareAt(offset: number, which: 'CR' | 'LF'): Error {
  return new Error(
    `edited body would have a bare ${which} at body offset ${offset}: a body range starts or ends inside a CRLF`,
  );
}
