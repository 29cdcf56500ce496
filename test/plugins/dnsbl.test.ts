/**
 * dnsbl against a real NSD: block and allow lists, return codes, bitmasks,
 * IPv6, TXT reasons, where the verdict is given, failure policy; and over the
 * wire behind "Postfix" (XFORWARD) and standalone.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/dnsbl';
import { reversedIp } from '../../src/dns/names';
import { DnsResolver } from '../../src/dns/resolver';
import { Decision } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { proxyPerTest, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom, pluginResults, postfixClient, transaction } from '../helpers/wire-clients';

const V6 = '2001:db8::2';

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'bl.test': [
      '2.2.0.192 IN A 127.0.0.2',
      '2.2.0.192 IN TXT "Blocked - see https://bl.test/query/192.0.2.2"',
      '3.2.0.192 IN A 127.0.0.3',
      '4.2.0.192 IN A 127.0.0.1',
      '5.2.0.192 IN A 127.0.0.10',
      '6.2.0.192 IN A 127.0.0.4',
      '7.2.0.192 IN A 203.0.113.7',
      '11.2.0.192 IN A 127.0.0.2',
      `${reversedIp(V6)} IN A 127.0.0.2`,
      `${reversedIp(V6)} IN TXT "IPv6 listing"`,
      '1.0.0.127 IN A 127.0.0.2',
      '1.0.0.127 IN TXT "loopback is listed here for the test"',
    ].join('\n'),
    'bl2.test': '2.2.0.192 IN A 127.0.0.5',
    'allow.test': ['10.2.0.192 IN A 127.0.10.2', '11.2.0.192 IN A 127.0.10.2', '12.2.0.192 IN A 127.0.0.1'].join('\n'),
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

const load = (options: Record<string, unknown>, dnsOverride?: DnsResolver) => loadPlugin(plugin, options, { dns: dnsOverride ?? resolver });

/** connect, then MAIL with a transaction: the verdicts of both hooks. */
async function connectAndMail(hooks: PluginHooks, clientAddr: string, name = 'dnsbl'): Promise<{ ctx: FakeContext; connect: Decision; mail: Decision; mailMessage?: string }> {
  const ctx = makeContext({ name, clientAddr });
  const c = await callHook(hooks, 'connect', ctx);
  ctx.newTransaction('someone@example.net');
  const m = await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
  return { ctx, connect: c.decision, mail: m.decision, mailMessage: m.message };
}

