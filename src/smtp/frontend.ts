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
 * pipelining, STARTTLS, XFORWARD/XCLIENT bookkeeping, DATA unstuffing, the
 * latter with its search made native: data-scan.ts).
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerAddress, type SMTPServerDataStream, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection';
import type { SMTPStream } from 'smtp-server/lib/smtp-stream';
import { feedDataStream } from './data-scan';
import type { ClientInput } from '../session/state';
import type { CidrList } from '../util/cidr';
import type { AuthMechanism, AuthRequest } from '../plugin/api';
import { SaslExchange, type SaslStep } from '../auth/sasl';
import { isPositive, type Reply } from './reply';
import { newConnectionId } from '../util/connection-id';

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
  /** SMTP AUTH: the mechanisms to advertise now, and the reply to an AUTH that may not go ahead. */
  authOffer(): { mechanisms: AuthMechanism[]; refusal?: Reply };
  /** Decoded credentials; resolves with the final AUTH reply (235, 535, 454...). */
  authenticate(request: AuthRequest): Promise<Reply>;
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

export class HookedConnection extends SMTPConnection implements ClientInput {
  handler!: FrontendHandler;
  talkedBeforeGreeting = false;
  private greeted = false;
  /** The socket feeding the parser (the TLS one after STARTTLS), its last chunk, and the command line being handled. */
  private watched: Socket | undefined;
  private lastChunk: Buffer | undefined;
  private currentLine: Buffer | undefined;
  /** A command that came before the greeting: the parser waits for its callback until the greeting is out. */
  private early: [Buffer, (() => void) | undefined] | undefined;
  /** The reply to write instead of the next one smtp-server writes. */
  private replyOverride: Reply | undefined;
  /** While set, smtp-server's replies are held here instead of written. */
  private held: [number, string | string[] | null | undefined, string | false | undefined][] | undefined;

  declare _server: FrontendServer;

