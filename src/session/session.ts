import { PassThrough, type Readable, type Writable } from 'node:stream';
import { DownstreamRelay } from '../backend/relay';
import { Spool, type SpoolViolation } from '../message/spool';
import type { MessageHeaders } from '../message/types';
import type { Logger } from '../log';
import type { AuthRequest, HookArgs, HookName } from '../plugin/api';
import { SessionAuth, type AuthOffer } from '../auth/session-auth';
import { isImmune, type DeferredVerdict, type HookOutcome, type RunScope } from '../plugin/chain';
import { Decision, isDeny, type Verdict } from '../plugin/decision';
import type { Runtime } from '../runtime';
import type { FrontendHandler, PathArgument, ProxyAttributes } from '../smtp/frontend';
import { DEFAULTS, respond, type RespondingHook } from '../smtp/responders';
import { isPositive, reply, replyText, type Reply } from '../smtp/reply';
import { rfc5322Date } from '../util/date';
import { Results } from './results';
import type { Address, AuthInfo, ClientInfo, ClientInput, ConnectionState, Endpoint, Immunity } from './state';
import { Transaction, forwardedRcptArgument, toAddress } from './transaction';

/** Where a hook sits in the dialogue; a deferred rejection is delivered at a later stage. */
const STAGE: Partial<Record<HookName, number>> = {
  connect: 0,
  helo: 1,
  ehlo: 1,
  mail: 2,
  rcpt: 3,
  data: 4,
  data_headers_end: 5,
  data_post: 6,
  queue: 7,
};
const CONNECTION_HOOKS = new Set<HookName>(['connect', 'helo', 'ehlo']);

const TEMP_FAILURE = reply(451, '4.3.0', 'Temporary local problem, please try again later');

/**
 * stream.pipeline() without its per-call AbortController (measurable at a
 * thousand messages a second): resolves when the spool has everything,
 * rejects if the client's stream fails or is destroyed (client gone).
 */
function receive(from: Readable, to: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err?: Error): void => {
      from.unpipe(to);
      to.destroy();
      reject(err ?? new Error('connection closed before the message was received in full'));
    };
    from.once('error', fail);
    from.once('close', () => {
      if (!from.readableEnded) fail();
    });
    to.once('error', fail);
    to.once('finish', resolve);
    from.pipe(to);
  });
}

class SessionState implements ConnectionState {
  relayClient = false;
  immunity: Immunity = { all: false, plugins: new Set() };
  notes: Record<string, unknown> = {};
  results = new Results();
  transactions = 0;
  input?: ClientInput;
  auth?: AuthInfo;
  constructor(
    readonly id: string,
    readonly mode: 'postfix' | 'standalone',
    public client: ClientInfo,
    readonly peer: Endpoint,
    readonly local: Endpoint,
    public tls: boolean,
  ) {}
}

export interface SessionOptions {
  runtime: Runtime;
  /** The front end's id for the connection, so that both log under one name. */
  id: string;
  peer: Endpoint;
  local: Endpoint;
  secure: boolean;
  /** Connections now open from the TCP peer's address, this one included. */
  connectionsFromPeer: () => number;
  /** The front end's view of the peer's input timing (earlytalker). */
  input?: ClientInput;
}

/**
 * One client connection: takes each command from the front end, runs the
 * plugin chain, keeps the downstream in lock-step, and answers with the
 * responders' or the downstream's reply.
 */
export class Session implements FrontendHandler {
  readonly state: SessionState;
  private readonly rt: Runtime;
  private readonly log: Logger;
  private readonly relay: DownstreamRelay;
  /** The TCP peer may describe the real client (XFORWARD/XCLIENT). */
  private readonly trustedPeer: boolean;
  private txn: Transaction | undefined;
  private connDeferred: DeferredVerdict[] = [];
  private txnDeferred: DeferredVerdict[] = [];
  /** Behind Postfix the connect/helo hooks wait for XFORWARD to say who the client is. */
  private connectHooksDone = false;
  private closedAlready = false;
  private readonly opts: SessionOptions;
  private readonly auth: SessionAuth;

