/**
 * The SMTP front end: smtp-server, with the hook points it lacks.
 *
 * smtp-server gives callbacks for connect, MAIL, RCPT and DATA only, answers
 * HELO/EHLO, RSET, VRFY, NOOP, QUIT and unknown commands itself, sends 354
 * before the application can refuse DATA, and writes fixed success texts
 * ("250 Accepted") where a proxy must relay the downstream's reply. This module
 * is the one place that bends it: a subclass of its connection routes every
 * command to a FrontendHandler (the session) and writes the handler's Reply,
 * while smtp-server keeps doing what it does well (parsing, syntax checks,
 * pipelining, STARTTLS, XFORWARD/XCLIENT bookkeeping, DATA unstuffing).
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerAddress, type SMTPServerDataStream, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection';
import type { CidrList } from '../util/cidr';
import { isPositive, type Reply } from './reply';

/** A MAIL FROM / RCPT TO argument: smtp-server's parse plus the text as received. */
export interface PathArgument {
  /** Address as parsed by smtp-server ('' for the null sender). */
  address: string;
  /** Parameters, xtext-decoded by smtp-server. */
  args: Record<string, string | true>;
  /** Everything after "FROM:"/"TO:" as received, relayed downstream unchanged. */
  raw: string;
}

export type ProxyAttributes = ReadonlyMap<string, string | number | false>;

/** What the front end asks of a session. A returned Reply is written as is. */
export interface FrontendHandler {
  /** undefined: send the greeting; a Reply: refuse (it is sent and the connection closed). */
  connected(): Promise<Reply | undefined>;
  /** After a STARTTLS handshake: everything learnt before it is forgotten (RFC 3207). */
  secured(): void;
  /** undefined: the normal HELO/EHLO reply; a Reply: refuse the greeting. */
  helo(verb: 'HELO' | 'EHLO', host: string): Promise<Reply | undefined>;
  /** A trusted peer described the real client (XFORWARD) or handed it over (XCLIENT). */
  proxied(verb: 'XFORWARD' | 'XCLIENT', attrs: ProxyAttributes): Promise<void>;
  mail(arg: PathArgument): Promise<Reply>;
  rcpt(arg: PathArgument): Promise<Reply>;
  /** undefined: go ahead with 354; a Reply: refuse DATA. */
  dataCommand(): Promise<Reply | undefined>;
  /** The message (unstuffed); resolves with the end-of-data reply. */
  message(stream: Readable & { sizeExceeded?: boolean; byteLength?: number }): Promise<Reply>;
  rset(): Promise<Reply>;
  vrfy(argument: string): Promise<Reply>;
  noop(): Promise<Reply>;
  unrecognized(verb: string, args: string): Promise<Reply>;
  quit(): Promise<Reply>;
  /** The connection is gone (any reason). */
  closed(): void;
  /** The dialogue, for debug logging: client commands ('C') and our replies ('S'). */
  dialogue?(dir: 'C' | 'S', line: string): void;
}

export interface FrontendOptions {
  hostname: string;
  banner: string;
  maxMessageSize: number;
  maxRecipients: number;
  maxConnections: number;
  maxCommandLength: number;
  idleTimeoutMs: number;
  closeTimeoutMs: number;
  trustedProxies: CidrList;
  tls?: { key: Buffer; cert: Buffer };
}

const HTTP_REQUEST = /^(OPTIONS|GET|HEAD|POST|PUT|DELETE|TRACE|CONNECT) \/.* HTTP\/\d\.\d$/i;
const noop = (): void => undefined;

export class HookedConnection extends SMTPConnection {
  handler!: FrontendHandler;
  /** The reply to write instead of the next one smtp-server writes. */
  private replyOverride: Reply | undefined;
  /** While set, smtp-server's replies are held here instead of written. */
  private held: [number, string | string[] | null | undefined, string | false | undefined][] | undefined;

  declare _server: FrontendServer;