describe('dnsbl: verdicts', () => {
  test('a listed client is refused at RCPT with the TXT reason; postmaster and abuse stay reachable', async () => {
    const hooks = await load({ zones: ['bl.test', 'bl2.test'] });
    const { ctx, connect, mail } = await connectAndMail(hooks, '192.0.2.2');
    assert.equal(connect, Decision.DECLINED);
    assert.equal(mail, Decision.DECLINED);
    const r = ctx.myResults()!;
    assert.deepEqual([...r.fail].sort(), ['bl.test', 'bl2.test']);
    assert.equal(r.details.ip, '192.0.2.2');
    assert.deepEqual((r.details.listings as { zone: string }[]).map((l) => l.zone).sort(), ['bl.test', 'bl2.test']);

    const v = await callHook(hooks, 'rcpt', ctx, addr('user@example.test'));
    assert.equal(v.decision, Decision.DENY);
    assert.equal(v.enhanced, '5.7.1');
    assert.equal(v.message, 'Your address 192.0.2.2 is listed in bl.test: Blocked - see https://bl.test/query/192.0.2.2');
    for (const rcpt of ['postmaster', 'postmaster@example.test', 'abuse@example.test']) {
      assert.equal((await callHook(hooks, 'rcpt', ctx, addr(rcpt))).decision, Decision.DECLINED, rcpt);
    }
    assert.deepEqual(ctx.myResults()!.skip, ['rcpt postmaster', 'rcpt postmaster@example.test', 'rcpt abuse@example.test']);
    assert.ok(ctx.log.entries.some((e) => e.level === 'info' && /192\.0\.2\.2 is listed in bl\.test/.test(e.msg)));
  });

  test('reject_at mail and connect; exempt_recipients replaces the default', async () => {
    const atMail = await connectAndMail(await load({ zones: ['bl.test'], reject_at: 'mail' }), '192.0.2.2');
    assert.equal(atMail.connect, Decision.DECLINED);
    assert.equal(atMail.mail, Decision.DENY);
    assert.match(atMail.mailMessage!, /listed in bl\.test/);

    const atConnect = await connectAndMail(await load({ zones: ['bl.test'], reject_at: 'connect' }), '192.0.2.2');
    assert.equal(atConnect.connect, Decision.DENY);
    assert.equal(atConnect.mail, Decision.DECLINED, 'refused once, at connect');

    const hooks = await load({ zones: ['bl.test'], exempt_recipients: ['listmaster@example.test'] });
    const { ctx } = await connectAndMail(hooks, '192.0.2.2');
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('postmaster@example.test'))).decision, Decision.DENY);
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('ListMaster@example.test'))).decision, Decision.DECLINED);
  });

  test('a client on no list passes every zone', async () => {
    const hooks = await load({ zones: ['bl.test', 'bl2.test'] });
    const { ctx } = await connectAndMail(hooks, '192.0.2.99');
    assert.deepEqual(ctx.myResults()!.pass, ['bl.test', 'bl2.test']);
    assert.deepEqual(ctx.myResults()!.fail, []);
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('user@example.test'))).decision, Decision.DECLINED);
  });

  test('return-code map: mapped codes give their reason, unmapped codes are ignored and recorded', async () => {
    const hooks = await load({ zones: [{ zone: 'bl.test', codes: { '127.0.0.2': 'listed in SBL' } }], reject_at: 'mail' });
    const listed = await connectAndMail(hooks, '192.0.2.2');
    assert.equal(listed.mail, Decision.DENY);
    assert.equal(listed.mailMessage, 'Your address 192.0.2.2 is listed in bl.test: listed in SBL');

    const unmapped = await connectAndMail(hooks, '192.0.2.3');
    assert.equal(unmapped.mail, Decision.DECLINED);
    assert.deepEqual(unmapped.ctx.myResults()!.pass, ['bl.test']);
    assert.deepEqual(unmapped.ctx.myResults()!.msg, ['bl.test: 192.0.2.3 answered 127.0.0.3 (not mapped, ignored)']);
  });

  test('bitmask, refusal codes and any_answer', async () => {
    const bits = await load({ zones: [{ zone: 'bl.test', bitmask: { 2: 'black', 8: 'red' }, txt: false, message: '{ip} {code}: {reason}' }], reject_at: 'mail' });
    const both = await connectAndMail(bits, '192.0.2.5');
    assert.equal(both.mail, Decision.DENY);
    assert.equal(both.mailMessage, '192.0.2.5 127.0.0.10: black, red');
    assert.equal((await connectAndMail(bits, '192.0.2.6')).mail, Decision.DECLINED, '127.0.0.4: bit 4 not asked for');

    const plain = await load({ zones: ['bl.test'], reject_at: 'mail' });
    const refused = await connectAndMail(plain, '192.0.2.4');
    assert.equal(refused.mail, Decision.DECLINED, '127.0.0.1 is a list refusing the query, not a listing');
    assert.match(refused.ctx.myResults()!.msg.join(), /127\.0\.0\.1/);
    assert.equal((await connectAndMail(plain, '192.0.2.7')).mail, Decision.DECLINED, 'an answer outside 127/8 is ignored');
    const any = await load({ zones: [{ zone: 'bl.test', any_answer: true }], reject_at: 'mail' });
    assert.equal((await connectAndMail(any, '192.0.2.7')).mail, Decision.DENY);
  });

  test('IPv6 clients are looked up by nibbles; IPv4-mapped addresses as IPv4; ipv6: false skips the zone', async () => {
    const hooks = await load({ zones: ['bl.test'], reject_at: 'mail' });
    const v6 = await connectAndMail(hooks, V6);
    assert.equal(v6.mail, Decision.DENY);
    assert.equal(v6.mailMessage, `Your address ${V6} is listed in bl.test: IPv6 listing`);
    const mapped = await connectAndMail(hooks, '::ffff:192.0.2.2');
    assert.equal(mapped.mail, Decision.DENY);
    assert.match(mapped.mailMessage!, /Your address 192\.0\.2\.2 /);

    const v4only = await load({ zones: [{ zone: 'bl.test', ipv6: false }], reject_at: 'mail' });
    const skipped = await connectAndMail(v4only, V6);
    assert.equal(skipped.mail, Decision.DECLINED);
    assert.deepEqual(skipped.ctx.myResults()!.skip, ['no zone for IPv6']);
  });

  test('private and loopback clients are skipped unless skip_private is false', async () => {
    const hooks = await load({ zones: ['bl.test'], reject_at: 'mail' });
    const local = await connectAndMail(hooks, '127.0.0.1');
    assert.equal(local.mail, Decision.DECLINED);
    assert.deepEqual(local.ctx.conn.results.get('dnsbl')!.skip, ['private address 127.0.0.1']);
    const all = await load({ zones: ['bl.test'], reject_at: 'mail', skip_private: false });
    assert.equal((await connectAndMail(all, '127.0.0.1')).mail, Decision.DENY);
  });

  test('lookups start at connect; MAIL without a connect hook (e.g. after a reload) starts them itself', async () => {
    const hooks = await load({ zones: ['bl.test'], reject_at: 'mail' });
    const ctx = makeContext({ name: 'dnsbl', clientAddr: '192.0.2.2' });
    await callHook(hooks, 'connect', ctx);
    assert.ok(ctx.conn.notes.dnsbl, 'the lookups are kept for the connection');
    const fresh = makeContext({ name: 'dnsbl', clientAddr: '192.0.2.2', sender: 'a@example.net' });
    assert.equal((await callHook(hooks, 'mail', fresh, fresh.txn!.sender!)).decision, Decision.DENY);
  });

  test('a message template with an unknown placeholder is a config error', async () => {
    await assert.rejects(load({ zones: ['bl.test'], message: 'listed: {adress}' }), /unknown placeholder \{adress\}/);
    await assert.rejects(load({ zones: [] }));
    await assert.rejects(load({ zones: ['bl.test'], reject_at: 'data' }));
  });
});

