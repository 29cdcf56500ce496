/**
 * resolvable_fromhost against a real NSD: MX, implicit MX, null MX, NXDOMAIN,
 * NODATA, mail hosts that do not resolve or sit in reserved ranges, SERVFAIL
 * and timeouts; over the wire standalone and behind "Postfix" (XFORWARD),
 * with accept, reject, defer and immunity.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/resolvable_fromhost';
import { DnsResolver } from '../../src/dns/resolver';
import { Decision, type Verdict } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import type { PluginResult } from '../../src/session/results';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, loadPlugin, makeContext } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'rfh.test': [
      'good IN MX 10 mx.good',
      'mx.good IN A 93.184.216.34',
      'alias IN CNAME good',
      'aonly IN A 93.184.216.35',
      'v6only IN AAAA 2a00:1450:4001::1b',
      'xn--bcher-kva IN A 93.184.216.36',
      'nullmx IN MX 0 .',
      'halfnull IN MX 0 .',
      'halfnull IN MX 10 mx.good',
      'nomail IN TXT "v=spf1 -all"',
      'privmx IN MX 10 mx.privmx',
      'mx.privmx IN A 10.1.2.3',
      'mx.privmx IN AAAA fd00::25',
      'priva IN A 192.168.1.1',
      'deadmx IN MX 10 nowhere',
      'deadmx IN MX 20 nowhere2',
      'mixmx IN MX 10 mx.privmx',
      'mixmx IN MX 20 mx.good',
      'failmx IN MX 10 mx.broken.test.',
      'failmx2 IN MX 10 mx.privmx',
      'failmx2 IN MX 20 mx.broken.test.',
    ].join('\n'),
    // Configured without data: NSD answers SERVFAIL.
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

const load = (options: Record<string, unknown> = {}, r: DnsResolver = resolver) => loadPlugin(plugin, options, { dns: r });

interface Run {
  mail: Verdict;
  rcpt: Verdict;
  postmaster: Verdict;
  results: Readonly<PluginResult>;
}

async function run(hooks: PluginHooks, sender: string): Promise<Run> {
  const ctx = makeContext({ name: 'resolvable_fromhost', sender });
  const mail = await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
  const rcpt = await callHook(hooks, 'rcpt', ctx, addr('user@example.test'));
  const postmaster = await callHook(hooks, 'rcpt', ctx, addr('postmaster@example.test'));
  return { mail, rcpt, postmaster, results: ctx.myResults()! };
}

function passes(r: Run, pass: string[]): void {
  for (const v of [r.mail, r.rcpt, r.postmaster]) assert.equal(v.decision, Decision.DECLINED);
  assert.deepEqual(r.results.pass, pass);
  assert.deepEqual(r.results.fail, []);
}

/** Refused at RCPT (the default) with this text and code; postmaster still reachable. */
function refused(r: Run, fail: string, message: RegExp, enhanced = '5.1.8'): void {
  assert.equal(r.mail.decision, Decision.DECLINED, 'not at MAIL');
  assert.equal(r.rcpt.decision, Decision.DENY);
  assert.equal(r.rcpt.enhanced, enhanced);
  assert.match(r.rcpt.message!, message);
  assert.equal(r.postmaster.decision, Decision.DECLINED, 'postmaster exempt');
  assert.deepEqual(r.results.fail, [fail]);
}

function deferred(r: Run, err: RegExp): void {
  assert.equal(r.mail.decision, Decision.DECLINED);
  assert.equal(r.rcpt.decision, Decision.DENYSOFT);
  assert.equal(r.rcpt.enhanced, '4.4.3');
  assert.match(r.rcpt.message!, /^Temporary DNS failure looking up sender domain \S+, try again later$/);
  assert.deepEqual(r.results.fail, []);
  assert.match(r.results.err.join(' '), err);
}

