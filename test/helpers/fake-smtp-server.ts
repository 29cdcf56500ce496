/**
 * A scriptable fake SMTP server for tests: well-behaved by default, with per-stage fault injection
 * (replies, hangs, drops, drops in the middle of DATA), STARTTLS when given a key and certificate,
 * and a record of every command line, XFORWARD/XCLIENT line and message (as on the wire and unstuffed).
 *
 *   const srv = await FakeSmtpServer.start({ script: { rcpt: (arg) => arg.includes('bad') ? '550 5.1.1 no' : undefined } });
 *   ... connect to 127.0.0.1:srv.port ...
 *   srv.messages[0].data   // the message as the client meant it
 *   await srv.close();
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';

/**
 * What the server does at one stage.
 * - a reply: `'451 4.3.0 try later'`; a multi-line reply separates lines with `\n` (`'250-a\n250 b'`)
 * - `'hang'`: never answer (the connection stays open)
 * - `'close'`: drop the connection instead of answering
 * - `'reset'`: drop it with a TCP RST (the client sees ECONNRESET)
 * - `'close-mid-data'` (data or eod stage): answer DATA with 354, then drop the connection once
 *   `closeMidDataAfter` bytes of message data arrived
 * - `{ reply, delayMs, thenClose }`: answer after a delay, optionally dropping the connection after
 * - `{ closeMidData: n }`: as 'close-mid-data' after n bytes
 */
export type FakeAction =
  | string
  | { reply?: string; delayMs?: number; thenClose?: boolean }
  | { closeMidData: number };

/** A step may depend on the command argument (after "MAIL FROM:", "RCPT TO:", or the verb); undefined = default. */
export type FakeStep = FakeAction | ((arg: string, session: FakeSession) => FakeAction | undefined);

export interface FakeScript {
  greeting?: FakeStep;
  /** A list replaces the capability lines after the hostname line; anything else is an action. */
  ehlo?: string[] | FakeStep;
  helo?: FakeStep;
  starttls?: FakeStep;
  xclient?: FakeStep;
  xforward?: FakeStep;
  mail?: FakeStep;
  rcpt?: FakeStep;
  /** The reply to the DATA command (default 354). */
  data?: FakeStep;
  /** The reply after the final dot (default 250 with a queue id). Its argument is the unstuffed message as latin1. */
  eod?: FakeStep;
  rset?: FakeStep;
  noop?: FakeStep;
  quit?: FakeStep;
  /** Bytes of message data after which 'close-mid-data' drops the connection. Default 1. */
  closeMidDataAfter?: number;
}

export interface FakeSmtpServerOptions {
  script?: FakeScript;
  /** Enables STARTTLS (advertised by default, until TLS is on). */
  tls?: { key: string | Buffer; cert: string | Buffer };
  hostname?: string;
}

export interface FakeMessage {
  /** Index of the connection in `sessions`. */
  session: number;
  /** The argument after "MAIL FROM:", verbatim. */
  mailFrom: string;
  /** Arguments after "RCPT TO:" of the recipients the server accepted. */
  rcptTo: string[];
  /** XFORWARD command lines received since the last transaction ended. */
  xforward: string[];
  /** XCLIENT command lines received on this connection so far. */
  xclient: string[];
  helo?: string;
  tls: boolean;
  /** The message as the client meant it: dot-unstuffed, without the terminating ".\r\n". */
  data: Buffer;
  /** The bytes as received after the 354, up to and including the terminating ".\r\n". */
  rawData: Buffer;
  /** The first line of the reply the server gave after the dot (or 'hang' / 'close' / 'reset'). */
  reply: string;
  /** How many socket reads the message data took, up to the terminator (for tests of write coalescing). */
  reads: number;
}

export const DEFAULT_CAPABILITIES: readonly string[] = [
  'PIPELINING',
  'SIZE 10240000',
  '8BITMIME',
  'ENHANCEDSTATUSCODES',
  'XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE',
  'XCLIENT NAME ADDR PORT PROTO HELO LOGIN',
];