describe('dnsbl: allow lists', () => {
  test('an allow-list hit grants the connection immunity and skips the block lists', async () => {
    const hooks = await load({ zones: ['bl.test', { zone: 'allow.test', type: 'allow' }], reject_at: 'mail' });
    const ctx = makeContext({ name: 'dnsbl', clientAddr: '192.0.2.11' });
    assert.equal((await callHook(hooks, 'connect', ctx)).decision, Decision.DECLINED);
    assert.equal(ctx.conn.immunity.all, true, 'immune right after connect: later plugins see it');
    assert.deepEqual(ctx.myResults()!.pass, ['allow:allow.test']);
    assert.deepEqual((ctx.myResults()!.details.allowed as { codes: string[] }).codes, ['127.0.10.2']);
    ctx.newTransaction('a@example.net');
    assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED, 'listed in bl.test too, but allowed');
    assert.deepEqual(ctx.myResults()!.skip, ['allow-listed in allow.test']);
    assert.equal(ctx.myResults()!.fail.length, 0);
  });

  test('allow_immunity names the plugins an allow-listed client skips', async () => {
    const hooks = await load({ zones: [{ zone: 'allow.test', type: 'allow' }, 'bl.test'], allow_immunity: ['spamassassin', 'rhsbl'], reject_at: 'mail' });
    const { ctx, mail } = await connectAndMail(hooks, '192.0.2.11');
    assert.equal(ctx.conn.immunity.all, false);
    assert.deepEqual([...ctx.conn.immunity.plugins], ['spamassassin', 'rhsbl']);
    assert.equal(mail, Decision.DECLINED, 'dnsbl still skips its block lists');
  });

  test('an allow list answering an unmapped/refusal code grants nothing', async () => {
    const hooks = await load({ zones: [{ zone: 'allow.test', type: 'allow' }] });
    const ctx = makeContext({ name: 'dnsbl', clientAddr: '192.0.2.12' });
    await callHook(hooks, 'connect', ctx);
    assert.equal(ctx.conn.immunity.all, false);
  });
});