describe('resolvable_fromhost: sender domains that can receive mail', () => {
  test('the null sender passes without a lookup', async () => {
    const silent = await silentDnsServer();
    const r = new DnsResolver({ servers: [silent.server], timeout: 2000, tries: 1 });
    try {
      const started = Date.now();
      const res = await run(await load({}, r), '');
      assert.ok(Date.now() - started < 1000, 'no lookup waited for');
      passes(res, []);
      assert.deepEqual(res.results.skip, ['null sender']);
    } finally {
      r.close();
      await silent.stop();
    }
  });

  test('MX with a public mail host; through a CNAME; any case', async () => {
    const hooks = await load();
    const r = await run(hooks, 'joe@Good.RFH.test');
    passes(r, ['mx']);
    assert.equal(r.results.details.domain, 'good.rfh.test');
    assert.deepEqual(r.results.details.mx, ['mx.good.rfh.test']);
    passes(await run(hooks, 'joe@alias.rfh.test'), ['mx']);
  });

  test('no MX but A or AAAA: the implicit MX (RFC 5321 5.1); IDN domains as A-labels', async () => {
    const hooks = await load();
    passes(await run(hooks, 'joe@aonly.rfh.test'), ['a']);
    passes(await run(hooks, 'joe@v6only.rfh.test'), ['a']);
    const idn = await run(hooks, 'joe@bücher.rfh.test');
    passes(idn, ['a']);
    assert.equal(idn.results.details.domain, 'xn--bcher-kva.rfh.test');
  });

  test('MX hosts: one public address is enough (lowest preference first, max_mx)', async () => {
    passes(await run(await load(), 'joe@mixmx.rfh.test'), ['mx']);
    const one = await run(await load({ max_mx: 1 }), 'joe@mixmx.rfh.test');
    refused(one, 'reserved_address', /only in private or reserved address ranges \(10\.1\.2\.3, fd00::25\)/);
  });
});

describe('resolvable_fromhost: refused', () => {
  test('NXDOMAIN: "does not exist", at RCPT by default (postmaster open), at MAIL with reject_at mail', async () => {
    refused(await run(await load(), 'joe@nope.rfh.test'), 'nxdomain', /^Sender domain nope\.rfh\.test does not exist$/);
    const atMail = await run(await load({ reject_at: 'mail' }), 'joe@nope.rfh.test');
    assert.equal(atMail.mail.decision, Decision.DENY);
    assert.equal(atMail.mail.enhanced, '5.1.8');
    assert.equal(atMail.rcpt.decision, Decision.DECLINED);
  });

  test('null MX (RFC 7505): 5.7.27; mixed with real MX records the real ones count', async () => {
    const hooks = await load();
    refused(await run(hooks, 'joe@nullmx.rfh.test'), 'null_mx', /^Sender domain nullmx\.rfh\.test does not accept mail \(null MX\)$/, '5.7.27');
    passes(await run(hooks, 'joe@halfnull.rfh.test'), ['mx']);
  });

  test('no MX and no A/AAAA (NODATA)', async () => {
    refused(await run(await load(), 'joe@nomail.rfh.test'), 'no_mx_or_a', /^Sender domain nomail\.rfh\.test has no MX or A\/AAAA record$/);
  });

  test('MX hosts that do not resolve', async () => {
    refused(await run(await load(), 'joe@deadmx.rfh.test'), 'mx_unresolvable', /^Mail exchangers of sender domain deadmx\.rfh\.test do not resolve \(nowhere\.rfh\.test, nowhere2\.rfh\.test\)$/);
  });

  test('mail hosts only in reserved ranges; check_mx_hosts false or reserved_networks [] let them through', async () => {
    const hooks = await load();
    refused(await run(hooks, 'joe@privmx.rfh.test'), 'reserved_address', /privmx\.rfh\.test has mail hosts only in private or reserved address ranges/);
    refused(await run(hooks, 'joe@priva.rfh.test'), 'reserved_address', /\(192\.168\.1\.1\)/);
    passes(await run(await load({ check_mx_hosts: false }), 'joe@privmx.rfh.test'), ['mx']);
    passes(await run(await load({ check_mx_hosts: false }), 'joe@deadmx.rfh.test'), ['mx']);
    passes(await run(await load({ reserved_networks: [] }), 'joe@priva.rfh.test'), ['a']);
    await assert.rejects(load({ reserved_networks: ['10.0.0.0/33'] }), /reserved_networks/);
  });

  test('invalid domains: single label, bad characters, no domain at all (5.1.7)', async () => {
    const hooks = await load();
    refused(await run(hooks, 'joe@localhost'), 'invalid_domain', /^Sender domain localhost is not a valid fully qualified domain name$/, '5.1.7');
    refused(await run(hooks, 'joe@bad_name.rfh.test'), 'invalid_domain', /not a valid fully qualified domain name/, '5.1.7');
    // Not cut down to good.rfh.test by a URL parser.
    refused(await run(hooks, 'joe@good.rfh.test/x'), 'invalid_domain', /not a valid fully qualified domain name/, '5.1.7');
    refused(await run(hooks, 'joe@bücher.rfh.test/x'), 'invalid_domain', /not a valid fully qualified domain name/, '5.1.7');
    refused(await run(hooks, 'postmaster'), 'invalid_domain', /^Sender domain \(none\) is not/, '5.1.7');
  });

  test('address literals: no DNS; reserved addresses refused while check_mx_hosts is on', async () => {
    const hooks = await load();
    const ok = await run(hooks, 'joe@[93.184.216.34]');
    passes(ok, []);
    assert.deepEqual(ok.results.skip, ['address literal']);
    refused(await run(hooks, 'joe@[127.0.0.1]'), 'reserved_address', /^Sender address literal \[127\.0\.0\.1\] is a private or reserved address$/);
    refused(await run(hooks, 'joe@[IPv6:2001:db8::1]'), 'reserved_address', /private or reserved/);
    refused(await run(hooks, 'joe@[mail.example]'), 'invalid_domain', /not a valid address literal/, '5.1.7');
    passes(await run(await load({ check_mx_hosts: false }), 'joe@[127.0.0.1]'), []);
  });
});