  constructor(opts: SessionOptions) {
    this.opts = opts;
    this.rt = opts.runtime;
    this.rt.users++;
    const id = opts.id;
    const cfg = this.rt.config;
    this.state = new SessionState(id, cfg.mode, { addr: opts.peer.addr, port: opts.peer.port, via: 'tcp' }, opts.peer, opts.local, opts.secure);
    this.state.input = opts.input;
    this.log = this.rt.log.child({ conn: id });
    this.trustedPeer = this.rt.trustedProxies.contains(opts.peer.addr);
    if (this.log.enabled('debug')) this.dialogue = (dir, line) => this.log.debug(`${dir}: ${line}`);
    this.relay = new DownstreamRelay(cfg.downstream, cfg.downstream.ehlo_name ?? cfg.hostname, cfg.mode, this.log, cfg.reply_deadline * 1000, this.rt.pool);
    this.auth = new SessionAuth({
      runtime: this.rt,
      state: this.state,
      log: this.log,
      run: (hook, request) => this.run(hook, request),
      inTransaction: () => !!this.txn,
      changed: () => this.updateRelayClient(),
    });
    this.updateRelayClient();
  }

  get runtime(): Runtime {
    return this.rt;
  }

  /** Postfix's own EHLO and the connect before XFORWARD describe Postfix, not the client. */
  private get waitingForProxy(): boolean {
    return this.state.mode === 'postfix' && this.trustedPeer && this.state.client.via === 'tcp';
  }

  /**
   * Connection verdicts go out at MAIL/RCPT behind Postfix (a refused greeting there is a generic 451),
   * and for a client a trusted proxy described (XCLIENT/XFORWARD): the greeting has gone out already.
   */
  private get deferConnectionVerdicts(): boolean {
    return this.state.mode === 'postfix' || this.state.client.via !== 'tcp' || this.rt.config.deferred_rejection.connection;
  }

  private updateRelayClient(): void {
    const auth = this.state.auth;
    this.state.relayClient = !!auth || this.rt.relayClients.contains(this.state.client.addr);
    // The downstream hears the login through XCLIENT (when it is a Postfix that takes it).
    this.state.client.login = auth && this.rt.config.auth.xclient_login ? auth.user : undefined;
  }

  private scope(): RunScope {
    return {
      conn: this.state,
      txn: this.txn,
      log: this.log,
      defer: (d) => {
        this.log.info(`deferring ${d.plugin}'s rejection at ${d.hook}: ${d.verdict.message ?? d.verdict.decision}`);
        (CONNECTION_HOOKS.has(d.hook) ? this.connDeferred : this.txnDeferred).push(d);
      },
    };
  }

  private run<H extends HookName>(hook: H, ...args: HookArgs[H]): Promise<HookOutcome> {
    return this.rt.chain.run(hook, this.scope(), ...args);
  }

  private notify<H extends HookName>(hook: H, ...args: HookArgs[H]): Promise<void> {
    return this.rt.chain.notify(hook, this.scope(), ...args);
  }

  private pluginImmune(pluginId: string, rcpt: Address | undefined): boolean {
    const p = this.rt.chain.plugins.find((x) => x.id === pluginId);
    return !!p?.common.immune && isImmune(this.state, this.txn, pluginId, rcpt);
  }

  /**
   * A held-back rejection due at this stage, if any (immunity is judged now, not
   * when it was held; at RCPT the recipient's own immunity counts too).
   */
  private due(hook: RespondingHook, rcpt?: Address): DeferredVerdict | undefined {
    const stage = STAGE[hook] ?? 0;
    if (stage >= STAGE[this.rt.config.deferred_rejection.stage]!) {
      const d = this.connDeferred.find((v) => !this.pluginImmune(v.plugin, rcpt));
      if (d) return d;
    }
    return this.txnDeferred.find((v) => stage > (STAGE[v.hook] ?? 0) && !this.pluginImmune(v.plugin, rcpt));
  }

