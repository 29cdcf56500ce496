import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import { parseReplyLines, replyText, type Reply } from '../smtp/reply';
import { DotStuffer } from './dot-stuff';
import { buildProxyCommands } from './xtext';

export type Stage =
  | 'connect'
  | 'greeting'
  | 'ehlo'
  | 'starttls'
  | 'xclient'
  | 'xforward'
  | 'mail'
  | 'rcpt'
  | 'data'
  | 'message'
  | 'eod'
  | 'rset'
  | 'quit';

export type SmtpClientErrorKind = 'timeout' | 'closed' | 'connect' | 'protocol' | 'tls';

export class SmtpClientError extends Error {
  override name = 'SmtpClientError';
  readonly stage: Stage;
  readonly kind: SmtpClientErrorKind;
  /** The server's reply, when one caused the error (a refused greeting, a reply out of turn). */
  readonly reply?: Reply;

  constructor(kind: SmtpClientErrorKind, stage: Stage, message: string, opts: { cause?: unknown; reply?: Reply } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.kind = kind;
    this.stage = stage;
    if (opts.reply) this.reply = opts.reply;
  }
}

export interface SmtpClientOptions {
  host: string;
  port: number;
  localAddress?: string;
  /** Milliseconds per stage; `message` is the longest wait for the socket to drain while streaming. */
  timeouts?: Partial<Record<Stage, number>>;
  /** Used by starttls(). `servername` defaults to `host` unless that is an IP address. */
  tls?: tls.ConnectionOptions;
  /** Dialogue logging: commands ('C') and reply lines ('S'); message content is not logged. */
  log?: (dir: 'C' | 'S', line: string) => void;
}

/**
 * Every one well under Postfix's smtpd_proxy_timeout (100 s): when we give up first, the proxy can
 * still answer its own client with a proper reply instead of Postfix answering for us.
 */
export const DEFAULT_TIMEOUTS: Readonly<Record<Stage, number>> = Object.freeze({
  connect: 10_000,
  greeting: 30_000,
  ehlo: 30_000,
  starttls: 30_000,
  xclient: 30_000,
  xforward: 30_000,
  mail: 30_000,
  rcpt: 30_000,
  data: 30_000,
  message: 30_000,
  eod: 60_000,
  rset: 30_000,
  quit: 5_000,
});

/** Longest reply line accepted; RFC 5321 allows 512, real servers stay far below this. */
export const MAX_REPLY_LINE = 4096;
/** Guards against a server that never ends a multi-line reply. */
const MAX_REPLY_LINES = 1000;

const REPLY_LINE = /^[2-5]\d\d(?:[ -]|$)/;

/**
 * Splits what a server sends into replies: CRLF or bare LF line ends, multi-line replies, replies split
 * across packets and several in one packet. Throws on a malformed or over-long line.
 */
export class ReplyParser {
  private rx: Buffer | null = null;
  private lines: string[] = [];
  private stopped = false;

  constructor(
    private readonly onReply: (r: Reply) => void,
    private readonly onLine?: (line: string) => void,
  ) {}

  /** Bytes received but not yet part of a complete reply. */
  get buffered(): number {
    return (this.rx?.length ?? 0) + (this.lines.length ? 1 : 0);
  }

  /** Ignore everything from now on, even the rest of the chunk being parsed (what is left stays in `buffered`). */
  stop(): void {
    this.stopped = true;
  }

  /** Start afresh (after the TLS handshake). */
  reset(): void {
    this.rx = null;
    this.lines = [];
    this.stopped = false;
  }

