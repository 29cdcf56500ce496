/**
 * rhsbl against a real NSD: HELO, sender and From domains, registrable
 * domains, return codes, failure policy; over the wire in both modes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/rhsbl';
import { DnsResolver } from '../../src/dns/resolver';
import { spoolBuffer } from '../../src/message/spool';
import { Decision, type Verdict } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { proxyPerTest, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom, postfixClient, transaction } from '../helpers/wire-clients';

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'rhs.test': [
      'spam.example IN A 127.0.0.2',
      'spam.example IN TXT "spam domain, see https://rhs.test/spam.example"',
      'bad-helo.example IN A 127.0.0.2',
      'registrable.co.uk IN A 127.0.0.2',
      'fromspam.example IN A 127.0.0.4',
      'refuse.example IN A 127.0.0.1',
    ].join('\n'),
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

const load = (options: Record<string, unknown>, r: DnsResolver = resolver) => loadPlugin(plugin, options, { dns: r });

/** HELO (if any), then MAIL: the MAIL verdict and the context for RCPTs. */
async function heloMail(hooks: PluginHooks, helo: string | undefined, sender: string): Promise<{ ctx: FakeContext; mail: Verdict }> {
  const ctx = makeContext({ name: 'rhsbl', helo });
  if (helo) await callHook(hooks, 'ehlo', ctx, helo);
  ctx.newTransaction(sender);
  return { ctx, mail: await callHook(hooks, 'mail', ctx, ctx.txn!.sender!) };
}

describe('rhsbl: envelope', () => {
  test('a listed sender domain is refused at RCPT with the TXT reason; postmaster stays reachable', async () => {
    const hooks = await load({ zones: ['rhs.test'] });
    const { ctx, mail } = await heloMail(hooks, 'mail.good.example', 'joe@Spam.Example');
    assert.equal(mail.decision, Decision.DECLINED);
    const r = ctx.myResults()!;
    assert.deepEqual(r.fail, ['rhs.test:spam.example']);
    assert.deepEqual(r.pass, ['helo:mail.good.example']);
    assert.deepEqual(r.details.listings, [{ zone: 'rhs.test', item: 'spam.example', codes: ['127.0.0.2'], reason: 'spam domain, see https://rhs.test/spam.example', source: 'sender' }]);
    const v = await callHook(hooks, 'rcpt', ctx, addr('user@example.test'));
    assert.equal(v.decision, Decision.DENY);
    assert.equal(v.message, 'Sender domain spam.example is listed in rhs.test: spam domain, see https://rhs.test/spam.example');
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('postmaster@example.test'))).decision, Decision.DECLINED);
  });

  test('a listed HELO name, looked up at HELO, refused at MAIL with reject_at mail', async () => {
    const hooks = await load({ zones: ['rhs.test'], reject_at: 'mail' });
    const { ctx, mail } = await heloMail(hooks, 'bad-helo.example', 'joe@good.example');
    assert.equal(mail.decision, Decision.DENY);
    assert.match(mail.message!, /^HELO name bad-helo\.example is listed in rhs\.test: returned 127\.0\.0\.2$/);
    assert.deepEqual(ctx.myResults()!.pass, ['sender:good.example']);
    // helo: false leaves it alone
    const noHelo = await load({ zones: ['rhs.test'], reject_at: 'mail', helo: false });
    assert.equal((await heloMail(noHelo, 'bad-helo.example', 'joe@good.example')).mail.decision, Decision.DECLINED);
  });

  test('the HELO is looked up even when the helo hook did not run (Postfix: XFORWARD HELO before a reload)', async () => {
    const hooks = await load({ zones: ['rhs.test'], reject_at: 'mail' });
    const ctx = makeContext({ name: 'rhsbl', helo: 'bad-helo.example', sender: 'a@good.example' });
    assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DENY);
  });

  test('the null sender, IP-literal HELOs and single labels are skipped and recorded', async () => {
    const hooks = await load({ zones: ['rhs.test'], reject_at: 'mail' });
    const { ctx, mail } = await heloMail(hooks, '[192.0.2.1]', '');
    assert.equal(mail.decision, Decision.DECLINED);
    assert.deepEqual(ctx.myResults()!.skip, ['helo [192.0.2.1]: not a domain', 'null sender']);
    const single = await heloMail(hooks, 'localhost', 'root@localhost');
    assert.deepEqual(single.ctx.myResults()!.skip, ['helo localhost: not a domain', 'sender localhost: not a domain']);
  });

  test('the registrable domain is checked too, unless registrable_domain is false', async () => {
    const hooks = await load({ zones: ['rhs.test'], reject_at: 'mail' });
    const { ctx, mail } = await heloMail(hooks, undefined, 'a@mail.out.registrable.co.uk');
    assert.equal(mail.decision, Decision.DENY);
    assert.match(mail.message!, /Sender domain registrable\.co\.uk is listed/);
    assert.deepEqual(ctx.myResults()!.fail, ['rhs.test:registrable.co.uk']);
    const fullOnly = await load({ zones: ['rhs.test'], reject_at: 'mail', registrable_domain: false });
    assert.equal((await heloMail(fullOnly, undefined, 'a@mail.out.registrable.co.uk')).mail.decision, Decision.DECLINED);
  });

  test('return-code maps: only mapped codes count; refusal codes are ignored', async () => {
    const hooks = await load({ zones: [{ zone: 'rhs.test', codes: { '127.0.0.4': 'phishing' } }], reject_at: 'mail' });
    const hit = await heloMail(hooks, undefined, 'a@fromspam.example');
    assert.equal(hit.mail.message, 'Sender domain fromspam.example is listed in rhs.test: phishing');
    assert.equal((await heloMail(hooks, undefined, 'a@spam.example')).mail.decision, Decision.DECLINED);
    const plain = await load({ zones: ['rhs.test'], reject_at: 'mail' });
    const refused = await heloMail(plain, undefined, 'a@refuse.example');
    assert.equal(refused.mail.decision, Decision.DECLINED);
    assert.match(refused.ctx.myResults()!.msg.join(), /refuse\.example answered 127\.0\.0\.1/);
  });
});