  /** The reply for a verdict, or undefined when the command may go ahead. */
  private verdictReply(hook: RespondingHook, verdict: Verdict): Reply | undefined {
    if (verdict.decision === Decision.DONE && verdict.code) {
      return reply(verdict.code, verdict.enhanced, verdict.message ?? '');
    }
    return respond(hook, verdict);
  }

  /**
   * Runs a deciding hook; a held-back rejection due here comes before any plugin's
   * verdict (the chain asks for it once the plugins placed ahead of the first
   * immune-able one, such as the whitelist, have run). Undefined means go ahead.
   */
  private async decide<H extends RespondingHook & HookName>(hook: H, ...args: HookArgs[H]): Promise<{ reply?: Reply; outcome?: HookOutcome }> {
    const rcpt = hook === 'rcpt' ? (args[0] as Address) : undefined;
    const outcome = await this.rt.chain.run(hook, { ...this.scope(), heldBack: () => this.due(hook, rcpt) }, ...args);
    const pending = outcome.held;
    if (pending) {
      this.log.info(`delivering ${pending.plugin}'s deferred rejection (from ${pending.hook}) at ${hook}`);
      // The deny meta-hook hears of it now, when the client does (count_denies counts what clients see).
      if (!pending.announced) await this.rt.chain.meta(hook, pending.plugin, pending.verdict, this.scope());
      return { reply: respond(hook, pending.verdict) };
    }
    return { reply: this.verdictReply(hook, outcome.verdict), outcome };
  }

  // ---- connection ----

  async connected(): Promise<Reply | undefined> {
    const cfg = this.rt.config;
    if (cfg.mode === 'standalone' && this.opts.connectionsFromPeer() > cfg.limits.connections_per_client) {
      return reply(421, '4.7.0', 'Too many connections from your address, try again later', true);
    }
    if (this.waitingForProxy) return undefined;
    return this.runConnectHooks();
  }

  private async runConnectHooks(): Promise<Reply | undefined> {
    this.connectHooksDone = true;
    const outcome = await this.run('connect');
    if (!isDeny(outcome.verdict.decision)) return undefined;
    if (this.deferConnectionVerdicts) {
      this.connDeferred.push({ plugin: outcome.plugin ?? 'core', hook: 'connect', verdict: outcome.verdict, announced: true });
      return undefined;
    }
    return respond('connect', outcome.verdict);
  }

  secured(): void {
    // RFC 3207: what the client said before TLS no longer counts, an AUTH in the clear included.
    this.state.tls = true;
    this.state.client.helo = undefined;
    this.state.auth = undefined;
    this.updateRelayClient();
    this.endTransaction('reset').catch((err: Error) => this.log.error(`reset after STARTTLS failed: ${err.message}`));
  }

  async helo(verb: 'HELO' | 'EHLO', host: string): Promise<Reply | undefined> {
    if (this.waitingForProxy) return undefined;
    if (this.txn) await this.endTransaction('reset');
    this.state.client.helo = host;
    this.state.client.proto = verb === 'EHLO' ? 'ESMTP' : 'SMTP';
    return this.runHeloHook(verb === 'EHLO' ? 'ehlo' : 'helo', host);
  }

  private async runHeloHook(hook: 'helo' | 'ehlo', host: string): Promise<Reply | undefined> {
    const outcome = await this.run(hook, host);
    if (!isDeny(outcome.verdict.decision)) return undefined;
    if (this.deferConnectionVerdicts) {
      this.connDeferred.push({ plugin: outcome.plugin ?? 'core', hook, verdict: outcome.verdict, announced: true });
      return undefined;
    }
    return respond(hook, outcome.verdict);
  }

