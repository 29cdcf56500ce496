import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { DownstreamConfig } from '../config/schema';
import type { Logger } from '../log';
import { reply, type Reply } from '../smtp/reply';
import type { ClientInfo } from '../session/state';
import type { DownstreamPool } from './pool';
import { SmtpClient, SmtpClientError, type Stage } from './smtp-client';

/**
 * The lock-step link to the downstream MTA for one client connection: opened
 * at the first MAIL the plugins accept, it replays the transaction command by
 * command so every reply the client gets is the downstream's own (unless a
 * plugin decided otherwise). Failures become 4xx replies, never a 250.
 */
export class DownstreamRelay {
  private client: SmtpClient | undefined;
  /** The link came from the pool: it may have gone stale while idle. */
  private pooled = false;
  /** Who the downstream was told the client is by XCLIENT on this link (it cannot be told again). */
  private xclientFor: string | undefined;
  private inTransaction = false;
  lastReply: Reply | undefined;

  constructor(
    private readonly cfg: DownstreamConfig,
    private readonly ehloName: string,
    private readonly mode: 'postfix' | 'standalone',
    private readonly log: Logger,
    /** Milliseconds any one client reply may wait for the downstream, all its stages together. */
    private readonly replyDeadlineMs: number,
    private readonly pool?: DownstreamPool,
  ) {}