  push(chunk: Buffer): void {
    if (this.stopped) return;
    const buf = this.rx ? Buffer.concat([this.rx, chunk]) : chunk;
    this.rx = null;
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(0x0a, start);
      if (nl < 0) break;
      const end = nl > start && buf[nl - 1] === 0x0d ? nl - 1 : nl;
      if (end - start > MAX_REPLY_LINE) throw new Error(`reply line longer than ${MAX_REPLY_LINE} characters`);
      const line = buf.toString('utf8', start, end);
      start = nl + 1;
      this.line(line);
      if (this.stopped) {
        if (start < buf.length) this.rx = Buffer.from(buf.subarray(start));
        return;
      }
    }
    if (buf.length - start > MAX_REPLY_LINE) throw new Error(`reply line longer than ${MAX_REPLY_LINE} characters`);
    // Copy: a subarray would keep the whole chunk alive.
    if (start < buf.length) this.rx = Buffer.from(buf.subarray(start));
  }

  private line(line: string): void {
    this.onLine?.(line);
    if (!REPLY_LINE.test(line)) throw new Error(`malformed reply line: ${JSON.stringify(line.slice(0, 100))}`);
    if (this.lines.length && line.slice(0, 3) !== this.lines[0].slice(0, 3)) {
      throw new Error(`reply code changed inside a multi-line reply: ${JSON.stringify(line.slice(0, 100))}`);
    }
    this.lines.push(line);
    if (line[3] === '-') {
      if (this.lines.length > MAX_REPLY_LINES) throw new Error(`reply longer than ${MAX_REPLY_LINES} lines`);
      return;
    }
    const reply = parseReplyLines(this.lines);
    this.lines = [];
    this.onReply(reply);
  }
}

/** Someone waiting for the next reply (or for the connection to fail). */
interface Waiter {
  stage: Stage;
  onReply(r: Reply): void;
  onError(e: SmtpClientError): void;
  timer?: NodeJS.Timeout;
}

const isPositive = (r: Reply): boolean => r.code >= 200 && r.code < 300;

/**
 * A small SMTP client for the proxy's downstream: one command at a time, every reply returned as a
 * Reply (4xx/5xx included), and every failure (timeout, close, garbage) destroys the connection so
 * that it is never reused half-way through a command.
 *
 * Events: 'close' once the connection is gone, whoever closed it.
 */
export class SmtpClient extends EventEmitter {
  greeting!: Reply;
  /** EHLO keyword (upper case) -> the rest of its line; empty after HELO and after STARTTLS/XCLIENT until the next EHLO. */
  capabilities = new Map<string, string>();

  private readonly opts: SmtpClientOptions;
  private socket!: net.Socket;
  /** The TLS socket while its handshake runs, so that a failure can destroy it too. */
  private handshaking?: tls.TLSSocket;
  private readonly parser: ReplyParser;
  private pending: Waiter | null = null;
  private lastStage: Stage = 'connect';
  private _closed = false;
  private closeEmitted = false;
  private socketError?: Error;
  /** Why we destroyed the connection, when it was our decision. */
  private failure?: SmtpClientError;
  /** A 421 the server sent on its own (idle timeout, shutdown): it answers whatever we ask next. */
  private unsolicited?: Reply;
  /** Between a 354 and the end of sendMessage(): anything written now would be message content. */
  private inData = false;
  /** Set between a 220 to STARTTLS and the end of the handshake. */
  private upgrading = false;
  private _secure = false;

  private constructor(opts: SmtpClientOptions) {
    super();
    this.opts = opts;
    this.parser = new ReplyParser((r) => this.onReply(r), opts.log ? (line) => opts.log!('S', line) : undefined);
  }

  /** Connect and read the greeting; rejects unless it is 2xx (the error then carries the Reply). */
  static connect(opts: SmtpClientOptions): Promise<SmtpClient> {
    return new SmtpClient(opts).open();
  }

  /** Between commands, nothing pending or held back by the server: safe to hand to another transaction. */
  get idle(): boolean {
    return !this._closed && !this.pending && !this.inData && !this.unsolicited && !this.upgrading;
  }

  get closed(): boolean {
    return this._closed;
  }

  /** True after a successful STARTTLS. */
  get secure(): boolean {
    return this._secure;
  }

  /** The local port of the connection (for logs), when connected. */
  get localPort(): number | undefined {
    return this.socket?.localPort;
  }