/** One accepted connection. */
export class FakeSession {
  readonly index: number;
  /** Every command line received (without CRLF), message content excluded. */
  readonly lines: string[] = [];
  helo?: string;
  tls = false;
  readonly xclient: string[] = [];
  /** Set once the connection is gone; `closedBy` says who closed it as far as the server can tell. */
  closed = false;
  closedBy?: 'client' | 'server';
  /** Message bytes received before a 'close-mid-data' drop (or before the client went away mid-DATA). */
  partialData?: Buffer;

  socket: net.Socket;
  /** @internal */ rawChunks: Buffer[] = [];
  /** @internal */ whenClosedPromise: Promise<void>;
  /** @internal */ resolveClosed!: () => void;

  // Transaction state.
  /** @internal */ mailFrom?: string;
  /** @internal */ rcptTo: string[] = [];
  /** @internal */ xforward: string[] = [];
  /** @internal */ dataState?: DataState;

  constructor(index: number, socket: net.Socket) {
    this.index = index;
    this.socket = socket;
    this.whenClosedPromise = new Promise((r) => (this.resolveClosed = r));
  }

  /** All plaintext bytes received (commands and message data; after STARTTLS the decrypted bytes). */
  get raw(): Buffer {
    return Buffer.concat(this.rawChunks);
  }

  /** Resolves when the connection is closed; rejects after `timeoutMs`. */
  whenClosed(timeoutMs = 2000): Promise<void> {
    return withTimeout(this.whenClosedPromise, timeoutMs, `session ${this.index} still open after ${timeoutMs} ms`);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]);
}

const TERMINATOR = Buffer.from('\r\n.\r\n');
const START_TERMINATOR = Buffer.from('.\r\n');
const CRLF_DOT = Buffer.from('\r\n.');

/** Undo dot-stuffing of a message body (terminator already removed). */
export function unstuff(content: Buffer): Buffer {
  const parts: Buffer[] = [];
  let start = 0;
  if (content[0] === 0x2e) start = 1;
  let i = content.indexOf(CRLF_DOT, start);
  while (i >= 0) {
    parts.push(content.subarray(start, i + 2));
    start = i + 3; // drop the stuffed dot
    i = content.indexOf(CRLF_DOT, start);
  }
  parts.push(content.subarray(start));
  return Buffer.concat(parts);
}

interface DataState {
  chunks: Buffer[];
  length: number;
  /** Last bytes seen, to find a terminator split across chunks. */
  tail: Buffer;
  closeAfter?: number;
  reads: number;
}

export class FakeSmtpServer {
  readonly host = '127.0.0.1';
  port = 0;
  /** Mutable: later connections and commands use the new script. */
  script: FakeScript;
  readonly sessions: FakeSession[] = [];
  readonly messages: FakeMessage[] = [];
  readonly hostname: string;

  private readonly server: net.Server;
  private readonly secureContext?: tls.SecureContext;
  private queueId = 0;

  private constructor(opts: FakeSmtpServerOptions) {
    this.script = opts.script ?? {};
    this.hostname = opts.hostname ?? 'fake.smtp.test';
    if (opts.tls) this.secureContext = tls.createSecureContext({ key: opts.tls.key, cert: opts.tls.cert });
    this.server = net.createServer((sock) => this.onConnection(sock));
  }

  static async start(opts: FakeSmtpServerOptions = {}): Promise<FakeSmtpServer> {
    const srv = new FakeSmtpServer(opts);
    await new Promise<void>((resolve, reject) => {
      srv.server.once('error', reject);
      srv.server.listen(0, '127.0.0.1', () => resolve());
    });
    srv.port = (srv.server.address() as net.AddressInfo).port;
    return srv;
  }

  /** Number of connections accepted so far. */
  get connections(): number {
    return this.sessions.length;
  }

  /** Every command line of every session, in order of arrival per session. */
  get commands(): string[] {
    return this.sessions.flatMap((s) => s.lines);
  }

