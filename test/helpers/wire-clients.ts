/**
 * SMTP clients for end-to-end plugin tests, one per way prequeue learns who
 * the client is:
 *
 * - `connectFrom('127.0.0.5', port)`: a direct TCP peer (standalone mode) from
 *   an address of the test's choosing (all of 127.0.0.0/8 is local on Linux;
 *   only 127.0.0.1 and ::1 are trusted proxies by default, so any other
 *   loopback address is an ordinary client);
 * - `postfixClient(port, addr)`: what Postfix's smtpd_proxy_filter does (EHLO
 *   with its own name, then XFORWARD describing the client), from the trusted
 *   peer 127.0.0.1;
 * - `xclientClient(port, addr)`: a chained proxy in front of a standalone
 *   prequeue, handing the client over with XCLIENT (then greeting again as the
 *   client).
 */
import assert from 'node:assert/strict';
import { SmtpTalk } from './smtp-talk';

/** An SmtpTalk whose socket comes from `localAddress`; the greeting is read. */
export function connectFrom(localAddress: string, port: number): Promise<SmtpTalk> {
  return SmtpTalk.connect(port, '127.0.0.1', true, localAddress);
}

/** Postfix's side of a before-queue filter connection for client `addr` (EHLO + XFORWARD, both asserted 250). */
export async function postfixClient(port: number, addr: string, helo = 'client.example.net', postfixName = 'mx.example.test'): Promise<SmtpTalk> {
  const t = await SmtpTalk.connect(port);
  assert.equal((await t.cmd(`EHLO ${postfixName}`)).code, 250);
  const x = await t.cmd(`XFORWARD NAME=[UNAVAILABLE] ADDR=${addr} PORT=4711 HELO=${helo} PROTO=ESMTP SOURCE=REMOTE`);
  assert.equal(x.code, 250, `XFORWARD: ${x.lines.join(' ')}`);
  return t;
}

/** A chained proxy handing client `addr` to a standalone prequeue (XCLIENT); the reply to XCLIENT (a new greeting) is returned too. */
export async function xclientClient(port: number, addr: string, helo = 'client.example.net'): Promise<{ t: SmtpTalk; greeting: { code: number; lines: string[] } }> {
  const t = await SmtpTalk.connect(port);
  assert.equal((await t.cmd('EHLO relay.example.test')).code, 250);
  const greeting = await t.cmd(`XCLIENT ADDR=${addr} NAME=[UNAVAILABLE] HELO=${helo} PROTO=ESMTP`);
  return { t, greeting };
}

export interface TransactionCodes {
  mail: number;
  rcpt: number[];
  data?: number;
  eod?: number;
}

/**
 * MAIL, RCPTs, DATA and a small message on a connection whose greeting (and,
 * for XFORWARD, Postfix's EHLO) is done; EHLO `helo` first when given.
 * Returns the reply codes, and each reply as "code enhanced text" in `texts`.
 */
export async function transaction(
  t: SmtpTalk,
  from: string,
  to: string[],
  opts: { helo?: string; message?: string } = {},
): Promise<TransactionCodes & { texts: string[] }> {
  const texts: string[] = [];
  const note = (r: { code: number; enhanced?: string; lines: string[] }) => {
    texts.push(`${r.code} ${r.enhanced ? `${r.enhanced} ` : ''}${r.lines.join(' ')}`);
    return r.code;
  };
  if (opts.helo) note(await t.cmd(`EHLO ${opts.helo}`));
  const mail = note(await t.cmd(`MAIL FROM:<${from}>`));
  const rcpt: number[] = [];
  if (mail !== 250) return { mail, rcpt, texts };
  for (const r of to) rcpt.push(note(await t.cmd(`RCPT TO:<${r}>`)));
  if (!rcpt.includes(250)) return { mail, rcpt, texts };
  const data = note(await t.cmd('DATA'));
  if (data !== 354) return { mail, rcpt, data, texts };
  t.write((opts.message ?? `From: <${from}>\r\nSubject: test\r\n\r\nhello\r\n`) + '.\r\n');
  const eod = note(await t.reply(15000));
  return { mail, rcpt, data, eod, texts };
}

/**
 * The proxy's "transaction" log lines for `client`, once there are at least
 * `count` (a transaction refused before DATA is logged when the session
 * ends, a moment after the client's QUIT).
 */
export async function transactionLines(
  p: { log: { lines: { msg: string; meta: Record<string, unknown> }[] } },
  client: string,
  count = 1,
): Promise<{ msg: string; meta: Record<string, unknown> }[]> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const lines = p.log.lines.filter((l) => l.msg === 'transaction' && l.meta.client === client);
    if (lines.length >= count || Date.now() > deadline) return lines;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One plugin's results in each of those lines ("pass=... fail=..."; '' if it recorded none). */
export async function pluginResults(p: Parameters<typeof transactionLines>[0], client: string, plugin: string, count = 1): Promise<string[]> {
  return (await transactionLines(p, client, count)).map((l) => (l.meta.results as Record<string, string> | undefined)?.[plugin] ?? '');
}