describe('rhsbl: From header', () => {
  test('From domains are checked at the end of the header block when from_header is on', async () => {
    const hooks = await load({ zones: ['rhs.test'], from_header: true });
    const msg = await spoolBuffer(Buffer.from('From: "Bank" <service@FromSpam.example>\r\nSubject: x\r\n\r\nbody\r\n'));
    try {
      const ctx = makeContext({ name: 'rhsbl', sender: 'a@good.example' });
      const v = await callHook(hooks, 'data_headers_end', ctx, msg.headers);
      assert.equal(v.decision, Decision.DENY);
      assert.equal(v.message, 'From domain fromspam.example is listed in rhs.test: returned 127.0.0.4');
      assert.deepEqual(ctx.myResults()!.fail, ['rhs.test:fromspam.example']);
      const off = await load({ zones: ['rhs.test'] });
      assert.equal((await callHook(off, 'data_headers_end', makeContext({ txn: true }), msg.headers)).decision, Decision.DECLINED);
    } finally {
      await msg.dispose();
    }
    const none = await spoolBuffer(Buffer.from('Subject: no from\r\n\r\nbody\r\n'));
    try {
      const ctx = makeContext({ name: 'rhsbl', txn: true });
      assert.equal((await callHook(hooks, 'data_headers_end', ctx, none.headers)).decision, Decision.DECLINED);
      assert.deepEqual(ctx.myResults()!.skip, ['from: no address']);
    } finally {
      await none.dispose();
    }
  });
});

describe('rhsbl: lookup failures', () => {
  test('SERVFAIL and timeout: recorded, skipped by default, 4xx under defer', async () => {
    const skip = await load({ zones: ['broken.test'], reject_at: 'mail' });
    const s = await heloMail(skip, undefined, 'a@spam.example');
    assert.equal(s.mail.decision, Decision.DECLINED);
    assert.deepEqual(s.ctx.myResults()!.err, ['broken.test: servfail']);
    assert.deepEqual(s.ctx.myResults()!.pass, []);
    const defer = await load({ zones: ['broken.test'], on_lookup_error: 'defer' });
    const d = await heloMail(defer, undefined, 'a@spam.example');
    const v = await callHook(defer, 'rcpt', d.ctx, addr('user@example.test'));
    assert.equal(v.decision, Decision.DENYSOFT);
    assert.equal(v.enhanced, '4.4.3');

    const silent = await silentDnsServer();
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const t = await heloMail(await load({ zones: ['rhs.test'], reject_at: 'mail', on_lookup_error: 'defer' }, slow), 'mail.x.example', 'a@y.example'); // mail.x.example, x.example, y.example
      assert.equal(t.mail.decision, Decision.DENYSOFT);
      assert.deepEqual(t.ctx.myResults()!.err, ['rhs.test: timeout (3 lookups)']);
    } finally {
      slow.close();
      await silent.stop();
    }
  });
});