  async proxied(verb: 'XFORWARD' | 'XCLIENT', attrs: ProxyAttributes): Promise<void> {
    const str = (k: string): string | undefined => {
      const v = attrs.get(k);
      return v === false || v === undefined || v === '' ? undefined : String(v);
    };
    const previous = this.state.client;
    const addr = str('ADDR') ?? previous.addr;
    const newClient = addr !== previous.addr || verb === 'XCLIENT' || previous.via === 'tcp';
    this.state.client = {
      addr,
      port: Number(str('PORT') ?? (addr === previous.addr ? previous.port : 0)) || 0,
      name: str('NAME'),
      helo: str('HELO'),
      proto: str('PROTO'),
      ident: verb === 'XFORWARD' ? str('IDENT') : undefined,
      source: verb === 'XFORWARD' ? str('SOURCE') : undefined,
      via: verb === 'XFORWARD' ? 'xforward' : 'xclient',
    };
    // A login belongs to the client that gave it.
    if (newClient) this.state.auth = undefined;
    this.updateRelayClient();
    this.log.debug(`${verb}: client is ${this.state.client.addr}`, { client: this.state.client });
    if (!newClient && this.connectHooksDone) return;
    // A different client: nothing learnt about the previous one applies.
    this.state.notes = {};
    this.state.results = new Results();
    this.state.immunity = { all: false, plugins: new Set() };
    this.connDeferred = [];
    await this.runConnectHooks();
    // XFORWARD carries the client's HELO (no EHLO follows); after XCLIENT the client greets again itself.
    const helo = this.state.client.helo;
    if (verb === 'XFORWARD' && helo) {
      await this.runHeloHook(this.state.client.proto === 'SMTP' ? 'helo' : 'ehlo', helo);
    }
  }

  // ---- SMTP AUTH (standalone) ----

  authOffer(): AuthOffer {
    return this.auth.offer();
  }

  authenticate(request: AuthRequest): Promise<Reply> {
    return this.auth.authenticate(request);
  }

  /** auth.required (a submission port): MAIL needs AUTH first, except from relay_clients. */
  private authRequired(): boolean {
    return this.state.mode === 'standalone' && this.rt.config.auth.required && !this.state.relayClient;
  }

  // ---- transaction ----

  async mail(arg: PathArgument): Promise<Reply> {
    if (!this.connectHooksDone) {
      // Behind Postfix without XFORWARD: the peer is all we know of the client.
      await this.runConnectHooks();
    }
    if (this.txn) await this.endTransaction('reset');
    if (this.authRequired()) return reply(530, '5.7.0', 'Authentication required');
    const txn = new Transaction(this.state.id, ++this.state.transactions);
    txn.sender = toAddress(arg);
    if (txn.sender.address && this.rt.immuneSenders(txn.sender.address)) txn.immunity.all = true;
    this.txn = txn;
    const { reply: refusal } = await this.decide('mail', txn.sender);
    // A MAIL that did not succeed leaves no transaction.
    if (refusal) return this.finish(refusal, 'MAIL refused');
    const r = await this.relay.mail(this.state.client, arg.raw);
    if (!isPositive(r)) return this.finish(r, 'MAIL refused');
    return r;
  }

  async rcpt(arg: PathArgument): Promise<Reply> {
    const txn = this.txn;
    if (!txn) return reply(503, '5.5.1', 'Error: need MAIL command');
    const rcpt = toAddress(arg);
    const { reply: refusal } = await this.decide('rcpt', rcpt);
    const r = refusal ?? (rcpt.forwardTo?.length ? await this.relayForwarded(txn, rcpt, rcpt.forwardTo) : await this.relay.rcpt(arg.raw));
    if (isPositive(r)) txn.recipients.push(rcpt);
    else txn.rejected.push({ address: rcpt.address, reply: replyText(r) });
    return r;
  }

  /**
   * A recipient the plugins redirected (aliases): one downstream RCPT per target,
   * all within one reply deadline. The client gets 250 when at least one target
   * was accepted (the others are logged), else the downstream's reply, a
   * temporary one in preference so that the client tries again.
   */
  private async relayForwarded(txn: Transaction, rcpt: Address, targets: string[]): Promise<Reply> {
    const deadlineAt = Date.now() + this.rt.config.reply_deadline * 1000;
    const dsn = this.relay.offers('DSN');
    const replies: Reply[] = [];
    for (const target of targets) {
      const r = await this.relay.rcpt(forwardedRcptArgument(rcpt, target, dsn), deadlineAt);
      if (!isPositive(r)) this.log.warn(`downstream refused ${target} (for ${rcpt.address}): ${replyText(r)}`);
      replies.push(r);
    }
    const accepted = replies.find(isPositive);
    if (accepted) {
      replies.forEach((r, i) => {
        if (!isPositive(r)) txn.rejected.push({ address: `${targets[i]} (for ${rcpt.address})`, reply: replyText(r) });
      });
      return accepted;
    }
    return replies.find((r) => r.code < 500) ?? replies[0]!;
  }