  timeout(stage: Stage): number {
    return this.opts.timeouts?.[stage] ?? DEFAULT_TIMEOUTS[stage];
  }

  private where(): string {
    return `${this.opts.host}:${this.opts.port}`;
  }

  private open(): Promise<SmtpClient> {
    return new Promise<SmtpClient>((resolve, reject) => {
      const { host, port, localAddress } = this.opts;
      const sock = net.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
      this.socket = sock;
      // Without it, a command or the final dot can sit in Nagle's buffer waiting for a delayed ACK (~40 ms).
      sock.setNoDelay(true);
      const timer = setTimeout(() => {
        sock.removeListener('error', onConnectError);
        sock.on('error', () => {});
        sock.destroy();
        this._closed = true;
        reject(new SmtpClientError('timeout', 'connect', `connect to ${this.where()} timed out after ${this.timeout('connect')} ms`));
      }, this.timeout('connect'));
      const onConnectError = (err: Error): void => {
        clearTimeout(timer);
        sock.destroy();
        this._closed = true;
        reject(new SmtpClientError('connect', 'connect', `cannot connect to ${this.where()}: ${err.message}`, { cause: err }));
      };
      sock.once('error', onConnectError);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeListener('error', onConnectError);
        this.attach(sock);
        this.lastStage = 'greeting';
        this.wait('greeting', this.timeout('greeting'), (greeting) => {
          this.greeting = greeting;
          if (isPositive(greeting)) return resolve(this);
          reject(
            new SmtpClientError('protocol', 'greeting', `${this.where()} refused the connection: ${replyText(greeting)}`, {
              reply: greeting,
            }),
          );
          // RFC 5321 3.1: after a 554 greeting the client should still QUIT; quit() never throws.
          void this.quit();
        }, reject);
      });
    });
  }

  private attach(sock: net.Socket): void {
    sock.on('data', (chunk: Buffer) => {
      if (sock === this.socket && !this.upgrading) this.onData(chunk);
    });
    sock.on('error', (err: Error) => {
      this.socketError ??= err;
    });
    sock.on('close', () => this.onSocketClose());
  }

  private onSocketClose(): void {
    this._closed = true;
    this.inData = false;
    const w = this.pending;
    if (w) {
      this.pending = null;
      clearTimeout(w.timer);
      const why = this.socketError ? `: ${this.socketError.message}` : '';
      w.onError(
        new SmtpClientError('closed', w.stage, `${this.where()} closed the connection during ${w.stage}${why}`, {
          cause: this.socketError,
        }),
      );
    }
    if (!this.closeEmitted) {
      this.closeEmitted = true;
      this.emit('close');
    }
  }

  private onData(chunk: Buffer): void {
    try {
      this.parser.push(chunk);
    } catch (err) {
      return this.fail('protocol', (err as Error).message);
    }
    // Plaintext after the 220 to STARTTLS would be read as if it came over TLS (CVE-2011-0411 style injection).
    if (this.upgrading && this.parser.buffered > 0) this.fail('protocol', 'data received after the reply to STARTTLS');
  }

  private onReply(reply: Reply): void {
    const w = this.pending;
    if (!w) {
      if (reply.code === 421) {
        this.unsolicited = reply;
        return;
      }
      return this.fail('protocol', `unexpected reply: ${replyText(reply)}`, reply);
    }
    this.pending = null;
    clearTimeout(w.timer);
    if (w.stage === 'starttls' && reply.code === 220) {
      // Stop reading plaintext before anything else is processed; the TLS socket takes over.
      this.upgrading = true;
      this.parser.stop();
      this.socket.pause();
    }
    w.onReply(reply);
  }

  /** Register the single waiter for the next reply; `timeoutMs` null means no timer. */
  private wait(stage: Stage, timeoutMs: number | null, onReply: (r: Reply) => void, onError: (e: SmtpClientError) => void): Waiter {
    const w: Waiter = { stage, onReply, onError };
    if (timeoutMs !== null) {
      w.timer = setTimeout(() => {
        if (this.pending !== w) return;
        this.fail('timeout', `no reply from ${this.where()} within ${timeoutMs} ms (${stage})`);
      }, timeoutMs);
    }
    this.pending = w;
    this.lastStage = stage;
    return w;
  }

  /** Destroy the connection and fail whoever is waiting. */
  private fail(kind: SmtpClientErrorKind, message: string, reply?: Reply): void {
    const stage = this.pending?.stage ?? this.lastStage;
    this.destroyConnection(new SmtpClientError(kind, stage, message, { reply }));
  }

  private destroyConnection(err?: SmtpClientError): void {
    const w = this.pending;
    this.pending = null;
    this._closed = true;
    this.inData = false;
    this.failure ??= err;
    this.upgrading = false;
    this.parser.stop();
    if (w) clearTimeout(w.timer);
    this.handshaking?.destroy();
    this.socket?.destroy();
    if (w) w.onError(err ?? new SmtpClientError('closed', w.stage, `connection to ${this.where()} closed locally`));
  }

  private closedError(stage: Stage): SmtpClientError {
    const why = this.failure ?? this.socketError;
    return new SmtpClientError('closed', stage, `connection to ${this.where()} is closed${why ? ` (${why.message})` : ''}`, {
      cause: why,
    });
  }

  /**
   * Several commands in one write, their replies read in order (RFC 2920).
   * Only for servers that advertised PIPELINING and commands that may share a
   * group; saves a round trip per group.
   */
  private commands(steps: [Stage, string][]): Promise<Reply[]> {
    const first = steps[0]![0];
    if (this.unsolicited || this._closed || this.pending || this.inData || steps.some(([, l]) => /[\r\n]/.test(l))) {
      // The one-at-a-time path knows how to answer each of these cases.
      return this.command(first, steps[0]![1]).then(async (r) => [r, ...(await this.sequential(steps.slice(1)))]);
    }
    return new Promise<Reply[]>((resolve, reject) => {
      const replies: Reply[] = [];
      const next = (): void => {
        const stage = steps[replies.length]![0];
        // Registered synchronously from the previous reply's callback: the next
        // reply may already be in the same packet.
        this.wait(stage, this.timeout(stage), (r) => {
          replies.push(r);
          if (replies.length === steps.length) resolve(replies);
          else next();
        }, reject);
      };
      next();
      for (const [, line] of steps) this.opts.log?.('C', line);
      this.socket.write(steps.map(([, line]) => line + '\r\n').join(''));
    });
  }

  private async sequential(steps: [Stage, string][]): Promise<Reply[]> {
    const out: Reply[] = [];
    for (const [stage, line] of steps) out.push(await this.command(stage, line));
    return out;
  }

  /**
   * XFORWARD (when advertised) and MAIL, in one round trip when the server
   * offers PIPELINING and the attributes fit one XFORWARD line. `xforward` is
   * undefined when none was sent; a refused XFORWARD means the caller must not
   * use this transaction (MAIL may have been accepted without it).
   */
  async xforwardAndMail(attrs: Record<string, string | undefined> | undefined, mailArg: string): Promise<{ xforward?: Reply; mail: Reply }> {
    const lines = attrs ? this.proxyLines('XFORWARD', attrs) : [];
    const mailLine = `MAIL FROM:${mailArg}`;
    if (lines.length === 1 && this.capabilities.has('PIPELINING')) {
      const [xforward, mail] = await this.commands([
        ['xforward', lines[0]!],
        ['mail', mailLine],
      ]);
      return { xforward, mail: mail! };
    }
    let xforward: Reply | undefined;
    if (lines.length) {
      xforward = await this.xforward(attrs!);
      if (!isPositive(xforward)) return { xforward, mail: xforward };
    }
    return { xforward, mail: await this.command('mail', mailLine) };
  }

  /** Send one command line and wait for its reply. */
  private command(stage: Stage, line: string): Promise<Reply> {
    if (this.unsolicited) {
      // The server already said it is going away; that is its answer to anything.
      const r = this.unsolicited;
      this.unsolicited = undefined;
      this.destroyConnection();
      return Promise.resolve(r);
    }
    if (this._closed) return Promise.reject(this.closedError(stage));
    if (this.pending || this.inData) {
      return Promise.reject(new Error(`SmtpClient: ${stage} while ${this.inData ? 'in DATA' : this.pending!.stage} is in progress`));
    }
    if (/[\r\n]/.test(line)) {
      return Promise.reject(new SmtpClientError('protocol', stage, 'refusing to send a command containing CR or LF'));
    }
    return new Promise<Reply>((resolve, reject) => {
      this.wait(stage, this.timeout(stage), resolve, reject);
      this.opts.log?.('C', line);
      this.socket.write(line + '\r\n');
    });
  }

  /** EHLO, falling back to HELO when the server refuses EHLO with 5xx. */
  async ehlo(name: string): Promise<Reply> {
    const r = await this.command('ehlo', `EHLO ${name}`);
    if (isPositive(r)) {
      this.capabilities = parseCapabilities(r);
      return r;
    }
    if (r.code < 500) return r;
    this.capabilities = new Map();
    return this.command('ehlo', `HELO ${name}`);
  }

  /** STARTTLS and the handshake; on a 220 the capabilities are cleared and the caller must EHLO again. */
  async starttls(): Promise<Reply> {
    const r = await this.command('starttls', 'STARTTLS');
    if (r.code !== 220) return r;
    await this.upgrade();
    this.capabilities = new Map();
    return r;
  }

  private upgrade(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      // The 220 may have been followed by injected plaintext, which already closed the connection.
      if (this._closed) return reject(this.failure ?? this.closedError('starttls'));
      const plain = this.socket;
      const { host } = this.opts;
      const tlsOpts = this.opts.tls ?? {};
      const servername = tlsOpts.servername ?? (net.isIP(host) ? undefined : host);
      const ts = tls.connect({ ...tlsOpts, socket: plain, ...(servername ? { servername } : {}) });
      this.handshaking = ts;
      const onTlsError = (err: Error): void => {
        if (this.pending !== w) return;
        this.destroyConnection(
          new SmtpClientError('tls', 'starttls', `TLS handshake with ${this.where()} failed: ${err.message}`, { cause: err }),
        );
      };
      const w = this.wait(
        'starttls',
        this.timeout('starttls'),
        () => this.fail('protocol', 'reply received during the TLS handshake'),
        (e) => {
          ts.removeListener('error', onTlsError);
          ts.on('error', () => {});
          reject(e);
        },
      );
      ts.once('error', onTlsError);
      ts.once('secureConnect', () => {
        if (this.pending !== w) return;
        this.pending = null;
        clearTimeout(w.timer);
        ts.removeListener('error', onTlsError);
        this.handshaking = undefined;
        this.socket = ts;
        this.upgrading = false;
        this.parser.reset();
        this._secure = true;
        this.attach(ts);
        resolve();
      });
    });
  }

  /**
   * XCLIENT with the attributes the server advertised. Resolves with the first non-2xx reply or the
   * last one (220 on success: the caller then sends EHLO again). When nothing is sendable (XCLIENT not
   * advertised, no attributes left) nothing is sent and a synthetic 250 is returned.
   */
  async xclient(attrs: Record<string, string | undefined>): Promise<Reply> {
    const lines = this.proxyLines('XCLIENT', attrs);
    if (!lines.length) return { code: 250, lines: ['XCLIENT not sent: not advertised or no attributes'] };
    let last!: Reply;
    for (const line of lines) {
      last = await this.command('xclient', line);
      if (!isPositive(last)) return last;
      // The server is back at its greeting stage: the old EHLO capabilities no longer apply.
      this.capabilities = new Map();
    }
    return last;
  }

  /**
   * XFORWARD with the attributes the server advertised, split so that each line fits in 512 characters.
   * Resolves with the first non-2xx reply or the last one; a synthetic 250 when nothing was sendable.
   */
  async xforward(attrs: Record<string, string | undefined>): Promise<Reply> {
    const lines = this.proxyLines('XFORWARD', attrs);
    if (!lines.length) return { code: 250, lines: ['XFORWARD not sent: not advertised or no attributes'] };
    let last!: Reply;
    for (const line of lines) {
      last = await this.command('xforward', line);
      if (!isPositive(last)) return last;
    }
    return last;
  }

  private proxyLines(verb: 'XFORWARD' | 'XCLIENT', attrs: Record<string, string | undefined>): string[] {
    const advertised = this.capabilities.get(verb);
    if (advertised === undefined) return [];
    return buildProxyCommands(verb, attrs, advertised.split(/\s+/).filter(Boolean));
  }

  /** `arg` is everything after "MAIL FROM:", relayed unchanged. */
  mail(arg: string): Promise<Reply> {
    return this.command('mail', `MAIL FROM:${arg}`);
  }

  /** `arg` is everything after "RCPT TO:", relayed unchanged. */
  rcpt(arg: string): Promise<Reply> {
    return this.command('rcpt', `RCPT TO:${arg}`);
  }

  /** DATA; any reply is returned. After a 354 the next call must be sendMessage() or abort(). */
  async data(): Promise<Reply> {
    const r = await this.command('data', 'DATA');
    if (r.code === 354) this.inData = true;
    return r;
  }

  /**
   * Stream the message dot-stuffed, then CRLF if it did not end with one, then ".".
   * Resolves with the end-of-data reply (or with a 4xx/5xx the server sent before the dot, after which
   * the connection is closed). Small messages go out in one write together with the terminator.
   *
   * If `body` fails or is destroyed before its end, or abort() is called, the connection is destroyed
   * without ever sending the final dot, so the server discards the partial message; the promise rejects
   * (with the stream's own error in the first case). The body is then left flowing, its data dropped,
   * so that whoever writes into it does not block; it is not destroyed.
   */
  sendMessage(body: Readable, opts: { live?: boolean } = {}): Promise<Reply> {
    if (this._closed) return Promise.reject(this.closedError('message'));
    if (!this.inData || this.pending) return Promise.reject(new Error('SmtpClient: sendMessage() needs a 354 reply to DATA first'));
    if (body.readableEnded || body.destroyed) return Promise.reject(new Error('SmtpClient: the message stream is already consumed'));
    const sock = this.socket;
    const stuffer = new DotStuffer();
    const idle = this.timeout('message');

    return new Promise<Reply>((resolve, reject) => {
      let done = false;
      let ended = false;
      let corked = false;
      let flushing = false;
      let drainTimer: NodeJS.Timeout | undefined;

      const finish = (err: unknown, reply?: Reply): void => {
        if (done) return;
        done = true;
        clearTimeout(drainTimer);
        body.removeListener('data', onData);
        body.removeListener('end', onEnd);
        body.removeListener('error', onBodyError);
        body.removeListener('close', onBodyClose);
        sock.removeListener('drain', onDrain);
        this.inData = false;
        if (err) {
          if (!ended) {
            // Keep an 'error' from a producer that is still writing from becoming an uncaught exception.
            body.on('error', () => {});
            body.resume();
          }
          reject(err);
        } else {
          resolve(reply!);
        }
      };

      const onData = (chunk: Buffer | Uint8Array | string): void => {
        if (done) return;
        const buf = Buffer.isBuffer(chunk)
          ? chunk
          : typeof chunk === 'string'
            ? Buffer.from(chunk, 'utf8')
            : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        if (sock.write(stuffer.push(buf))) {
          // A live body (cut-through) arrives over seconds: what came in one turn of the event loop goes out
          // then, instead of waiting in the cork for the socket's buffer to fill or for the end.
          if (opts.live && corked && !flushing) {
            flushing = true;
            setImmediate(() => {
              flushing = false;
              if (done || ended || !corked) return;
              sock.uncork();
              sock.cork();
            });
          }
        } else {
          body.pause();
          if (corked) {
            corked = false;
            sock.uncork();
          }
          drainTimer = setTimeout(() => {
            if (!done) this.fail('timeout', `${this.where()} did not take message data for ${idle} ms`);
          }, idle);
          sock.once('drain', onDrain);
        }
      };
      const onDrain = (): void => {
        clearTimeout(drainTimer);
        if (done) return;
        sock.cork();
        corked = true;
        body.resume();
      };
      const onEnd = (): void => {
        if (done) return;
        ended = true;
        clearTimeout(drainTimer);
        sock.removeListener('drain', onDrain);
        // Swap the "reply before the dot" waiter for the end-of-data one; nothing can arrive in between.
        this.pending = null;
        this.wait('eod', this.timeout('eod'), (r) => finish(null, r), (e) => finish(e));
        sock.write(stuffer.terminator());
        if (corked) {
          corked = false;
          sock.uncork();
        }
      };
      const onBodyError = (err: unknown): void => {
        // After 'end' the dot is out: a late stream error no longer concerns the server.
        if (done || ended) return;
        finish(err); // first, so that the caller sees the stream's error rather than our own close
        this.destroyConnection();
      };
      const onBodyClose = (): void => {
        if (done || ended) return;
        finish(new Error('SmtpClient: the message stream was closed before its end'));
        this.destroyConnection();
      };

      // During the transfer a reply means the server gave up on the message (Postfix never does this,
      // others may say 552/421 and hang up); the connection is out of step either way.
      this.wait(
        'message',
        null,
        (r) => {
          this.destroyConnection();
          if (r.code >= 400) finish(null, r);
          else finish(new SmtpClientError('protocol', 'message', `reply before the end of data: ${replyText(r)}`, { reply: r }));
        },
        (e) => finish(e),
      );

      sock.cork();
      corked = true;
      body.on('data', onData);
      body.once('end', onEnd);
      body.once('error', onBodyError);
      body.once('close', onBodyClose);
      body.resume();
    });
  }

  /**
   * Give up the current transaction without ever sending the final dot: the connection is destroyed,
   * so the server discards whatever part of the message it received. A pending sendMessage() or
   * command rejects with kind 'closed'.
   */
  abort(): void {
    if (this._closed && !this.pending) return;
    const stage = this.pending?.stage ?? this.lastStage;
    this.destroyConnection(new SmtpClientError('closed', stage, 'transaction aborted by the caller'));
  }

  rset(): Promise<Reply> {
    return this.command('rset', 'RSET');
  }

  /**
   * QUIT, wait for the reply up to the quit timeout, then close. Never rejects: a server that resets,
   * closes without 221 or does not answer is just closed. In the middle of DATA (or of another command)
   * nothing is sent, since QUIT would become message content: the connection is destroyed.
   */
  async quit(): Promise<void> {
    if (this._closed) return;
    if (this.pending || this.inData || this.unsolicited) {
      this.close();
      return;
    }
    try {
      await this.command('quit', 'QUIT');
    } catch {
      // EPIPE, ECONNRESET, close or timeout: the connection is finished anyway.
    }
    if (!this.socket.destroyed) {
      this._closed = true;
      // end() lets a TLS close_notify go out; the timer covers a peer that never closes its side.
      const sock = this.socket;
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    }
  }

  /** Destroy the connection now. */
  close(): void {
    if (this._closed && !this.pending) {
      this.socket?.destroy();
      return;
    }
    this.destroyConnection();
  }
}

/** EHLO reply lines after the first: keyword -> parameters. */
export function parseCapabilities(r: Reply): Map<string, string> {
  const caps = new Map<string, string>();
  for (const line of r.lines.slice(1)) {
    const t = line.trim();
    if (!t) continue;
    const m = /^(\S+)\s*(.*)$/.exec(t)!;
    caps.set(m[1].toUpperCase(), m[2]);
  }
  return caps;
}