  /** smtp-server waits 100 ms before the greeting to catch early talkers; that is a plugin's job here. */
  override init(): void {
    this._setListeners(() => {
      if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
        this.writeReply({ code: 421, enhanced: '4.7.0', lines: [`${this.name} Too many connections, try again later`], disconnect: true });
        return;
      }
      this.connectionReady();
    });
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (this.held) {
      this.held.push([code, data, context]);
      return;
    }
    const r = this.replyOverride;
    if (r) {
      this.replyOverride = undefined;
      this.writeReply(r);
      return;
    }
    this.emitReply(code, data, context);
  }

  private emitReply(code: number, data?: string | string[] | null, context?: string | false): void {
    if (this.handler?.dialogue) {
      for (const line of Array.isArray(data) ? data : [data ?? '']) this.handler.dialogue('S', `${code} ${line}`);
    }
    super.send(code, data, context);
  }

  /** Writes one of our replies (enhanced code already in it), then closes if the reply says so. */
  writeReply(r: Reply): void {
    const lines = r.lines.map((l) => (r.enhanced ? `${r.enhanced} ${l}` : l));
    this.emitReply(r.code, lines.length === 1 ? lines[0] : lines, false);
    // super.send closes on 421 by itself.
    if (r.disconnect && r.code !== 421) this.close();
  }

  /** Runs smtp-server's handler with its replies held, so the session can act before they go out. */
  private holding(run: (done: () => void) => void): Promise<[number, string | string[] | null | undefined, string | false | undefined][]> {
    this.held = [];
    return new Promise((resolve) => {
      run(() => {
        const held = this.held ?? [];
        this.held = undefined;
        resolve(held);
      });
    });
  }

  private flushHeld(held: [number, string | string[] | null | undefined, string | false | undefined][]): void {
    for (const [code, data, context] of held) this.send(code, data, context);
  }

  /** Reports a handler failure as 451 instead of leaving the client without an answer. */
  private guard(p: Promise<void>, callback: () => void): void {
    p.catch((err: Error) => {
      this._server.emit('error', err);
      this.writeReply({ code: 451, enhanced: '4.3.0', lines: ['Temporary local problem, please try again later'] });
      callback();
    });
  }

  override _proxyCommandAllowed(command: string, _option: 'useXClient' | 'useXForward'): boolean {
    return !this._xClient.has('ADDR') && this._server.trustedProxies.contains(this._originalRemoteAddress) && this._isSupported(command);
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    const line = (command || '').toString();
    const verb = line.split(' ')[0]!.toUpperCase();
    if (this.handler.dialogue) {
      // Credentials never reach the log: AUTH arguments and SASL continuation lines.
      this.handler.dialogue('C', this._nextHandler ? '(AUTH continuation)' : verb === 'AUTH' ? line.split(' ').slice(0, 2).join(' ') + ' ...' : line);
    }
    const known = ['HELO', 'EHLO', 'LHLO'].includes(verb) ? !this._server.options.lmtp || verb === 'LHLO' : this._isSupported(verb);
    if (this._server.draining && !this.inTransaction && !this._nextHandler && verb !== 'QUIT') {
      // Shutting down: transactions in flight may finish, nothing new starts.
      this.writeReply({ code: 421, enhanced: '4.3.2', lines: [`${this.name} Service shutting down, try again later`], disconnect: true });
      return;
    }
    if (known || this._upgrading || this._server._closeTimeout || !this._ready || this._nextHandler || HTTP_REQUEST.test(line)) {
      super._onCommand(command, callback);
      return;
    }
    const next = callback ?? noop;
    this.guard(
      this.handler.unrecognized(verb, line.slice(verb.length).trim()).then((r) => {
        this.writeReply(r);
        next();
      }),
      next,
    );
  }

  private greetingCommand(verb: 'HELO' | 'EHLO', command: Buffer, callback: () => void, proceed: () => void): void {
    const parts = command.toString().trim().split(/\s+/);
    // Syntax errors are smtp-server's to answer; only well-formed greetings reach the hook.
    if (parts.length !== 2 || parts[1]!.length > 300 || /[\x00-\x1f\x7f]/.test(parts[1]!)) {
      proceed();
      return;
    }
    this.guard(
      this.handler.helo(verb, parts[1]!).then((r) => {
        if (r && !isPositive(r)) {
          this.writeReply(r);
          callback();
        } else proceed();
      }),
      callback,
    );
  }

  override handler_HELO(command: Buffer, callback: () => void): void {
    this.greetingCommand('HELO', command, callback, () => super.handler_HELO(command, callback));
  }

  override handler_EHLO(command: Buffer, callback: () => void): void {
    this.greetingCommand('EHLO', command, callback, () => super.handler_EHLO(command, callback));
  }

  private proxyCommand(verb: 'XFORWARD' | 'XCLIENT', command: Buffer, callback: () => void, run: (cb: () => void) => void): void {
    this.guard(
      this.holding(run).then(async (held) => {
        // smtp-server answers 250 (XFORWARD) or a new 220 greeting (XCLIENT) only when it applied the attributes.
        if (held.length && (held[0]![0] === 250 || held[0]![0] === 220)) {
          await this.handler.proxied(verb, verb === 'XFORWARD' ? this._xForward : this._xClient);
        }
        this.flushHeld(held);
        callback();
      }),
      callback,
    );
  }

  override handler_XFORWARD(command: Buffer, callback: () => void): void {
    this.proxyCommand('XFORWARD', command, callback, (cb) => super.handler_XFORWARD(command, cb));
  }

  override handler_XCLIENT(command: Buffer, callback: () => void): void {
    this.proxyCommand('XCLIENT', command, callback, (cb) => super.handler_XCLIENT(command, cb));
  }

  /** A mail transaction is open (MAIL accepted, or the message is being received). */
  get inTransaction(): boolean {
    return !!this.session.envelope?.mailFrom || !!this._dataStream;
  }

  /** The raw argument of the MAIL/RCPT command being handled (smtp-server only passes its parse). */
  currentPath = '';

  override handler_MAIL(command: Buffer, callback: () => void): void {
    this.currentPath = pathText(command);
    super.handler_MAIL(command, callback);
  }

  override handler_RCPT(command: Buffer, callback: () => void): void {
    this.currentPath = pathText(command);
    super.handler_RCPT(command, callback);
  }

  /** Called from the server's onMailFrom/onRcptTo: the session decides, and its Reply is what goes out. */
  decidePath(kind: 'mail' | 'rcpt', parsed: SMTPServerAddress, callback: (err?: Error | null) => void): void {
    const arg: PathArgument = { address: parsed.address, args: parsed.args || {}, raw: this.currentPath };
    const p = kind === 'mail' ? this.handler.mail(arg) : this.handler.rcpt(arg);
    p.then(
      (r) => {
        this.replyOverride = r;
        callback(isPositive(r) ? null : new Error(r.lines.join(' ')));
      },
      (err: Error) => {
        this._server.emit('error', err);
        this.replyOverride = { code: 451, enhanced: '4.3.0', lines: ['Temporary local problem, please try again later'] };
        callback(err);
      },
    );
  }

  override handler_DATA(command: Buffer, callback: () => void): void {
    if (!this.session.envelope.rcptTo.length) {
      super.handler_DATA(command, callback);
      return;
    }
    this.guard(
      this.handler.dataCommand().then((r) => {
        if (r) {
          // A refused DATA ends the transaction (as in qpsmtpd): smtp-server must forget it too.
          this._resetSession();
          this.writeReply(r);
          callback();
        } else super.handler_DATA(command, callback);
      }),
      callback,
    );
  }

  /** From the server's onData: the session's end-of-data reply replaces smtp-server's "250 queued". */
  decideMessage(stream: SMTPServerDataStream, callback: (err?: Error | null, message?: string) => void): void {
    this.handler.message(stream).then(
      (r) => {
        this.replyOverride = r;
        callback(null, 'ok');
      },
      (err: Error) => {
        this._server.emit('error', err);
        this.replyOverride = { code: 451, enhanced: '4.3.0', lines: ['Temporary local problem, please try again later'] };
        callback(null, 'error');
      },
    );
  }

  private simple(p: () => Promise<Reply>, callback: () => void, before?: () => void): void {
    this.guard(
      p().then((r) => {
        before?.();
        this.writeReply(r);
        callback();
      }),
      callback,
    );
  }

  override handler_RSET(_command: Buffer, callback: () => void): void {
    this.simple(() => this.handler.rset(), callback, () => this._resetSession());
  }

  override handler_VRFY(command: Buffer, callback: () => void): void {
    const arg = command.toString().trim().split(/\s+/).slice(1).join(' ');
    if (!arg) {
      super.handler_VRFY(command, callback);
      return;
    }
    this.simple(() => this.handler.vrfy(arg), callback);
  }

  override handler_NOOP(_command: Buffer, callback: () => void): void {
    this.simple(() => this.handler.noop(), callback);
  }

  override handler_QUIT(_command: Buffer, callback: () => void): void {
    this.simple(() => this.handler.quit(), callback);
  }
}

