/**
 * The message spool: receives the DATA of one transaction (unstuffed bytes, the
 * final "." not included), keeps it in memory up to a threshold and in a temp
 * file past it, checks it while it arrives, and finds the end of the header block
 * so that data_headers_end can run before the body is in.
 *
 * Bare CR / bare LF policy. SMTP smuggling works by sending an end-of-data
 * sequence that this proxy does not take as one but a downstream MTA does:
 * "\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r" and so on. smtp-server only ends DATA
 * on "\r\n.\r\n", so such a sequence reaches us as message content, and a relay
 * that dot-stuffs only after CRLF would pass it on unstuffed. A message without
 * any bare CR or LF cannot carry one, so the spool makes sure none is relayed:
 *
 * - 'reject' (default): the first bare CR or LF is recorded as a violation and
 *   the caller refuses the message (5xx), so nothing is relayed. Nothing is
 *   rewritten: what is relayed is always byte for byte what the client sent.
 *   RFC 5321 2.3.8 forbids bare CR and LF anyway, and real mail has none.
 * - 'normalize': every bare LF and bare CR becomes CRLF while spooling, so the
 *   relayed message has only CRLF line ends and the relay's dot-stuffer sees a
 *   "." after a bare newline as an ordinary line start and stuffs it. Smuggled
 *   commands then arrive as harmless body text. This accepts mail from broken
 *   senders at the price of changing their bytes (and the message size).
 *
 * Either way, what the relay sends has CRLF line ends only. A CR that ends one
 * chunk is judged by the first byte of the next one (or at the end of the data),
 * so chunk boundaries never make or hide a bare newline.
 *
 * Speed: the data is scanned with Buffer#indexOf (native memchr) per line end,
 * never byte by byte in JS, and never converted to a string.
 */