describe('dnsbl: lookup failures', () => {
  test('SERVFAIL: skip by default (recorded and logged), defer answers 4xx, a listing elsewhere still denies', async () => {
    const skip = await load({ zones: ['broken.test'], reject_at: 'mail' });
    const s = await connectAndMail(skip, '192.0.2.2');
    assert.equal(s.mail, Decision.DECLINED);
    assert.deepEqual(s.ctx.myResults()!.err, ['broken.test: servfail']);
    assert.deepEqual(s.ctx.myResults()!.pass, [], 'a failed zone is not "not listed"');
    assert.ok(s.ctx.log.entries.some((e) => e.level === 'warn' && /broken\.test servfail/.test(e.msg)));

    const defer = await load({ zones: ['broken.test'], on_lookup_error: 'defer' });
    const d = await connectAndMail(defer, '192.0.2.2');
    const v = await callHook(defer, 'rcpt', d.ctx, addr('user@example.test'));
    assert.equal(v.decision, Decision.DENYSOFT);
    assert.equal(v.enhanced, '4.4.3');
    assert.match(v.message!, /Could not check broken\.test/);

    const mixed = await load({ zones: [{ zone: 'broken.test', on_lookup_error: 'defer' }, 'bl.test'], reject_at: 'mail' });
    assert.equal((await connectAndMail(mixed, '192.0.2.2')).mail, Decision.DENY);
    assert.equal((await connectAndMail(mixed, '192.0.2.99')).mail, Decision.DENYSOFT);
  });

  test('an allow list that failed defers a block-list rejection under defer (the client might be allowed)', async () => {
    const hooks = await load({ zones: [{ zone: 'broken.test', type: 'allow' }, 'bl.test'], on_lookup_error: 'defer', reject_at: 'mail' });
    const listed = await connectAndMail(hooks, '192.0.2.2');
    assert.equal(listed.mail, Decision.DENYSOFT);
    assert.ok(listed.ctx.conn.results.get('dnsbl')!.err.includes('allow broken.test: servfail'));
    assert.equal((await connectAndMail(hooks, '192.0.2.99')).mail, Decision.DECLINED, 'not listed: no allow list needed');
    const skipping = await load({ zones: [{ zone: 'broken.test', type: 'allow' }, 'bl.test'], reject_at: 'mail' });
    assert.equal((await connectAndMail(skipping, '192.0.2.2')).mail, Decision.DENY);
  });

  test('timeout from a silent server: recorded, deferred under defer', async () => {
    const silent = await silentDnsServer();
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const skip = await connectAndMail(await load({ zones: ['bl.test'], reject_at: 'mail' }, slow), '192.0.2.2');
      assert.equal(skip.mail, Decision.DECLINED);
      assert.deepEqual(skip.ctx.myResults()!.err, ['bl.test: timeout']);
      const defer = await connectAndMail(await load({ zones: ['bl.test'], reject_at: 'mail', on_lookup_error: 'defer' }, slow), '192.0.2.3');
      assert.equal(defer.mail, Decision.DENYSOFT);
    } finally {
      slow.close();
      await silent.stop();
    }
  });
});