  async dataCommand(): Promise<Reply | undefined> {
    if (!this.txn) return undefined;
    const { reply: refusal } = await this.decide('data');
    if (refusal) {
      await this.relay.reset();
      await this.finish(refusal, 'DATA refused');
    }
    return refusal;
  }

  private violationReply(v: SpoolViolation): Reply {
    switch (v.kind) {
      case 'oversize':
        return reply(552, '5.3.4', `Message size exceeds fixed limit of ${this.rt.config.limits.message_size} bytes`);
      case 'bare_newline':
        return reply(550, '5.6.0', 'Message contains bare CR or LF characters, which are not allowed (RFC 5321 2.3.8)');
      case 'nul':
        return reply(550, '5.6.0', 'Message contains NUL characters, which are not allowed');
      case 'line_length':
        return reply(550, '5.6.0', `Message contains a line longer than ${this.rt.config.limits.data_line_length} characters`);
      case 'header_size':
        return reply(552, '5.3.4', 'Message header too large');
    }
  }

  async message(stream: Readable & { sizeExceeded?: boolean }): Promise<Reply> {
    const txn = this.txn;
    if (!txn) {
      stream.resume();
      return TEMP_FAILURE;
    }
    const cfg = this.rt.config;
    const spool = new Spool({
      maxSize: cfg.limits.message_size,
      memoryThreshold: cfg.spool.memory_threshold,
      memoryBudget: cfg.spool.memory_budget,
      tmpDir: this.rt.spoolDir,
      bareNewline: cfg.data.bare_newline,
      nul: cfg.data.nul,
      maxLineLength: cfg.limits.data_line_length,
    });
    let headersOutcome: Promise<HookOutcome> | undefined;
    if (this.rt.chain.has('data_headers_end')) {
      spool.once('headers', (headers: MessageHeaders) => {
        headersOutcome = this.run('data_headers_end', headers);
        // Rejections are read at end of data; until then a failure must not go unhandled.
        headersOutcome.catch(() => undefined);
      });
    }
    if (this.cutsThrough()) return this.messageCutThrough(txn, stream, spool);
    let deadlineAt = 0;
    try {
      await receive(stream, spool);
      // The client (Postfix) now waits for our answer: everything from here shares reply_deadline.
      deadlineAt = Date.now() + cfg.reply_deadline * 1000;
      txn.message = await spool.finish();
    } catch (err) {
      await spool.dispose();
      this.log.warn(`message not received: ${(err as Error).message}`);
      await this.relay.reset();
      return this.finish(TEMP_FAILURE, 'message not received');
    }
    txn.size = spool.size;
    const violation = spool.violations[0];
    if (violation) {
      await this.relay.reset();
      return this.finish(this.violationReply(violation), violation.detail);
    }
    const refusal = await this.decideMessage(txn, headersOutcome);
    if (refusal) {
      await this.relay.reset();
      return this.finish(refusal, 'refused');
    }
    const queued = await this.queue(txn, deadlineAt);
    return this.finish(queued, undefined);
  }

  /**
   * Whether the message can go downstream while it arrives: only when nothing
   * needs it whole first (no data_headers_end, data_post or queue plugin, no
   * Received header of ours to put in front) and spool.cut_through allows it.
   */
  private cutsThrough(): boolean {
    const chain = this.rt.chain;
    return (
      this.rt.config.spool.cut_through &&
      !chain.has('data_headers_end') &&
      !chain.has('data_post') &&
      !chain.has('queue') &&
      !this.addsReceived()
    );
  }