function pathText(command: Buffer): string {
  const s = command.toString();
  const colon = s.indexOf(':');
  return colon < 0 ? '' : s.slice(colon + 1).trim();
}

type SessionWithConnection = SMTPServerSession & { [CONNECTION]?: HookedConnection };
const CONNECTION = Symbol('prequeue.connection');

export class FrontendServer extends SMTPServer {
  trustedProxies: CidrList;
  /** Set by drain(): sessions may finish their transaction, nothing new starts. */
  draining = false;

  /** Stop accepting; close idle sessions now (421); the rest close at their next command after their transaction. */
  drain(onClosed: () => void): void {
    this.draining = true;
    this.server.close(onClosed);
    for (const c of this.connections) {
      const conn = c as HookedConnection;
      if (!conn.inTransaction && !conn._handlerPending) {
        conn.writeReply({ code: 421, enhanced: '4.3.2', lines: [`${conn.name} Service shutting down, try again later`], disconnect: true });
      }
    }
  }

  /** Past the deadline: every remaining session is told 421 and closed. */
  forceClose(): void {
    for (const c of this.connections) {
      const conn = c as HookedConnection;
      conn.writeReply({ code: 421, enhanced: '4.3.2', lines: [`${conn.name} Service shutting down, try again later`], disconnect: true });
      conn.close();
    }
  }