describe('resolvable_fromhost: DNS failures are temporary', () => {
  test('SERVFAIL for the domain: 4xx 4.4.3 (at MAIL with reject_at mail); on_dns_error skip lets it through, recorded', async () => {
    deferred(await run(await load(), 'joe@x.broken.test'), /^MX x\.broken\.test: servfail$/);
    const atMail = await run(await load({ reject_at: 'mail' }), 'joe@x.broken.test');
    assert.equal(atMail.mail.decision, Decision.DENYSOFT);
    const skip = await run(await load({ on_dns_error: 'skip' }), 'joe@x.broken.test');
    passes(skip, []);
    assert.deepEqual(skip.results.err, ['MX x.broken.test: servfail']);
  });

  test('SERVFAIL for the only MX host, or for one beside a reserved one: temporary, never a rejection', async () => {
    const hooks = await load();
    deferred(await run(hooks, 'joe@failmx.rfh.test'), /A\/AAAA mx\.broken\.test: servfail/);
    deferred(await run(hooks, 'joe@failmx2.rfh.test'), /A\/AAAA mx\.broken\.test: servfail/);
  });

  test('a timeout: 4xx', async () => {
    const silent = await silentDnsServer();
    const r = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      deferred(await run(await load({}, r), 'joe@good.rfh.test'), /^MX good\.rfh\.test: timeout$/);
    } finally {
      r.close();
      await silent.stop();
    }
  });

  test('looked up once per transaction; at RCPT when MAIL was not seen (plugin added by a reload)', async () => {
    const hooks = await load();
    const ctx = makeContext({ name: 'resolvable_fromhost', sender: 'joe@nope.rfh.test' });
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('a@example.test'))).decision, Decision.DENY);
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('b@example.test'))).decision, Decision.DENY);
    assert.deepEqual(ctx.myResults()!.fail, ['nxdomain'], 'recorded once');
  });
});