describe('rhsbl: over the wire', () => {
  let downstream: FakeSmtpServer;
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(() => downstream.close());
  const config = (mode: 'postfix' | 'standalone', options: Record<string, unknown>) => ({
    mode,
    downstream: { address: `127.0.0.1:${downstream.port}` },
    dns: { servers: [dns.server], timeout: 1, tries: 1 },
    plugins: [{ rhsbl: options }],
  });

  test('postfix mode: the HELO from XFORWARD is listed; RCPT refused', async () => {
    const proxy = await startProxy(config('postfix', { zones: ['rhs.test'] }));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO postfix.example.test');
      await t.cmd('XFORWARD ADDR=192.0.2.50 NAME=x.example HELO=bad-helo.example PROTO=ESMTP');
      assert.equal((await t.cmd('MAIL FROM:<a@good.example>')).code, 250);
      const r = await t.cmd('RCPT TO:<user@example.test>');
      assert.equal(r.code, 550);
      assert.match(r.lines.join(' '), /HELO name bad-helo\.example is listed in rhs\.test/);
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('standalone mode: a listed From domain is refused after the data and nothing is relayed', async () => {
    const proxy = await startProxy(config('standalone', { zones: ['rhs.test'], from_header: true }));
    const before = downstream.messages.length;
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const r = await t.send('a@good.example', ['user@example.test'], 'From: <x@fromspam.example>\r\nSubject: hi\r\n\r\nhi\r\n', 'client.good.example');
      assert.equal(r.rcpt[0]!.code, 250);
      assert.equal(r.eod!.code, 550);
      assert.match(r.eod!.lines.join(' '), /From domain fromspam\.example is listed in rhs\.test/);
      assert.equal(downstream.messages.length, before);
    } finally {
      await t.quit();
      await proxy.close();
    }
  });
});

// ---- end to end: accept, reject, defer and immunity, from a direct TCP peer and from XFORWARD ----

describe('rhsbl end to end (real NSD): accept, reject, defer, immunity in both modes', () => {
  const e2e = proxyPerTest();
  const start = (config: Record<string, unknown>): Promise<TestProxy> => e2e.start({ dns: { servers: [dns.server], timeout: 1, tries: 1 }, ...config });
  const MSG = 'From: <a@good.example>\r\nSubject: e2e\r\n\r\nhello\r\n';
  const DEFER_ZONES = ['rhs.test', { zone: 'broken.test', on_lookup_error: 'defer' }];

  test('standalone, direct TCP peer: clean names accepted and relayed; a listed HELO or sender refused at RCPT, postmaster still reachable', async () => {
    const p = await start({ plugins: [{ rhsbl: { zones: ['rhs.test'] } }] });
    const before = e2e.downstream.messages.length;
    const ok = await connectFrom('127.0.0.5', p.port);
    const r = await transaction(ok, 'a@good.example', ['user@example.test'], { helo: 'client.good.example', message: MSG });
    assert.deepEqual([r.mail, r.rcpt, r.eod], [250, [250], 250], r.texts.join(' | '));
    await ok.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);

    const helo = await connectFrom('127.0.0.5', p.port);
    const h = await transaction(helo, 'a@good.example', ['user@example.test', 'postmaster@example.test'], { helo: 'bad-helo.example', message: MSG });
    assert.deepEqual(h.rcpt, [550, 250], h.texts.join(' | '));
    assert.match(h.texts[2]!, /HELO name bad-helo\.example is listed in rhs\.test/);
    await helo.quit();
    assert.deepEqual(e2e.downstream.messages.at(-1)!.rcptTo, ['<postmaster@example.test>']);

    const sender = await connectFrom('127.0.0.5', p.port);
    const s = await transaction(sender, 'x@spam.example', ['user@example.test'], { helo: 'client.good.example', message: MSG });
    assert.deepEqual(s.rcpt, [550]);
    assert.match(s.texts[2]!, /Sender domain spam\.example is listed in rhs\.test: spam domain, see https:\/\/rhs\.test\/spam\.example/);
    await sender.quit();
    assert.equal(e2e.downstream.messages.length, before + 2);
  });

  test('standalone: a zone failing under on_lookup_error defer gives 4xx; a listing still gives 5xx', async () => {
    const p = await start({ plugins: [{ rhsbl: { zones: DEFER_ZONES } }] });
    const before = e2e.downstream.messages.length;
    const t = await connectFrom('127.0.0.5', p.port);
    const r = await transaction(t, 'a@good.example', ['user@example.test'], { helo: 'client.good.example', message: MSG });
    assert.equal(r.rcpt[0], 450, r.texts.join(' | '));
    await t.quit();
    const listed = await connectFrom('127.0.0.5', p.port);
    assert.deepEqual((await transaction(listed, 'x@spam.example', ['user@example.test'], { helo: 'client.good.example', message: MSG })).rcpt, [550]);
    await listed.quit();
    assert.equal(e2e.downstream.messages.length, before);
  });

  test('standalone: relay_clients, whitelisted HELO, whitelisted sender and immune_senders are immune', async () => {
    const cases: { config: Record<string, unknown>; helo: string; from: string }[] = [
      { config: { relay_clients: ['127.0.0.5'] }, helo: 'bad-helo.example', from: 'x@spam.example' },
      { config: { plugins: [{ whitelist: { helos: ['bad-helo.example'] } }] }, helo: 'bad-helo.example', from: 'a@good.example' },
      { config: { plugins: [{ whitelist: { senders: ['@spam.example'] } }] }, helo: 'client.good.example', from: 'x@spam.example' },
      { config: { immune_senders: ['x@spam.example'] }, helo: 'client.good.example', from: 'x@spam.example' },
    ];
    for (const c of cases) {
      const extra = (c.config.plugins as unknown[] | undefined) ?? [];
      const p = await start({ ...c.config, plugins: [...extra, { rhsbl: { zones: ['rhs.test'] } }] });
      const t = await connectFrom('127.0.0.5', p.port);
      const r = await transaction(t, c.from, ['user@example.test'], { helo: c.helo, message: MSG });
      assert.deepEqual([r.rcpt, r.eod], [[250], 250], `${JSON.stringify(c.config)}: ${r.texts.join(' | ')}`);
      await t.quit();
    }
  });

  test("postfix mode: the XFORWARD HELO is checked, never Postfix's own EHLO name; sender, defer and immunity as standalone", async () => {
    const p = await start({ mode: 'postfix', plugins: [{ rhsbl: { zones: ['rhs.test'] } }] });
    const before = e2e.downstream.messages.length;
    // Postfix greets with its own (here: listed) name; the client's HELO comes in XFORWARD.
    const ok = await postfixClient(p.port, '192.0.2.50', 'client.good.example', 'bad-helo.example');
    const r = await transaction(ok, 'a@good.example', ['user@example.test'], { message: MSG });
    assert.deepEqual([r.mail, r.rcpt, r.eod], [250, [250], 250], r.texts.join(' | '));
    await ok.quit();
    assert.equal(e2e.downstream.messages.length, before + 1);

    const sender = await postfixClient(p.port, '192.0.2.50', 'client.good.example');
    const s = await transaction(sender, 'x@spam.example', ['user@example.test'], { message: MSG });
    assert.deepEqual(s.rcpt, [550]);
    assert.match(s.texts[1]!, /Sender domain spam\.example/);
    await sender.quit();

    const d = await start({ mode: 'postfix', plugins: [{ rhsbl: { zones: DEFER_ZONES } }] });
    const unsure = await postfixClient(d.port, '192.0.2.50', 'client.good.example');
    assert.deepEqual((await transaction(unsure, 'a@good.example', ['user@example.test'], { message: MSG })).rcpt, [450]);
    await unsure.quit();

    const i = await start({ mode: 'postfix', relay_clients: ['192.0.2.50'], plugins: [{ whitelist: { helos: ['bad-helo.example'] } }, { rhsbl: { zones: ['rhs.test'] } }] });
    const relay = await postfixClient(i.port, '192.0.2.50', 'client.good.example');
    assert.deepEqual((await transaction(relay, 'x@spam.example', ['user@example.test'], { message: MSG })).rcpt, [250], 'relay client by XFORWARD ADDR');
    await relay.quit();
    const wl = await postfixClient(i.port, '192.0.2.77', 'bad-helo.example');
    assert.deepEqual((await transaction(wl, 'a@good.example', ['user@example.test'], { message: MSG })).rcpt, [250], 'whitelisted XFORWARD HELO');
    await wl.quit();
    const neither = await postfixClient(i.port, '192.0.2.77', 'client.good.example');
    assert.deepEqual((await transaction(neither, 'x@spam.example', ['user@example.test'], { message: MSG })).rcpt, [550], 'anyone else is checked');
    await neither.quit();
    assert.equal(e2e.downstream.messages.length, before + 3);
  });
});