  /**
   * Bounds a whole step (which may be several downstream commands: connect,
   * EHLO, XFORWARD, MAIL) by the client's reply deadline; past it the link is
   * dropped, so a late downstream answer can never be taken for this one.
   */
  private async within(deadlineAt: number, step: () => Promise<Reply>): Promise<Reply> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<Reply>((resolve) => {
      timer = setTimeout(() => {
        this.log.warn(`downstream did not answer within the reply deadline; dropping the link`);
        this.drop();
        resolve(reply(451, '4.4.2', 'Downstream server timed out, try again later'));
      }, Math.max(0, deadlineAt - Date.now()));
    });
    try {
      return await Promise.race([step(), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  get connected(): boolean {
    return !!this.client && !this.client.closed;
  }

  private timeouts(): Partial<Record<Stage, number>> {
    const t = this.cfg.timeouts;
    const ms = (s: number): number => Math.round(s * 1000);
    return {
      connect: ms(t.connect),
      greeting: ms(t.greeting),
      ehlo: ms(t.command),
      starttls: ms(t.command),
      xclient: ms(t.command),
      xforward: ms(t.command),
      mail: ms(t.command),
      rcpt: ms(t.command),
      rset: ms(t.command),
      data: ms(t.data),
      message: ms(t.data),
      eod: ms(t.eod),
    };
  }

  /** Maps a client failure to the reply our client gets: always temporary, the message is not lost. */
  private failure(err: unknown, during: string): Reply {
    this.drop();
    if (err instanceof SmtpClientError) {
      this.log.warn(`downstream ${during} failed: ${err.kind} at ${err.stage}: ${err.message}`, {
        downstream: `${this.cfg.address.host}:${this.cfg.address.port}`,
      });
      if (err.kind === 'connect') return reply(451, '4.4.1', 'Downstream server unavailable, try again later');
      if (err.kind === 'timeout') return reply(451, '4.4.2', 'Downstream server timed out, try again later');
      if (err.kind === 'closed') return reply(451, '4.4.2', 'Downstream connection lost, try again later');
      if (err.kind === 'tls') return reply(451, '4.7.5', 'TLS to downstream server failed, try again later');
      if (err.reply) return reply(451, '4.3.0', 'Downstream server refused the connection, try again later');
      return reply(451, '4.3.0', 'Downstream protocol error, try again later');
    }
    this.log.error(`downstream ${during} failed: ${(err as Error)?.message ?? err}`);
    return reply(451, '4.3.0', 'Temporary local problem, please try again later');
  }

  private async ensureConnected(client: ClientInfo, usePool: boolean): Promise<Reply | undefined> {
    if (this.connected && this.xclientFor !== undefined && this.xclientFor !== clientKey(client)) {
      // A chained proxy described a different client: this link speaks for the old one.
      await this.quit();
    }
    if (this.connected) return undefined;
    this.xclientFor = undefined;
    const idle = usePool ? this.pool?.take() : undefined;
    if (idle) {
      this.attach(idle, true);
      return undefined;
    }
    const tlsOpts = {
      rejectUnauthorized: this.cfg.tls.reject_unauthorized,
      ...(this.cfg.tls.ca ? { ca: readFileSync(this.cfg.tls.ca) } : {}),
      ...(this.cfg.tls.servername ? { servername: this.cfg.tls.servername } : {}),
    };
    const c = await SmtpClient.connect({
      host: this.cfg.address.host,
      port: this.cfg.address.port,
      timeouts: this.timeouts(),
      tls: tlsOpts,
      log: this.log.enabled('debug') ? (dir, line) => this.log.debug(`downstream ${dir}: ${line}`) : undefined,
    });
    this.attach(c, false);
    let r = await c.ehlo(this.ehloName);
    if (r.code !== 250) return reply(451, '4.3.0', 'Downstream server refused EHLO, try again later');
    if (this.cfg.starttls !== 'off') {
      if (c.capabilities.has('STARTTLS')) {
        r = await c.starttls();
        if (r.code !== 220) return reply(451, '4.7.5', 'Downstream server refused STARTTLS, try again later');
        r = await c.ehlo(this.ehloName);
        if (r.code !== 250) return reply(451, '4.3.0', 'Downstream server refused EHLO, try again later');
      } else if (this.cfg.starttls === 'required') {
        return reply(451, '4.7.5', 'Downstream server does not offer STARTTLS, try again later');
      }
    }
    if (this.mode === 'standalone' && this.cfg.xclient && c.capabilities.has('XCLIENT')) {
      r = await c.xclient(clientAttributes(client, 'XCLIENT'));
      if (r.code !== 220) return reply(451, '4.3.0', 'Downstream server refused XCLIENT, try again later');
      this.xclientFor = clientKey(client);
      r = await c.ehlo(client.helo ?? this.ehloName);
      if (r.code !== 250) return reply(451, '4.3.0', 'Downstream server refused EHLO, try again later');
    }
    return undefined;
  }

  private readonly onLinkClose = (): void => {
    this.client = undefined;
  };

  private attach(c: SmtpClient, pooled: boolean): void {
    this.client = c;
    this.pooled = pooled;
    c.once('close', this.onLinkClose);
  }

  /** Takes the link away from this relay (to pool it or end it). */
  private detach(): SmtpClient | undefined {
    const c = this.client;
    this.client = undefined;
    this.pooled = false;
    this.inTransaction = false;
    c?.removeListener('close', this.onLinkClose);
    return c;
  }

  /** Opens the link if needed, describes the client (XFORWARD, every transaction), sends MAIL. */
  mail(client: ClientInfo, raw: string): Promise<Reply> {
    return this.within(Date.now() + this.replyDeadlineMs, async () => {
      const first = await this.doMail(client, raw, true);
      if (!first.stale) return first.reply;
      // A pooled link the downstream dropped while idle fails before MAIL is accepted;
      // nothing was accepted on it, so once more on a new link (not the next pooled one) is safe.
      this.log.debug('pooled downstream link was stale; retrying on a new one');
      return (await this.doMail(client, raw, false)).reply;
    });
  }

  /** `stale`: it failed on a pooled link before the downstream itself answered MAIL. */
  private async doMail(client: ClientInfo, raw: string, usePool: boolean): Promise<{ reply: Reply; stale: boolean }> {
    try {
      const problem = await this.ensureConnected(client, usePool);
      if (problem) {
        this.drop();
        return { reply: problem, stale: false };
      }
      const c = this.client!;
      // After XCLIENT the downstream already takes the real client for its own; XFORWARD would only repeat it.
      const describe = this.cfg.xforward && this.xclientFor === undefined && c.capabilities.has('XFORWARD');
      const { xforward, mail: r } = await c.xforwardAndMail(describe ? clientAttributes(client, 'XFORWARD') : undefined, raw);
      if (xforward && xforward.code !== 250) {
        const stale = this.pooled && xforward.code === 421;
        // MAIL may have been accepted in the same round trip: the link is not reused.
        this.drop();
        return { reply: reply(451, '4.3.0', 'Downstream server refused XFORWARD, try again later'), stale };
      }
      if (r.code === 421 && this.pooled) {
        this.drop();
        return { reply: r, stale: true };
      }
      this.inTransaction = r.code === 250;
      this.lastReply = r;
      return { reply: r, stale: false };
    } catch (err) {
      const stale = this.pooled && err instanceof SmtpClientError && err.kind !== 'timeout';
      return { reply: this.failure(err, 'MAIL'), stale };
    }
  }

  /** `deadlineAt`: when one client RCPT becomes several downstream ones, they share its deadline. */
  rcpt(raw: string, deadlineAt = Date.now() + this.replyDeadlineMs): Promise<Reply> {
    return this.within(deadlineAt, () => this.doRcpt(raw));
  }

  /** Whether the downstream advertised this EHLO keyword (DSN, SMTPUTF8...) on the current link. */
  offers(keyword: string): boolean {
    return !!this.client?.capabilities.has(keyword.toUpperCase());
  }

  private async doRcpt(raw: string): Promise<Reply> {
    if (!this.client || !this.inTransaction) return reply(451, '4.4.2', 'Downstream connection lost, try again later');
    try {
      const r = await this.client.rcpt(raw);
      this.lastReply = r;
      return r;
    } catch (err) {
      return this.failure(err, 'RCPT');
    }
  }

  /**
   * DATA, the message, the final dot: the downstream's end-of-data reply is the
   * answer, unless `deadlineAt` (set from the client's final dot) passes first.
   */
  data(message: Readable, deadlineAt: number): Promise<Reply> {
    return this.within(deadlineAt, () => this.doData(message));
  }

  /**
   * Cut-through: DATA now and the message as it arrives in `body`. The final dot
   * goes out only when `body` ends; destroying it instead drops the link without
   * it. `step` settles with the downstream's answer (early, with a refusal or a
   * failure, and then `body` is destroyed so its writer never waits on it);
   * `reply(deadlineAt)` waits for it within the deadline set at the client's
   * final dot.
   */
  dataCutThrough(body: Writable & Readable): { step: Promise<Reply>; reply: (deadlineAt: number) => Promise<Reply> } {
    const step = this.doData(body, true).finally(() => {
      if (!body.writableEnded && !body.destroyed) body.destroy();
    });
    return { step, reply: (deadlineAt) => this.within(deadlineAt, () => step) };
  }

  private async doData(message: Readable, live = false): Promise<Reply> {
    if (!this.client || !this.inTransaction) {
      message.destroy();
      return reply(451, '4.4.2', 'Downstream connection lost, try again later');
    }
    const c = this.client;
    try {
      const r = await c.data();
      if (r.code !== 354) {
        message.destroy();
        // MAIL and RCPT still stand at the downstream: reset() sends RSET before the link is reused.
        this.lastReply = r;
        // A 2xx/3xx other than 354 here is nonsense; never let it turn into a success.
        return r.code >= 400 ? r : reply(451, '4.3.0', 'Downstream server refused DATA, try again later');
      }
      const eod = await c.sendMessage(message, { live });
      this.inTransaction = false;
      this.lastReply = eod;
      return eod;
    } catch (err) {
      message.destroy();
      return this.failure(err, 'DATA');
    }
  }

  /**
   * Ends the downstream transaction without delivering it. Before DATA an RSET
   * is enough; anything else (a stream in progress) is torn down so the final
   * dot is never sent.
   */
  async reset(): Promise<void> {
    if (!this.client || !this.inTransaction) return;
    this.inTransaction = false;
    try {
      const r = await this.client.rset();
      if (r.code !== 250) this.drop();
    } catch {
      this.drop();
    }
  }

  /** Tear down at once (never sends the final dot). */
  drop(): void {
    this.detach()?.abort();
  }

  /**
   * The client is gone: a clean link goes back to the pool, anything else is
   * ended with QUIT (an open transaction is reset first, so nothing half-done
   * is ever handed on).
   */
  async quit(): Promise<void> {
    if (this.inTransaction) await this.reset();
    const reusable = this.xclientFor === undefined;
    const c = this.detach();
    if (!c || c.closed) return;
    if (this.pool && reusable) this.pool.give(c);
    else await c.quit().catch(() => c.close());
  }
}

function clientKey(c: ClientInfo): string {
  return `${c.addr} ${c.port} ${c.name ?? ''} ${c.helo ?? ''} ${c.login ?? ''}`;
}

/** XFORWARD/XCLIENT attributes for the real client; values are xtext-encoded by the client module. */
export function clientAttributes(client: ClientInfo, verb: 'XFORWARD' | 'XCLIENT'): Record<string, string | undefined> {
  const attrs: Record<string, string | undefined> = {
    NAME: client.name ?? '[UNAVAILABLE]',
    ADDR: client.addr,
    PORT: client.port ? String(client.port) : undefined,
    PROTO: client.proto ?? (client.helo ? 'ESMTP' : undefined),
    HELO: client.helo,
  };
  if (verb === 'XCLIENT') attrs.LOGIN = client.login;
  if (verb === 'XFORWARD') {
    attrs.IDENT = client.ident;
    attrs.SOURCE = client.source ?? (isLoopback(client.addr) ? 'LOCAL' : 'REMOTE');
  }
  return attrs;
}

function isLoopback(addr: string): boolean {
  return isIP(addr) === 4 ? addr.startsWith('127.') : addr === '::1';
}