import { Writable } from 'node:stream';
import { openSync, closeSync, createWriteStream, promises as fsp, type WriteStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { noteMessageBytes } from '../heap';
import { afterDrainOrClose } from '../util/streams';
import { HeaderScanner, type HeaderBlock } from './headers';
import { FileStore, MemoryStore, SpooledMessage, type SpoolStore } from './message';

export interface SpoolOptions {
  /** Message size limit in bytes; past it, storing stops (bytes are still counted and drained) and 'oversize' is recorded. */
  maxSize: number;
  /** Bytes kept in memory before switching to a temp file (default 1 MiB). */
  memoryThreshold: number;
  /** Directory for temp files (default os.tmpdir()); files are created with mode 0600 and removed by dispose(). */
  tmpDir: string;
  /** Policy for bare LF / bare CR (default 'reject'); see the top of this file. */
  bareNewline: 'reject' | 'normalize';
  /** NUL bytes in the message (default 'reject'). */
  nul: 'reject' | 'keep';
  /** 0 = unlimited (default); otherwise a line longer than this, CRLF excluded, is a violation. */
  maxLineLength: number;
  /** A header block bigger than this (default 1 MiB) is a violation. */
  maxHeaderSize?: number;
  /**
   * What all spools of the process together may hold in memory. A number sets
   * the limit of the process-wide budget (`spoolMemory`; the config's
   * spool.memory_budget, so a reload changes it for every spool); a
   * SpoolMemoryBudget of its own is for tests. Default: the process-wide one.
   */
  memoryBudget?: number | SpoolMemoryBudget;
}

export type SpoolViolationKind = 'oversize' | 'bare_newline' | 'nul' | 'line_length' | 'header_size';
export type SpoolViolation = { kind: SpoolViolationKind; detail: string };

/**
 * Bytes of message data held in memory, counted across spools. Each spool holds
 * up to memoryThreshold bytes in memory, so without a shared limit fifty large
 * messages arriving at once would hold fifty times that: past the budget a spool
 * goes to its temp file instead (never refused, only slower). What a spool takes
 * is given back when it moves to a file and when it (or its message) is disposed.
 */
export class SpoolMemoryBudget {
  private taken = 0;

  constructor(public limit: number) {}

  /** Bytes currently taken. */
  get used(): number {
    return this.taken;
  }

  /** Takes `n` bytes if they fit under the limit. */
  tryTake(n: number): boolean {
    if (this.taken + n > this.limit) return false;
    this.taken += n;
    return true;
  }

  give(n: number): void {
    this.taken = Math.max(0, this.taken - n);
  }
}

export const DEFAULT_MEMORY_BUDGET = 8 * 1024 * 1024;
/** The budget every spool shares unless given one of its own. */
export const spoolMemory = new SpoolMemoryBudget(DEFAULT_MEMORY_BUDGET);

export const DEFAULT_SPOOL_OPTIONS: Readonly<Required<SpoolOptions>> = Object.freeze({
  maxSize: Infinity,
  memoryThreshold: 1024 * 1024,
  tmpDir: tmpdir(),
  bareNewline: 'reject',
  nul: 'reject',
  maxLineLength: 0,
  maxHeaderSize: 1024 * 1024,
  memoryBudget: spoolMemory as number | SpoolMemoryBudget,
});

const CR = 0x0d;
const LF = 0x0a;
/** Chunks below this are copied into a shared block instead of being kept as they are. */
const SMALL_CHUNK = 8 * 1024;
const BLOCK_SIZE = 64 * 1024;
/*
 * The first block is small: most messages are a few KiB, and Buffers up to 4 KiB
 * come from Node's shared pool, while each 64 KiB one is a separate allocation
 * that V8 counts as external memory (more frequent GCs at thousands a second).
 */
const FIRST_BLOCK_SIZE = 4 * 1024;
const blockSize = (index: number): number => (index === 0 ? FIRST_BLOCK_SIZE : BLOCK_SIZE);
/** What a spool queues for its temp file before the client's socket is paused; it counts once per message arriving. */
const FILE_HIGH_WATER_MARK = 128 * 1024;

export interface Spool {
  on(event: 'headers', listener: (headers: HeaderBlock) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'headers', listener: (headers: HeaderBlock) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  emit(event: 'headers', headers: HeaderBlock): boolean;
  emit(event: string | symbol, ...args: any[]): boolean;
}

/**
 * A Writable for the DATA of one transaction. Emits 'headers' once, as soon as
 * the header block is complete (or at the end if it never is).
 */
export class Spool extends Writable {
  readonly options: Readonly<Required<SpoolOptions>>;
  readonly violations: SpoolViolation[] = [];

  private seen = 0;
  private stored = 0;
  private readonly recorded = new Set<SpoolViolationKind>();
  private oversize = false;

  // Line scanning state carried from one chunk to the next.
  private pendingCR = false;
  private lineCarry = 0;
  private fixed = 0;
  private firstFix: string | undefined;

  private readonly scanner = new HeaderScanner();
  private headerBlock: HeaderBlock | undefined;

  // Storage: complete chunks in memory, small chunks coalesced in a block.
  private mem: Buffer[] = [];
  private block: Buffer | undefined;
  private blockUsed = 0;
  private file: WriteStream | undefined;
  private filePath: string | undefined;
  private fileError: Error | undefined;
  private waiting: ((err?: Error | null) => void) | undefined;
  private readonly budget: SpoolMemoryBudget;
  /** Bytes of `budget` this spool holds. */
  private held = 0;
  private blocksMade = 0;
  /** Cut-through: where accepted bytes go instead of being stored. */
  private sink: Writable | undefined;

  private disposed = false;
  private disposing: Promise<void> | undefined;
  private built: Promise<SpooledMessage> | undefined;

  constructor(opts: Partial<SpoolOptions> = {}) {
    super({ decodeStrings: true });
    const o = { ...DEFAULT_SPOOL_OPTIONS };
    for (const [k, v] of Object.entries(opts)) if (v !== undefined) (o as Record<string, unknown>)[k] = v;
    if (!(o.maxSize > 0)) throw new RangeError('maxSize must be > 0');
    if (!(o.memoryThreshold >= 0)) throw new RangeError('memoryThreshold must be >= 0');
    if (!(o.maxLineLength >= 0)) throw new RangeError('maxLineLength must be >= 0');
    if (!(o.maxHeaderSize > 0)) throw new RangeError('maxHeaderSize must be > 0');
    if (typeof o.memoryBudget === 'number') {
      if (!(o.memoryBudget >= 0)) throw new RangeError('memoryBudget must be >= 0');
      spoolMemory.limit = o.memoryBudget;
      this.budget = spoolMemory;
    } else {
      this.budget = o.memoryBudget;
    }
    this.options = Object.freeze(o);
  }

  /** Bytes received so far (before any normalization, including bytes past maxSize). */
  get size(): number {
    return this.seen;
  }

  /** Bytes held by the spool (after normalization, at most maxSize). */
  get storedSize(): number {
    return this.stored;
  }

  /** Under 'normalize': how many bare CRs and LFs were turned into CRLF, and where the first was. */
  get normalized(): { count: number; first: string | undefined } {
    return { count: this.fixed, first: this.firstFix };
  }

  /** The temp file, once the spool switched to one. */
  get tempPath(): string | undefined {
    return this.filePath;
  }

  /** The header block, once complete. */
  get headers(): HeaderBlock | undefined {
    return this.headerBlock;
  }

  hasViolation(kind?: SpoolViolationKind): boolean {
    return kind ? this.recorded.has(kind) : this.violations.length > 0;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (error?: Error | null) => void): void {
    const offset = this.seen;
    this.seen += chunk.length;
    noteMessageBytes(chunk.length);
    if (this.disposed || this.oversize || chunk.length === 0) return callback();
    if (this.fileError) return callback(this.fileError);
    try {
      if (this.options.nul === 'reject' && !this.recorded.has('nul')) {
        const z = chunk.indexOf(0);
        if (z !== -1) this.violation('nul', `NUL byte at offset ${offset + z}`);
      }
      const out = this.scanLines(chunk, offset);
      this.accept(out, callback);
    } catch (err) {
      callback(err as Error);
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.disposed) return callback();
    try {
      if (!this.oversize) {
        if (this.pendingCR) {
          this.pendingCR = false;
          this.bareNewline('CR', this.seen - 1);
          if (this.options.bareNewline === 'normalize') this.accept(Buffer.from([LF]), () => {});
        }
        this.lineEnded(this.lineCarry);
      }
      if (!this.headerBlock) this.completeHeaders();
    } catch (err) {
      return callback(err as Error);
    }
    this.flushBlock();
    const ws = this.file;
    if (!ws) return callback();
    if (this.fileError) return callback(this.fileError);
    ws.end();
    ws.once('close', () => callback(this.fileError ?? null));
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    // A spool that failed or was torn down before the end never yields a message,
    // so nobody would be left to remove its temp file. After a normal end
    // (autoDestroy) the data belongs to the message until it is disposed.
    if (err || !this.writableFinished) void this.dispose().catch(() => {});
    callback(err);
  }

  /**
   * The message, once the data has ended. An oversize message holds only what
   * was stored (the first maxSize bytes): check `violations` before using it.
   */
  finish(): Promise<SpooledMessage> {
    this.built ??= new Promise<SpooledMessage>((resolve, reject) => {
      const build = (): void => {
        try {
          resolve(this.build());
        } catch (err) {
          reject(err as Error);
        }
      };
      if (this.writableFinished) return build();
      if (this.errored) return reject(this.errored);
      if (this.destroyed) return reject(new Error('spool was destroyed before the end of the data'));
      const onFinish = (): void => {
        cleanup();
        build();
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onClose = (): void => {
        cleanup();
        reject(new Error('spool was closed before the end of the data'));
      };
      const cleanup = (): void => {
        this.off('finish', onFinish);
        this.off('error', onError);
        this.off('close', onClose);
      };
      this.once('finish', onFinish);
      this.once('error', onError);
      this.once('close', onClose);
    });
    return this.built;
  }

  /** Removes the temp file and drops the data; idempotent, safe at any time. */
  dispose(): Promise<void> {
    this.disposing ??= this.doDispose();
    return this.disposing;
  }

  /** Bytes of the memory budget this spool holds (0 once it went to a file or was disposed). */
  get memoryHeld(): number {
    return this.held;
  }

  private async doDispose(): Promise<void> {
    this.disposed = true;
    this.mem = [];
    this.block = undefined;
    this.releaseMemory();
    const ws = this.file;
    if (ws && !ws.closed) {
      await new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.destroy();
      });
    }
    // A write waiting for 'drain' would wait forever on a destroyed stream.
    const cb = this.waiting;
    this.waiting = undefined;
    cb?.();
    if (this.filePath) {
      try {
        await fsp.unlink(this.filePath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }

  private build(): SpooledMessage {
    if (this.disposed) throw new Error('spool was disposed');
    if (this.sink) throw new Error('a cut-through spool keeps no message');
    const headers = this.headerBlock ?? this.completeHeaders();
    const end = this.scanner.end!;
    let store: SpoolStore;
    if (this.filePath) store = new FileStore(this.filePath, this.stored);
    else store = new MemoryStore(this.mem);
    return new SpooledMessage({
      store,
      headers,
      bodyStart: Math.min(end.bodyStart, this.stored),
      violations: this.violations,
      truncated: this.oversize,
      dispose: () => this.dispose(),
    });
  }

  private violation(kind: SpoolViolationKind, detail: string): void {
    if (this.recorded.has(kind)) return;
    this.recorded.add(kind);
    this.violations.push({ kind, detail });
  }

  private bareNewline(which: 'CR' | 'LF', at: number, count = 1): void {
    if (this.options.bareNewline === 'normalize') {
      // Fixed, not refused: counted for the logs, and noted once with its place.
      this.fixed += count;
      this.firstFix ??= `bare ${which} at offset ${at}`;
    } else if (!this.recorded.has('bare_newline')) {
      this.violation('bare_newline', `bare ${which} at offset ${at}`);
    }
  }

  private lineEnded(len: number): void {
    const max = this.options.maxLineLength;
    if (max > 0 && len > max && !this.recorded.has('line_length')) {
      this.violation('line_length', `line longer than ${max} bytes`);
    }
  }

  /**
   * Finds the bare CRs and LFs of one chunk (two indexOf cursors, one step per
   * line end), checks line lengths, and returns the chunk as it is to be stored:
   * itself, or a normalized copy when there was something to fix.
   */
  private scanLines(b: Buffer, offset: number): Buffer {
    const normalize = this.options.bareNewline === 'normalize';
    const maxLine = this.options.maxLineLength;
    let limit = maxLine > 0 && !this.recorded.has('line_length') ? maxLine : Infinity;
    // Under 'reject', once a bare newline is recorded the message is refused, so
    // only a pending line-length check still needs the line ends.
    if (!normalize && this.recorded.has('bare_newline') && limit === Infinity) return b;

    const n = b.length;
    let inserts: number[] | undefined; // normalize: insert before b[pos] the byte at the next index
    let carry = this.lineCarry;
    let lineStart = 0;
    let from = 0;
    let bare = false;
    let bareAt = 0;
    let bareWhich: 'CR' | 'LF' = 'CR';
    let tooLong = false;

    if (this.pendingCR) {
      this.pendingCR = false;
      if (b[0] === LF) {
        from = 1; // the CRLF was split by the chunk boundary
      } else {
        bare = true;
        bareAt = offset - 1;
        bareWhich = 'CR';
        if (normalize) (inserts ??= []).push(0, LF);
      }
      if (carry > limit) tooLong = true;
      carry = 0;
      lineStart = from;
    }

    let cr = b.indexOf(CR, from);
    let lf = b.indexOf(LF, from);
    while (cr !== -1 || lf !== -1) {
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr + 1 === lf) {
          if (carry + cr - lineStart > limit) tooLong = true;
          carry = 0;
          lineStart = lf + 1;
          cr = b.indexOf(CR, lineStart);
          lf = b.indexOf(LF, lineStart);
        } else if (cr === n - 1) {
          // Judged by the next chunk's first byte (or the end of the data).
          this.pendingCR = true;
          break;
        } else {
          if (!bare) {
            bare = true;
            bareAt = offset + cr;
            bareWhich = 'CR';
          }
          if (normalize) (inserts ??= []).push(cr + 1, LF);
          if (carry + cr - lineStart > limit) tooLong = true;
          carry = 0;
          lineStart = cr + 1;
          cr = b.indexOf(CR, lineStart);
        }
      } else {
        if (!bare) {
          bare = true;
          bareAt = offset + lf;
          bareWhich = 'LF';
        }
        if (normalize) (inserts ??= []).push(lf, CR);
        if (carry + lf - lineStart > limit) tooLong = true;
        carry = 0;
        lineStart = lf + 1;
        lf = b.indexOf(LF, lineStart);
      }
    }
    carry += n - lineStart - (this.pendingCR ? 1 : 0);
    // An overlong line is reported as soon as it is too long, not only at its end.
    if (carry > limit) tooLong = true;
    this.lineCarry = carry;

    if (bare) this.bareNewline(bareWhich, bareAt, inserts ? inserts.length / 2 : 1);
    if (tooLong) this.lineEnded(Infinity);
    if (!inserts) return b;

    const count = inserts.length / 2;
    const out = Buffer.allocUnsafe(n + count);
    let src = 0;
    let dst = 0;
    for (let k = 0; k < inserts.length; k += 2) {
      const pos = inserts[k];
      dst += b.copy(out, dst, src, pos);
      out[dst++] = inserts[k + 1];
      src = pos;
    }
    b.copy(out, dst, src, n);
    return out;
  }

  /** Takes the checked (and maybe normalized) bytes: size limit, header scan, storage. */
  private accept(out: Buffer, callback: (error?: Error | null) => void): void {
    const room = this.options.maxSize - this.stored;
    if (out.length > room) {
      this.violation('oversize', `message exceeds ${this.options.maxSize} bytes`);
      this.oversize = true;
      out = out.subarray(0, Math.max(0, room));
    }
    if (out.length === 0) return callback();
    this.stored += out.length;

    if (!this.headerBlock) {
      const done = this.scanner.feed(out);
      if (done) {
        this.completeHeaders();
      } else if (this.scanner.scanned > this.options.maxHeaderSize) {
        // The rest is taken as body so the scan (and its copy) stops here.
        this.scanner.cut();
        this.violation('header_size', `header block exceeds ${this.options.maxHeaderSize} bytes`);
        this.completeHeaders();
      }
    }

    this.store(out, callback);
  }

  private completeHeaders(): HeaderBlock {
    const end = this.scanner.finish();
    if (end.fieldsEnd > this.options.maxHeaderSize) {
      this.violation('header_size', `header block exceeds ${this.options.maxHeaderSize} bytes`);
    }
    const h = this.scanner.headers();
    this.headerBlock = h;
    this.emit('headers', h);
    return h;
  }

  /**
   * Cut-through: from now on the accepted bytes go to `sink` instead of being
   * stored (the session does this when no plugin reads the message). Nothing is
   * passed on once a violation is recorded, the chunk that has it included: the
   * sink never sees a bare CR or LF under 'reject', a NUL, an overlong line or
   * bytes past the size limit. The sink's back-pressure holds the writer; a
   * destroyed sink is left alone and the rest drained. The caller ends or
   * destroys the sink after looking at the violations once the spool finished;
   * finish() then has no message to give.
   */
  cutThrough(sink: Writable): void {
    if (this.seen > 0) throw new Error('cutThrough() must come before the data');
    this.sink = sink;
  }

  private pass(sink: Writable, out: Buffer, callback: (error?: Error | null) => void): void {
    if (this.violations.length > 0 || sink.destroyed || sink.writableEnded) return callback();
    if (sink.write(out)) return callback();
    afterDrainOrClose(sink, callback);
  }

  private store(out: Buffer, callback: (error?: Error | null) => void): void {
    if (this.sink) return this.pass(this.sink, out, callback);
    if (!this.file && (this.stored > this.options.memoryThreshold || !this.reserve(this.memoryNeeded(out)))) {
      // Over this spool's threshold, or the process's budget is spent: what is held goes to a file, and so does the rest.
      try {
        this.openFile();
      } catch (err) {
        return callback(err as Error);
      }
      const held = [...this.mem, ...this.takeBlock()];
      this.mem = [];
      this.releaseMemory();
      for (const r of held) this.file!.write(r);
    }

    let ready: Buffer[] | undefined;
    if (out.length >= SMALL_CHUNK) {
      ready = this.takeBlock();
      ready.push(out);
    } else {
      // Many tiny chunks (a client trickling bytes) would cost an object each and
      // could pin large socket buffers; they are copied into shared blocks.
      let pos = 0;
      while (pos < out.length) {
        if (!this.block || this.blockUsed === this.block.length) {
          if (this.block) (ready ??= []).push(this.block);
          this.block = Buffer.allocUnsafe(this.nextBlockSize());
          this.blockUsed = 0;
        }
        const n = out.copy(this.block, this.blockUsed, pos);
        this.blockUsed += n;
        pos += n;
      }
      if (this.blockUsed === this.block!.length) {
        (ready ??= []).push(this.block!);
        this.block = undefined;
      }
    }

    if (!ready || ready.length === 0) return callback();
    if (!this.file) {
      for (const r of ready) this.mem.push(r);
      return callback();
    }
    let ok = true;
    for (const r of ready) ok = this.file.write(r);
    if (ok) return callback();
    this.waiting = callback;
    this.file.once('drain', () => {
      const cb = this.waiting;
      this.waiting = undefined;
      cb?.();
    });
  }

  private nextBlockSize(): number {
    return blockSize(this.blocksMade++);
  }

  /** Memory that keeping `out` in memory would add: itself, or the new blocks it would be copied into. */
  private memoryNeeded(out: Buffer): number {
    if (out.length >= SMALL_CHUNK) return out.length;
    let need = out.length - (this.block ? this.block.length - this.blockUsed : 0);
    let size = 0;
    let made = this.blocksMade;
    while (need > 0) {
      const b = blockSize(made++);
      size += b;
      need -= b;
    }
    return size;
  }

  private reserve(n: number): boolean {
    if (n === 0) return true;
    if (!this.budget.tryTake(n)) return false;
    this.held += n;
    return true;
  }

  private releaseMemory(): void {
    this.budget.give(this.held);
    this.held = 0;
  }

  /** The filled part of the current block; the rest of it stays in use. */
  private takeBlock(): Buffer[] {
    if (!this.block || this.blockUsed === 0) return [];
    const filled = this.block.subarray(0, this.blockUsed);
    this.block = this.block.length - this.blockUsed > 0 ? this.block.subarray(this.blockUsed) : undefined;
    this.blockUsed = 0;
    return [filled];
  }

  private flushBlock(): void {
    const rest = this.takeBlock();
    this.block = undefined;
    if (!rest.length) return;
    if (this.file) this.file.write(rest[0]);
    else this.mem.push(rest[0]);
  }

  private openFile(): void {
    const path = join(this.options.tmpDir, `prequeue-${process.pid}-${randomBytes(9).toString('hex')}.msg`);
    // Opened synchronously with O_EXCL: the name can never be a planted symlink,
    // creation errors surface in this write, and dispose() never races an open.
    const fd = openSync(path, 'wx', 0o600);
    this.filePath = path;
    let ws: WriteStream;
    try {
      ws = createWriteStream(path, { fd, highWaterMark: FILE_HIGH_WATER_MARK });
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    ws.on('error', (err) => {
      this.fileError ??= err;
      const cb = this.waiting;
      this.waiting = undefined;
      cb?.(err);
    });
    this.file = ws;
  }
}

/** Spools a complete message held in memory (for tests and plugins). */
export async function spoolBuffer(buf: Buffer, opts?: Partial<SpoolOptions>): Promise<SpooledMessage> {
  const spool = new Spool(opts);
  const message = spool.finish();
  spool.end(buf);
  try {
    return await message;
  } catch (err) {
    await spool.dispose();
    throw err;
  }
}