  /** Resolves with session `index` once it exists (it is created on accept). */
  async session(index: number, timeoutMs = 2000): Promise<FakeSession> {
    const deadline = Date.now() + timeoutMs;
    while (!this.sessions[index]) {
      if (Date.now() > deadline) throw new Error(`no session ${index} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.sessions[index];
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(sock: net.Socket): void {
    const s = new FakeSession(this.sessions.length, sock);
    this.sessions.push(s);
    sock.setNoDelay(true);
    sock.on('error', () => {});
    sock.on('close', () => this.onClose(s));
    this.listen(s, sock);
    this.respond(s, this.resolveStep(this.script.greeting, '', s), `220 ${this.hostname} ESMTP fake`);
  }

  private onClose(s: FakeSession): void {
    if (s.closed) return;
    s.closed = true;
    s.closedBy ??= 'client';
    if (s.dataState && !s.partialData) s.partialData = Buffer.concat(s.dataState.chunks);
    s.resolveClosed();
  }

  private listen(s: FakeSession, sock: net.Socket): void {
    let buf: Buffer = Buffer.alloc(0);
    let data: DataState | null = null;
    const onChunk = (chunk: Buffer): void => {
      s.rawChunks.push(chunk);
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length && !sock.destroyed && s.socket === sock) {
        if (data) {
          const r = this.onDataBytes(s, data, buf);
          if (r === null) {
            buf = Buffer.alloc(0);
            return;
          }
          data = null;
          buf = r;
          continue;
        }
        const nl = buf.indexOf(0x0a);
        if (nl < 0) return;
        const line = buf.toString('utf8', 0, nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl);
        buf = buf.subarray(nl + 1);
        const entered = this.onCommand(s, line);
        if (entered === 'data') {
          data = { chunks: [], length: 0, tail: Buffer.alloc(0), closeAfter: this.closeMidDataThreshold(), reads: 0 };
          s.dataState = data;
        }
        if (entered === 'tls') return; // anything after STARTTLS in the same packet is dropped, as a careful server does
      }
    };
    sock.on('data', onChunk);
    // Expose the handler so that STARTTLS can detach it.
    (sock as net.Socket & { fakeHandler?: typeof onChunk }).fakeHandler = onChunk;
  }

  private closeMidDataThreshold(): number | undefined {
    for (const step of [this.script.data, this.script.eod]) {
      const a = typeof step === 'function' ? undefined : step;
      if (a === 'close-mid-data') return this.script.closeMidDataAfter ?? 1;
      if (a && typeof a === 'object' && 'closeMidData' in a) return a.closeMidData;
    }
    return undefined;
  }

  /** Consume message bytes; returns what follows the terminator, or null when the message goes on. */
  private onDataBytes(s: FakeSession, d: DataState, chunk: Buffer): Buffer | null {
    d.reads++;
    const probe = d.tail.length ? Buffer.concat([d.tail, chunk]) : chunk;
    const probeStart = d.length - d.tail.length; // offset of probe[0] in the message data
    let end = -1; // offset in probe just after the terminator
    if (probeStart === 0 && probe.subarray(0, 3).equals(START_TERMINATOR)) end = 3;
    else {
      const i = probe.indexOf(TERMINATOR);
      if (i >= 0) end = i + TERMINATOR.length;
    }
    const take = end >= 0 ? end - d.tail.length : chunk.length;
    if (d.closeAfter !== undefined && d.length + take >= d.closeAfter) {
      const keep = Math.max(0, d.closeAfter - d.length);
      d.chunks.push(chunk.subarray(0, keep));
      s.partialData = Buffer.concat(d.chunks);
      s.dataState = undefined;
      this.drop(s);
      return null;
    }
    d.chunks.push(chunk.subarray(0, take));
    d.length += take;
    if (end < 0) {
      const all = probe.length > 4 ? probe.subarray(probe.length - 4) : probe;
      d.tail = Buffer.from(all);
      return null;
    }
    s.dataState = undefined;
    const rawData = Buffer.concat(d.chunks);
    const content = rawData.subarray(0, rawData.length - 3);
    const msg: FakeMessage = {
      session: s.index,
      mailFrom: s.mailFrom ?? '',
      rcptTo: s.rcptTo.slice(),
      xforward: s.xforward.slice(),
      xclient: s.xclient.slice(),
      helo: s.helo,
      tls: s.tls,
      data: unstuff(content),
      rawData,
      reply: '',
      reads: d.reads,
    };
    this.messages.push(msg);
    this.resetTransaction(s);
    const action = this.resolveStep(this.script.eod, msg.data.toString('latin1'), s);
    msg.reply = this.respond(s, action, `250 2.0.0 Ok: queued as FAKE${++this.queueId}`);
    return chunk.subarray(take);
  }

  private resetTransaction(s: FakeSession): void {
    s.mailFrom = undefined;
    s.rcptTo = [];
    s.xforward = [];
  }

  private resolveStep(step: FakeStep | string[] | undefined, arg: string, s: FakeSession): FakeAction | undefined {
    if (Array.isArray(step)) return undefined;
    return typeof step === 'function' ? step(arg, s) : step;
  }

  private drop(s: FakeSession): void {
    s.closedBy ??= 'server';
    s.socket.destroy();
  }

  /**
   * Carry out an action (or the default reply); returns the first reply line sent, 'hang' or 'close'.
   * `after` runs once the reply has been written, with its code.
   */
  private respond(s: FakeSession, action: FakeAction | undefined, fallback: string, after?: (code: number) => void): string {
    if (action === 'hang') return 'hang';
    if (action === 'close') {
      this.drop(s);
      return 'close';
    }
    if (action === 'reset') {
      s.closedBy ??= 'server';
      s.socket.resetAndDestroy();
      return 'reset';
    }
    let text = fallback;
    let delay = 0;
    let thenClose = false;
    if (typeof action === 'string' && action !== 'close-mid-data') text = action;
    else if (action && typeof action === 'object' && !('closeMidData' in action)) {
      text = action.reply ?? fallback;
      delay = action.delayMs ?? 0;
      thenClose = action.thenClose ?? false;
    }
    const wire = text.split(/\r?\n/).join('\r\n') + '\r\n';
    const code = Number(text.slice(0, 3));
    const send = (): void => {
      if (s.closed) return;
      s.socket.write(wire);
      after?.(code);
      if (thenClose) this.drop(s);
    };
    if (delay > 0) setTimeout(send, delay);
    else send();
    return text.split(/\r?\n/)[0];
  }

  /** Handle one command line; says when the connection enters DATA or TLS. */
  private onCommand(s: FakeSession, line: string): 'data' | 'tls' | undefined {
    s.lines.push(line);
    const m = /^(\S+)\s?(.*)$/.exec(line);
    const verb = (m?.[1] ?? '').toUpperCase();
    let rest = m?.[2] ?? '';
    const sc = this.script;
    const positive = (code: number): boolean => code >= 200 && code < 400;
    switch (verb) {
      case 'EHLO': {
        const caps = Array.isArray(sc.ehlo) ? sc.ehlo : this.defaultCapabilities(s);
        const lines = [this.hostname, ...caps];
        const fallback = lines.map((l, i) => `250${i < lines.length - 1 ? '-' : ' '}${l}`).join('\n');
        this.respond(s, this.resolveStep(sc.ehlo, rest, s), fallback, (c) => {
          if (positive(c)) s.helo = rest;
        });
        return;
      }
      case 'HELO':
        this.respond(s, this.resolveStep(sc.helo, rest, s), `250 ${this.hostname}`, (c) => {
          if (positive(c)) s.helo = rest;
        });
        return;
      case 'STARTTLS': {
        const action = this.resolveStep(sc.starttls, rest, s);
        if (!this.secureContext || s.tls) {
          this.respond(s, action, '502 5.5.1 Error: command not implemented');
          return;
        }
        const custom = action !== undefined && (typeof action !== 'string' || !action.startsWith('220'));
        if (custom) {
          this.respond(s, action, '');
          return;
        }
        this.startTls(s, typeof action === 'string' ? action : '220 2.0.0 Ready to start TLS');
        return 'tls';
      }
      case 'XCLIENT':
        s.xclient.push(line);
        this.respond(s, this.resolveStep(sc.xclient, rest, s), `220 ${this.hostname} ESMTP fake`, (c) => {
          if (positive(c)) {
            s.helo = undefined;
            this.resetTransaction(s);
          }
        });
        return;
      case 'XFORWARD':
        this.respond(s, this.resolveStep(sc.xforward, rest, s), '250 2.0.0 Ok', (c) => {
          if (positive(c)) s.xforward.push(line);
        });
        return;
      case 'MAIL': {
        rest = line.replace(/^MAIL FROM:/i, '');
        const fallback = !s.helo
          ? '503 5.5.1 Error: send HELO/EHLO first'
          : s.mailFrom !== undefined
            ? '503 5.5.1 Error: nested MAIL command'
            : '250 2.1.0 Ok';
        this.respond(s, this.resolveStep(sc.mail, rest, s), fallback, (c) => {
          if (positive(c)) s.mailFrom = rest;
        });
        return;
      }
      case 'RCPT': {
        rest = line.replace(/^RCPT TO:/i, '');
        const fallback = s.mailFrom === undefined ? '503 5.5.1 Error: need MAIL command' : '250 2.1.5 Ok';
        this.respond(s, this.resolveStep(sc.rcpt, rest, s), fallback, (c) => {
          if (positive(c)) s.rcptTo.push(rest);
        });
        return;
      }
      case 'DATA': {
        const action = this.resolveStep(sc.data, rest, s);
        const fallback = s.rcptTo.length ? '354 End data with <CR><LF>.<CR><LF>' : '503 5.5.1 Error: need RCPT command';
        const sent = this.respond(s, action, fallback);
        return sent.startsWith('354') ? 'data' : undefined;
      }
      case 'RSET':
        this.respond(s, this.resolveStep(sc.rset, rest, s), '250 2.0.0 Ok', (c) => {
          if (positive(c)) this.resetTransaction(s);
        });
        return;
      case 'NOOP':
        this.respond(s, this.resolveStep(sc.noop, rest, s), '250 2.0.0 Ok');
        return;
      case 'QUIT':
        this.respond(s, this.resolveStep(sc.quit, rest, s), '221 2.0.0 Bye', () => {
          s.closedBy ??= 'server';
          s.socket.end();
        });
        return;
      default:
        this.respond(s, undefined, '502 5.5.2 Error: command not recognized');
        return;
    }
  }

  private defaultCapabilities(s: FakeSession): string[] {
    const caps = [...DEFAULT_CAPABILITIES];
    if (this.secureContext && !s.tls) caps.splice(3, 0, 'STARTTLS');
    return caps;
  }

  private startTls(s: FakeSession, reply: string): void {
    const plain = s.socket as net.Socket & { fakeHandler?: (b: Buffer) => void };
    if (plain.fakeHandler) plain.removeListener('data', plain.fakeHandler);
    plain.pause();
    plain.write(reply.split(/\r?\n/).join('\r\n') + '\r\n', () => {
      const ts = new tls.TLSSocket(plain, { isServer: true, secureContext: this.secureContext });
      ts.on('error', () => {});
      ts.on('secure', () => {
        s.tls = true;
        s.helo = undefined;
        this.resetTransaction(s);
      });
      ts.on('close', () => this.onClose(s));
      s.socket = ts;
      this.listen(s, ts);
    });
  }
}

let cachedCert: { key: string; cert: string } | undefined;

/** A throwaway self-signed certificate for CN=localhost (made once per process with openssl). */
export function selfSignedCert(): { key: string; cert: string } {
  if (cachedCert) return cachedCert;
  const dir = mkdtempSync(join(tmpdir(), 'fake-smtp-cert-'));
  try {
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert],
      { stdio: 'ignore' },
    );
    cachedCert = { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
    return cachedCert;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