  constructor(
    opts: FrontendOptions,
    private readonly createHandler: (conn: HookedConnection) => FrontendHandler,
  ) {
    const options: SMTPServerOptions = {
      name: opts.hostname,
      banner: opts.banner,
      size: opts.maxMessageSize,
      maxClients: opts.maxConnections,
      maxRecipients: opts.maxRecipients,
      maxCommandLength: opts.maxCommandLength,
      socketTimeout: opts.idleTimeoutMs,
      closeTimeout: opts.closeTimeoutMs,
      // Reverse DNS is a plugin's business (and behind Postfix, XFORWARD NAME is the answer).
      disableReverseLookup: true,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: false,
      hideREQUIRETLS: true,
      hideSTARTTLS: !opts.tls,
      disabledCommands: ['AUTH', ...(opts.tls ? [] : ['STARTTLS'])],
      authOptional: true,
      // Behind Postfix the public smtpd already accepted the address; a proxy must not be stricter on syntax.
      lenientAddressParsing: true,
      // Both are gated per peer by HookedConnection._proxyCommandAllowed (CIDR-aware trust list).
      useXForward: true,
      useXClient: true,
      logger: false,
      ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : {}),
    } as SMTPServerOptions;
    super(options);
    this.trustedProxies = opts.trustedProxies;
  }

  override connect(socket: Socket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new HookedConnection(this, socket, socketOptions);
    (connection.session as SessionWithConnection)[CONNECTION] = connection;
    connection.handler = this.createHandler(connection);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }

  private static conn(session: SMTPServerSession): HookedConnection {
    return (session as SessionWithConnection)[CONNECTION]!;
  }

  override onConnect(session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    const conn = FrontendServer.conn(session);
    conn.handler.connected().then(
      (r) => {
        if (!r) return callback();
        (conn as unknown as { replyOverride: Reply }).replyOverride = { ...r, disconnect: false };
        callback(new Error(r.lines.join(' ')));
      },
      (err: Error) => {
        this.emit('error', err);
        (conn as unknown as { replyOverride: Reply }).replyOverride = {
          code: 421,
          enhanced: '4.3.0',
          lines: ['Temporary local problem, please try again later'],
        };
        callback(err);
      },
    );
  }

  override onSecure(_socket: unknown, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    FrontendServer.conn(session).handler.secured();
    callback();
  }

  override onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    FrontendServer.conn(session).decidePath('mail', address, callback);
  }

  override onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    FrontendServer.conn(session).decidePath('rcpt', address, callback);
  }

  override onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null, message?: string) => void): void {
    FrontendServer.conn(session).decideMessage(stream, callback);
  }

  override onClose(session: SMTPServerSession): void {
    FrontendServer.conn(session)?.handler.closed();
  }
}