  /**
   * Cut-through: the downstream gets DATA now and the message as the spool
   * checks it, but its final dot only once the client's message is all in and
   * has no violation; otherwise the link is dropped without the dot. The client
   * hears the downstream's end-of-data reply as in store-and-forward, so a 250
   * still means the downstream took this exact message. Store-and-forward costs
   * a temp-file write and read of every large message on top of this.
   */
  private async messageCutThrough(txn: Transaction, stream: Readable, spool: Spool): Promise<Reply> {
    const body = new PassThrough();
    // Ending or destroying it is this method's business; a late error must not become an uncaught one.
    body.on('error', () => undefined);
    spool.cutThrough(body);
    const relayed = this.relay.dataCutThrough(body);
    const abort = async (): Promise<void> => {
      body.destroy();
      await relayed.step;
    };
    try {
      await receive(stream, spool);
    } catch (err) {
      await abort();
      await spool.dispose();
      this.log.warn(`message not received: ${(err as Error).message}`);
      return this.finish(TEMP_FAILURE, 'message not received');
    }
    const deadlineAt = Date.now() + this.rt.config.reply_deadline * 1000;
    txn.size = spool.size;
    await spool.dispose();
    const violation = spool.violations[0];
    if (violation) {
      await abort();
      return this.finish(this.violationReply(violation), violation.detail);
    }
    if (!body.destroyed) body.end();
    return this.finish(await relayed.reply(deadlineAt), undefined);
  }