describe('dnsbl: over the wire', () => {
  let downstream: FakeSmtpServer;
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(() => downstream.close());

  const proxyConfig = (mode: 'postfix' | 'standalone', plugins: unknown[]) => ({
    mode,
    downstream: { address: `127.0.0.1:${downstream.port}` },
    dns: { servers: [dns.server], timeout: 1, tries: 1 },
    plugins,
  });

  test('postfix mode: XFORWARD ADDR of a listed client, refused at RCPT with the TXT reason; postmaster gets through', async () => {
    const proxy = await startProxy(proxyConfig('postfix', [{ dnsbl: { zones: ['bl.test'] } }]));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO postfix.example.test');
      assert.equal((await t.cmd('XFORWARD NAME=spam.example.net ADDR=192.0.2.2 PORT=4711 HELO=spam.example.net PROTO=ESMTP SOURCE=REMOTE')).code, 250);
      assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
      const r = await t.cmd('RCPT TO:<user@example.test>');
      assert.equal(r.code, 550);
      assert.equal(r.enhanced, '5.7.1');
      assert.match(r.lines.join(' '), /Your address 192\.0\.2\.2 is listed in bl\.test: Blocked - see https:\/\/bl\.test\/query\/192\.0\.2\.2/);
      assert.equal((await t.cmd('RCPT TO:<postmaster@example.test>')).code, 250);
      // The next client on the same Postfix connection is someone else and is not listed.
      await t.cmd('RSET');
      assert.equal((await t.cmd('XFORWARD ADDR=192.0.2.99 NAME=ok.example.net HELO=ok.example.net PROTO=ESMTP')).code, 250);
      assert.equal((await t.cmd('MAIL FROM:<b@example.net>')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<user@example.test>')).code, 250);
    } finally {
      await t.quit();
      await proxy.close();
    }
    assert.ok(proxy.log.lines.some((e) => /192\.0\.2\.2 is listed in bl\.test/.test(e.msg)), 'logged');
  });

  test('postfix mode: an allow-listed client is immune to the other plugins', async () => {
    const proxy = await startProxy(
      proxyConfig('postfix', [{ dnsbl: { zones: [{ zone: 'allow.test', type: 'allow' }, 'bl.test'] } }, { badmailfrom: { addresses: ['@example.net'], reject_at: 'mail' } }]),
    );
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO postfix.example.test');
      await t.cmd('XFORWARD ADDR=192.0.2.11 HELO=friend.example.net PROTO=ESMTP');
      assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250, 'badmailfrom skipped for the allow-listed client');
      assert.equal((await t.cmd('RCPT TO:<user@example.test>')).code, 250);
      await t.cmd('RSET');
      await t.cmd('XFORWARD ADDR=192.0.2.99 HELO=other.example.net PROTO=ESMTP');
      assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 550, 'immunity ends with the client');
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('standalone mode: the TCP peer (127.0.0.1, skip_private off) is looked up and refused', async () => {
    const proxy = await startProxy(proxyConfig('standalone', [{ dnsbl: { zones: ['bl.test'], skip_private: false } }]));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      assert.equal(t.greeting.code, 220);
      const r = await t.send('a@example.net', ['user@example.test'], 'Subject: hi\r\n\r\nhi\r\n');
      assert.equal(r.mail.code, 250);
      assert.equal(r.rcpt[0]!.code, 550);
      assert.match(r.rcpt[0]!.lines.join(' '), /Your address 127\.0\.0\.1 is listed in bl\.test: loopback is listed here for the test/);
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('standalone mode: reject_at connect refuses the greeting', async () => {
    const proxy = await startProxy(proxyConfig('standalone', [{ dnsbl: { zones: ['bl.test'], skip_private: false, reject_at: 'connect' } }]));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      assert.equal(t.greeting.code, 554);
      assert.match(t.greeting.lines.join(' '), /listed in bl\.test/);
    } finally {
      t.destroy();
      await proxy.close();
    }
  });
});

// ---- end to end: accept, reject, defer and immunity, from a direct TCP peer and from XFORWARD ----

describe('dnsbl end to end (real NSD): accept, reject, defer, immunity in both modes', () => {
  const e2e = proxyPerTest();
  const start = (config: Record<string, unknown>): Promise<TestProxy> => e2e.start({ dns: { servers: [dns.server], timeout: 1, tries: 1 }, ...config });
  const results = (p: TestProxy, client: string): Promise<string[]> => pluginResults(p, client, 'dnsbl');
  const MSG = 'From: <a@example.net>\r\nSubject: e2e\r\n\r\nhello\r\n';
  const DEFER_ZONES = ['bl.test', { zone: 'broken.test', on_lookup_error: 'defer' }];

  test('standalone, direct TCP peer: an unlisted peer is accepted and relayed, a listed one refused', async () => {
    const p = await start({ plugins: [{ dnsbl: { zones: ['bl.test'], skip_private: false } }] });
    const before = e2e.downstream.messages.length;
    const ok = await connectFrom('127.0.0.5', p.port);
    const r = await transaction(ok, 'a@example.net', ['user@example.test'], { helo: 'client.example.net', message: MSG });
    assert.deepEqual([r.mail, r.rcpt, r.eod], [250, [250], 250], r.texts.join(' | '));
    await ok.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);
    assert.match(e2e.downstream.messages.at(-1)!.xforward.join(' '), /ADDR=127\.0\.0\.5/, 'the downstream hears which client it was');
    assert.match((await results(p, '127.0.0.5'))[0]!, /pass=bl\.test/);

    const listed = await connectFrom('127.0.0.1', p.port);
    const l = await transaction(listed, 'a@example.net', ['user@example.test', 'postmaster@example.test'], { helo: 'client.example.net', message: MSG });
    assert.deepEqual(l.rcpt, [550, 250], l.texts.join(' | '));
    assert.match(l.texts[2]!, /127\.0\.0\.1 is listed in bl\.test/);
    await listed.quit();
    assert.deepEqual(e2e.downstream.messages.at(-1)!.rcptTo, ['<postmaster@example.test>'], 'only postmaster got it');
    assert.match((await results(p, '127.0.0.1'))[0]!, /fail=bl\.test/);
  });

  test('standalone, direct TCP peer: a zone that fails under on_lookup_error defer gives 4xx, nothing relayed', async () => {
    const p = await start({ plugins: [{ dnsbl: { zones: DEFER_ZONES, skip_private: false } }] });
    const before = e2e.downstream.messages.length;
    const t = await connectFrom('127.0.0.5', p.port);
    const r = await transaction(t, 'a@example.net', ['user@example.test'], { helo: 'client.example.net', message: MSG });
    assert.equal(r.rcpt[0], 450, r.texts.join(' | '));
    assert.match(r.texts[2]!, /4\.4\.3 Could not check broken\.test/);
    await t.quit();
    assert.equal(e2e.downstream.messages.length, before);
    assert.match((await results(p, '127.0.0.5'))[0]!, /err=broken\.test: servfail/);
  });

  test('standalone, direct TCP peer: relay_clients, the whitelist plugin and immune_senders make a listed peer immune', async () => {
    const cases: { config: Record<string, unknown>; from: string }[] = [
      { config: { relay_clients: ['127.0.0.1'] }, from: 'a@example.net' },
      { config: { plugins: [{ whitelist: { hosts: ['127.0.0.1'] } }] }, from: 'a@example.net' },
      { config: { immune_senders: ['@friend.example'] }, from: 'boss@friend.example' },
    ];
    for (const c of cases) {
      const extra = (c.config.plugins as unknown[] | undefined) ?? [];
      const p = await start({ ...c.config, plugins: [...extra, { dnsbl: { zones: ['bl.test'], skip_private: false } }] });
      const before = e2e.downstream.messages.length;
      const t = await connectFrom('127.0.0.1', p.port);
      const r = await transaction(t, c.from, ['user@example.test'], { helo: 'client.example.net', message: MSG });
      assert.deepEqual([r.rcpt, r.eod], [[250], 250], `${JSON.stringify(c.config)}: ${r.texts.join(' | ')}`);
      await t.quit();
      assert.equal(e2e.downstream.messages.length, before + 1);
      assert.doesNotMatch((await results(p, '127.0.0.1'))[0]!, /fail=/, 'the listing is never held against it');
    }
  });

  test('postfix mode, XFORWARD: accept (relayed with the XFORWARD client), reject, defer', async () => {
    const p = await start({ mode: 'postfix', plugins: [{ dnsbl: { zones: ['bl.test'] } }] });
    const before = e2e.downstream.messages.length;
    const ok = await postfixClient(p.port, '192.0.2.99');
    const r = await transaction(ok, 'a@example.net', ['user@example.test'], { message: MSG });
    assert.deepEqual([r.mail, r.rcpt, r.eod], [250, [250], 250], r.texts.join(' | '));
    await ok.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);
    assert.match(e2e.downstream.messages.at(-1)!.xforward.join(' '), /ADDR=192\.0\.2\.99/);

    const bad = await postfixClient(p.port, '192.0.2.2');
    const b = await transaction(bad, 'a@example.net', ['user@example.test'], { message: MSG });
    assert.deepEqual(b.rcpt, [550]);
    await bad.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);
    await p.close();

    const d = await start({ mode: 'postfix', plugins: [{ dnsbl: { zones: DEFER_ZONES } }] });
    const unsure = await postfixClient(d.port, '192.0.2.99');
    const u = await transaction(unsure, 'a@example.net', ['user@example.test'], { message: MSG });
    assert.deepEqual(u.rcpt, [450], u.texts.join(' | '));
    await unsure.quit();
    const listed = await postfixClient(d.port, '192.0.2.2');
    assert.deepEqual((await transaction(listed, 'a@example.net', ['user@example.test'], { message: MSG })).rcpt, [550], 'a listing elsewhere outweighs the failed zone');
    await listed.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);
  });

  test('postfix mode, XFORWARD: relay_clients, the whitelist plugin and immune_senders make a listed client immune', async () => {
    const cases: { config: Record<string, unknown>; from: string }[] = [
      { config: { relay_clients: ['192.0.2.0/29'] }, from: 'a@example.net' },
      { config: { plugins: [{ whitelist: { hosts: ['192.0.2.2'] } }] }, from: 'a@example.net' },
      { config: { immune_senders: ['@friend.example'] }, from: 'boss@friend.example' },
    ];
    for (const c of cases) {
      const extra = (c.config.plugins as unknown[] | undefined) ?? [];
      const p = await start({ mode: 'postfix', ...c.config, plugins: [...extra, { dnsbl: { zones: ['bl.test'] } }] });
      const t = await postfixClient(p.port, '192.0.2.2');
      const r = await transaction(t, c.from, ['user@example.test'], { message: MSG });
      assert.deepEqual([r.rcpt, r.eod], [[250], 250], `${JSON.stringify(c.config)}: ${r.texts.join(' | ')}`);
      await t.quit();
      // The next client on the same kind of connection is not immune.
      const other = await postfixClient(p.port, '192.0.2.2');
      const o = await transaction(other, 'a@example.net', ['user@example.test'], { message: MSG });
      if (!c.config.immune_senders) assert.deepEqual(o.rcpt, [250], 'same client, still immune');
      else assert.deepEqual(o.rcpt, [550], 'another sender: not immune');
      await other.quit();
    }
  });

  test('postfix mode: an IPv6 client as Postfix sends it (XFORWARD ADDR=IPv6:...) is looked up by nibbles', async () => {
    const p = await start({ mode: 'postfix', plugins: [{ dnsbl: { zones: ['bl.test'] } }] });
    const listed = await postfixClient(p.port, `IPv6:${V6}`);
    const r = await transaction(listed, 'a@example.net', ['user@example.test'], { message: MSG });
    assert.deepEqual(r.rcpt, [550], r.texts.join(' | '));
    assert.match(r.texts[1]!, /Your address 2001:db8::2 is listed in bl\.test: IPv6 listing/);
    await listed.quit();
    const other = await postfixClient(p.port, 'IPv6:2001:db8::99');
    assert.equal((await transaction(other, 'a@example.net', ['user@example.test'], { message: MSG })).eod, 250);
    await other.quit();
  });

  test('postfix mode: XFORWARD from an untrusted peer is refused; the TCP peer is what is looked up', async () => {
    const p = await start({ mode: 'postfix', trusted_proxies: ['127.0.0.2'], plugins: [{ dnsbl: { zones: ['bl.test'], skip_private: false } }] });
    const t = await SmtpTalk.connect(p.port);
    assert.equal((await t.cmd('EHLO mx.example.test')).code, 250);
    assert.equal((await t.cmd('XFORWARD ADDR=192.0.2.99 NAME=innocent.example')).code, 550);
    const r = await transaction(t, 'a@example.net', ['user@example.test'], { message: MSG });
    assert.deepEqual(r.rcpt, [550]);
    assert.match(r.texts[1]!, /127\.0\.0\.1 is listed in bl\.test/);
    await t.quit();
  });
});