  /**
   * smtp-server waits 100 ms before the greeting and answers an early talker
   * "421 You talk too soon"; here that is the earlytalker plugin's call (it may
   * only log, or wait longer), so the front end records what arrived and holds
   * early commands until the greeting is out.
   */
  override init(): void {
    this._setListeners(() => {
      this.watchInput(this._socket);
      if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
        this.writeReply({ code: 421, enhanced: '4.7.0', lines: [`${this.name} Too many connections, try again later`], disconnect: true });
        return;
      }
      this.connectionReady();
    });
  }

  watchInput(socket: Socket): void {
    if (socket === this.watched) return;
    this.watched = socket;
    this.lastChunk = undefined;
    socket.on('data', (chunk: Buffer) => {
      if (!this.greeted) this.talkedBeforeGreeting = true;
      this.lastChunk = chunk;
    });
  }

  /** smtp-server's parser, with its DATA search done natively (see data-scan.ts). */
  override _createParser(): SMTPStream {
    const parser = super._createParser();
    parser._feedDataStream = feedDataStream;
    return parser;
  }

  override _sendGreeting(): void {
    super._sendGreeting();
    if (this.greeted) return;
    this.greeted = true;
    const early = this.early;
    this.early = undefined;
    if (early) this._onCommand(early[0], early[1]);
  }

  hasUnreadInput(): boolean {
    if (!this.greeted) return this.talkedBeforeGreeting;
    const parser = this._parser;
    const chunk = this.lastChunk;
    if (!parser || !chunk) return false;
    // The parser's pending bytes are the chunk holding the command being handled plus any chunks queued behind it.
    if (this._socket.readableLength > 0 || parser.writableLength > chunk.length) return true;
    if (parser.writableLength === 0) return false;
    return !endsWithLine(chunk, this.currentLine);
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
    if (!this.greeted && !this._closing) {
      this.early = [command, callback];
      return;
    }
    this.currentLine = command;
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
    this.greetingCommand('EHLO', command, callback, () => this.ehloWithAuth(() => super.handler_EHLO(command, callback)));
  }

  // ---- SMTP AUTH and STARTTLS availability (per session, not smtp-server's server-wide options) ----

  /** Both depend on the session (TLS yet? auth plugins? blocked client?) and on reloads; smtp-server only knows fixed lists. */
  override _isDisabled(command: string): boolean {
    if (command === 'STARTTLS') return !this._server.tlsEnabled;
    if (command === 'AUTH') {
      const offer = this.handler.authOffer();
      return !offer.mechanisms.length && !offer.refusal;
    }
    return super._isDisabled(command);
  }

  /** smtp-server's EHLO lists its server-wide authMethods; swap in this session's for the (synchronous) reply. */
  private ehloWithAuth(run: () => void): void {
    const opts = this._server.options as { authMethods?: string[] };
    const saved = opts.authMethods;
    opts.authMethods = this.handler.authOffer().mechanisms;
    try {
      run();
    } finally {
      opts.authMethods = saved;
    }
  }

  override handler_AUTH(command: Buffer, callback: () => void): void {
    const offer = this.handler.authOffer();
    if (offer.refusal) {
      this.writeReply(offer.refusal);
      callback();
      return;
    }
    const args = command.toString().trim().split(/\s+/).slice(1);
    const mech = (args[0] ?? '').toUpperCase() as AuthMechanism;
    if (!args[0] || args.length > 2) {
      this.writeReply({ code: 501, enhanced: '5.5.4', lines: ['Syntax: AUTH mechanism [initial-response]'] });
      callback();
      return;
    }
    if (!offer.mechanisms.includes(mech)) {
      this.writeReply({ code: 504, enhanced: '5.5.4', lines: ['Unrecognized authentication type'] });
      callback();
      return;
    }
    const { exchange, first } = SaslExchange.start(mech, args[1], this.name);
    this.saslStep(exchange, first, callback);
  }

  private saslStep(exchange: SaslExchange, step: SaslStep, callback: () => void): void {
    switch (step.kind) {
      case 'challenge':
        // The continuation line goes to the exchange, never to the command dispatcher (nor to the log: see _onCommand).
        this._nextHandler = (line: Buffer, cb: () => void) => this.saslStep(exchange, exchange.next(line.toString()), cb);
        this.emitReply(334, step.text, false);
        callback();
        return;
      case 'error':
        this.writeReply(step.reply);
        callback();
        return;
      case 'done':
        this.guard(
          this.handler.authenticate(step.request).then((r) => {
            this.writeReply(r);
            callback();
          }),
          callback,
        );
    }
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

/**
 * Whether the chunk ends with the command line (or with its tail, when the line
 * was split across chunks): then nothing followed the command in it. A chunk
 * ending in an identical later line reads as nothing following (a miss, never
 * a false alarm).
 */
function endsWithLine(chunk: Buffer, line: Buffer | undefined): boolean {
  const text = chunk.toString('latin1');
  const eol = /\r?\n$/.exec(text);
  if (!eol || !line) return false;
  const body = text.slice(0, eol.index);
  const nl = body.lastIndexOf('\n');
  const cmd = line.toString('latin1');
  return nl >= 0 ? body.slice(nl + 1) === cmd : cmd.endsWith(body);
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
  /** STARTTLS is offered (a certificate is configured). */
  tlsEnabled = false;

  /** New certificate and key (SIGHUP): used by every STARTTLS from now on; sessions already in TLS keep theirs. */
  setTls(tls: { key: Buffer; cert: Buffer } | undefined): void {
    if (tls) this.updateSecureContext({ key: tls.key, cert: tls.cert });
    this.tlsEnabled = !!tls;
  }

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
      // Both are decided per session by HookedConnection._isDisabled (TLS can come with a reload, AUTH with the plugins).
      hideSTARTTLS: false,
      disabledCommands: [],
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
    this.tlsEnabled = !!opts.tls;
  }

  /**
   * smtp-server draws 10 random bytes and goes through a BigInt for every
   * connection's id (1-2% of the CPU of a small message); prequeue's counter
   * ids are unique enough and are the ones the log uses anyway. A PROXY header
   * (never enabled here) would still be read by smtp-server itself.
   */
  override _handleProxy(socket: Socket, callback: Parameters<SMTPServer['_handleProxy']>[1]): void {
    if (this._expectsProxyHeader(socket)) {
      super._handleProxy(socket, callback);
      return;
    }
    const id = newConnectionId();
    // Deferred like smtp-server's own, so the connection starts on a fresh turn of the event loop.
    setImmediate(() => callback(null, { id, ignore: false }));
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

  override onSecure(socket: Socket, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    const conn = FrontendServer.conn(session);
    conn.watchInput(socket);
    conn.handler.secured();
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