  /** Everything from the final dot to the decision to deliver, within the data_post budget. */
  private async decideMessage(txn: Transaction, headersOutcome: Promise<HookOutcome> | undefined): Promise<Reply | undefined> {
    const budgetMs = this.rt.config.data_post_budget * 1000;
    let timer: NodeJS.Timeout | undefined;
    const overBudget = new Promise<Reply>((resolve) => {
      timer = setTimeout(() => {
        this.log.warn(`message checks took longer than data_post_budget (${this.rt.config.data_post_budget} s)`);
        resolve(reply(451, '4.3.0', 'Message checks timed out, try again later'));
      }, budgetMs);
    });
    const checks = (async (): Promise<Reply | undefined> => {
      if (headersOutcome) {
        const r = this.verdictReply('data_headers_end', (await headersOutcome).verdict);
        if (r) return r;
      }
      const { reply: r } = await this.decide('data_post', txn.message!);
      return r;
    })();
    try {
      return await Promise.race([checks, overBudget]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The queue hook may take the message itself; otherwise it goes to the downstream. */
  private async queue(txn: Transaction, deadlineAt: number): Promise<Reply> {
    const message = txn.message!;
    if (this.rt.chain.has('queue')) {
      const outcome = await this.run('queue', message);
      const refusal = this.verdictReply('queue', outcome.verdict);
      if (refusal) {
        await this.relay.reset();
        return refusal;
      }
      if (outcome.verdict.decision === Decision.OK) {
        await this.relay.reset();
        return reply(250, '2.0.0', outcome.verdict.message ?? 'Message accepted');
      }
    }
    if (this.addsReceived()) message.headers.prepend('Received', this.receivedHeader(txn));
    return this.relay.data(message.stream(), deadlineAt);
  }

  private addsReceived(): boolean {
    const mode = this.rt.config.received_header;
    return mode === 'always' || (mode === 'auto' && this.state.mode === 'standalone');
  }

  private receivedHeader(txn: Transaction): string {
    const c = this.state.client;
    const auth = this.state.auth;
    const noted = !!auth && this.rt.config.auth.received_header;
    // RFC 3848: ESMTPS for TLS, ESMTPA for AUTH, ESMTPSA for both.
    const proto = `${c.proto ?? 'SMTP'}${this.state.tls ? 'S' : ''}${noted ? 'A' : ''}`;
    const addr = c.addr.includes(':') ? `IPv6:${c.addr}` : c.addr;
    const forPart = txn.recipients.length === 1 ? ` for <${txn.recipients[0]!.address}>` : '';
    const authPart = noted ? ` (Authenticated sender: ${auth.user.replace(/[()\\\r\n]/g, '?')})` : '';
    return `from ${c.helo ?? 'unknown'} (${c.name ?? 'unknown'} [${addr}])${authPart} by ${this.rt.config.hostname} (prequeue) with ${proto} id ${txn.id}${forPart}; ${rfc5322Date(new Date())}`;
  }

  /**
   * Ends the transaction with its final reply: log line, reset_transaction
   * (qpsmtpd runs it after every transaction, not only at RSET: plugins keep
   * per-transaction state and must see each one end), spool removed.
   */
  private async finish(r: Reply, note: string | undefined): Promise<Reply> {
    const txn = this.txn;
    if (txn) {
      this.logTransaction(txn, r, note);
      this.txnDeferred = [];
      if (this.rt.chain.has('reset_transaction')) await this.notify('reset_transaction');
      this.txn = undefined;
      txn.dispose().catch((err: Error) => this.log.warn(`spool cleanup failed: ${err.message}`));
    }
    return r;
  }

  private logTransaction(txn: Transaction, r: Reply, note: string | undefined): void {
    if (!this.log.enabled('info')) return;
    const c = this.state.client;
    this.log.info('transaction', {
      txn: txn.id,
      client: c.addr,
      name: c.name,
      helo: c.helo,
      sender: txn.sender ? `<${txn.sender.address}>` : undefined,
      recipients: txn.recipients.map((x) => x.address).join(','),
      rejected: txn.rejected.length ? txn.rejected : undefined,
      size: txn.size,
      results: Results.mergedSummary(this.state.results, txn.results),
      downstream: this.relay.lastReply ? replyText(this.relay.lastReply) : undefined,
      reply: replyText(r),
      note,
      ms: Date.now() - txn.started,
    });
  }

  /** A transaction that ends without a final reply of its own (RSET, a new MAIL, STARTTLS, the client gone). */
  private async endTransaction(why: 'reset' | 'disconnect'): Promise<void> {
    if (!this.txn) return;
    await this.relay.reset();
    await this.finish(reply(0, undefined, why), why);
  }

  // ---- other commands ----

  async rset(): Promise<Reply> {
    await this.endTransaction('reset');
    return DEFAULTS.rset;
  }

  async vrfy(argument: string): Promise<Reply> {
    const { verdict } = await this.run('vrfy', argument);
    if (verdict.decision === Decision.OK) return DEFAULTS.vrfyOk;
    return this.verdictReply('vrfy', verdict) ?? DEFAULTS.vrfy;
  }

  async noop(): Promise<Reply> {
    const { verdict } = await this.run('noop');
    return this.verdictReply('noop', verdict) ?? DEFAULTS.noop;
  }

  async unrecognized(verb: string, args: string): Promise<Reply> {
    const { verdict } = await this.run('unrecognized_command', verb, args);
    return this.verdictReply('unrecognized_command', verdict) ?? DEFAULTS.unrecognized;
  }

  async quit(): Promise<Reply> {
    const { verdict } = await this.run('quit');
    const r = verdict.decision === Decision.DONE && verdict.code ? this.verdictReply('quit', verdict)! : DEFAULTS.quit;
    return { ...r, disconnect: true };
  }

  closed(): void {
    if (this.closedAlready) return;
    this.closedAlready = true;
    this.onDisconnected?.();
    void (async () => {
      try {
        await this.endTransaction('disconnect');
        await this.notify('disconnect');
      } catch (err) {
        this.log.error(`disconnect handling failed: ${(err as Error).message}`);
      }
      await this.relay.quit().catch(() => undefined);
      this.rt.users--;
      this.onClosed?.();
    })();
  }

  /** Present only at debug level, so the front end does not even format lines otherwise. */
  readonly dialogue?: (dir: 'C' | 'S', line: string) => void;

  /** Set by the listener: called as soon as the client is gone (connection counting). */
  onDisconnected?: () => void;
  /** Set by the listener: called once the session has fully wound down. */
  onClosed?: () => void;
}