describe('resolvable_fromhost: over the wire', () => {
  let downstream: FakeSmtpServer;
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(() => downstream.close());
  const config = (mode: 'postfix' | 'standalone', plugins: unknown[], extra: Record<string, unknown> = {}) => ({
    mode,
    downstream: { address: `127.0.0.1:${downstream.port}` },
    dns: { servers: [dns.server], timeout: 1, tries: 1 },
    plugins,
    ...extra,
  });

  test('standalone: a good sender is relayed; a domain that does not exist is refused at RCPT (postmaster open); SERVFAIL 450', async () => {
    const proxy = await startProxy(config('standalone', [{ resolvable_fromhost: {} }]));
    try {
      const before = downstream.messages.length;
      const good = await SmtpTalk.connect(proxy.port);
      const r = await good.send('joe@good.rfh.test', ['user@example.test'], 'Subject: hi\r\n\r\nhi\r\n');
      assert.equal(r.eod!.code, 250);
      assert.equal(downstream.messages.length, before + 1);
      assert.equal(downstream.messages.at(-1)!.mailFrom, '<joe@good.rfh.test>');
      await good.quit();

      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO client.example.net');
      assert.equal((await t.cmd('MAIL FROM:<joe@nope.rfh.test>')).code, 250);
      const no = await t.cmd('RCPT TO:<user@example.test>');
      assert.equal(no.code, 550);
      assert.equal(no.enhanced, '5.1.8');
      assert.match(no.lines.join(' '), /Sender domain nope\.rfh\.test does not exist/);
      assert.equal((await t.cmd('RCPT TO:<postmaster@example.test>')).code, 250);
      await t.cmd('RSET');
      assert.equal((await t.cmd('MAIL FROM:<joe@x.broken.test>')).code, 250);
      const temp = await t.cmd('RCPT TO:<user@example.test>');
      assert.equal(temp.code, 450);
      assert.equal(temp.enhanced, '4.4.3');
      await t.quit();
    } finally {
      await proxy.close();
    }
  });

  test('standalone: relay clients are immune', async () => {
    const proxy = await startProxy(config('standalone', [{ resolvable_fromhost: {} }], { relay_clients: ['127.0.0.1'] }));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const r = await t.send('joe@nope.rfh.test', ['user@example.test'], 'Subject: hi\r\n\r\nhi\r\n');
      assert.equal(r.rcpt[0]!.code, 250);
      assert.equal(r.eod!.code, 250);
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('postfix mode (reject_at mail): accept, 550 nxdomain, 550 null MX, <> passes, 450 SERVFAIL, whitelisted client immune', async () => {
    const proxy = await startProxy(config('postfix', [{ whitelist: { hosts: ['192.0.2.77'] } }, { resolvable_fromhost: { reject_at: 'mail' } }]));
    const t = await SmtpTalk.connect(proxy.port);
    const mail = async (client: string, sender: string) => {
      await t.cmd('RSET');
      assert.equal((await t.cmd(`XFORWARD NAME=[UNAVAILABLE] ADDR=${client} HELO=client.example.net PROTO=ESMTP`)).code, 250);
      return t.cmd(`MAIL FROM:<${sender}>`);
    };
    try {
      await t.cmd('EHLO postfix.example.test');
      assert.equal((await mail('192.0.2.60', 'joe@good.rfh.test')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<user@example.test>')).code, 250);
      const nx = await mail('192.0.2.60', 'joe@nope.rfh.test');
      assert.equal(nx.code, 550);
      assert.match(nx.lines.join(' '), /Sender domain nope\.rfh\.test does not exist/);
      const nullMx = await mail('192.0.2.60', 'joe@nullmx.rfh.test');
      assert.equal(nullMx.code, 550);
      assert.equal(nullMx.enhanced, '5.7.27');
      assert.equal((await mail('192.0.2.60', '')).code, 250);
      const temp = await mail('192.0.2.60', 'joe@x.broken.test');
      assert.equal(temp.code, 450);
      assert.equal(temp.enhanced, '4.4.3');
      assert.equal((await mail('192.0.2.77', 'joe@nope.rfh.test')).code, 250, 'whitelisted client: skipped');
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('postfix mode: a DNS timeout is a 450, not a rejection', async () => {
    const silent = await silentDnsServer();
    const proxy = await startProxy({ ...config('postfix', [{ resolvable_fromhost: { reject_at: 'mail' } }]), dns: { servers: [silent.server], timeout: 0.3, tries: 1 } });
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO postfix.example.test');
      await t.cmd('XFORWARD ADDR=192.0.2.60 HELO=client.example.net PROTO=ESMTP');
      const r = await t.cmd('MAIL FROM:<joe@good.rfh.test>');
      assert.equal(r.code, 450);
      assert.match(r.lines.join(' '), /Temporary DNS failure looking up sender domain good\.rfh\.test/);
    } finally {
      await t.quit();
      await proxy.close();
      await silent.stop();
    }
  });
});
