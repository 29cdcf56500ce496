/**
 * helo against a real NSD: every check and policy, DNS failures (SERVFAIL
 * from a zone without data, a timeout from a server that never answers),
 * where the rejection lands; over the wire standalone and behind "Postfix"
 * (XFORWARD), with accept, reject, defer and immunity.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/helo';
import { DnsResolver } from '../../src/dns/resolver';
import { Decision, type Verdict } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import type { PluginResult } from '../../src/session/results';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, configDir, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'helo.test': [
      'mail IN A 192.0.2.10',
      'mail IN AAAA 2001:db8::10',
      'other IN A 198.51.100.7',
      'mx0 IN A 198.51.100.20',
      'mxonly IN MX 10 mail.helo.test.',
      'spammer IN A 198.51.100.66',
    ].join('\n'),
    '2.0.192.in-addr.arpa': ['30 IN PTR mx1.helo.test.', '31 IN PTR host.elsewhere.test.'].join('\n'),
    '0.0.127.in-addr.arpa': '1 IN PTR localhost.',
    // Configured without data: NSD answers SERVFAIL.
    'broken.test': null,
    '100.51.198.in-addr.arpa': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

const HOSTNAME = 'mx.ours.test';
const load = (options: Record<string, unknown> = {}, r: DnsResolver = resolver, extra: Record<string, unknown> = {}) =>
  loadPlugin(plugin, options, { dns: r, hostname: HOSTNAME, ...extra });

interface Run {
  ctx: FakeContext;
  atHelo: Verdict;
  atMail: Verdict;
  atRcpt: Verdict;
  atPostmaster: Verdict;
  results: Readonly<PluginResult>;
}

/** EHLO, MAIL, RCPT user, RCPT postmaster, as the chain would call them. */
async function run(hooks: PluginHooks, helo: string, client: { addr?: string; name?: string; via?: 'tcp' | 'xforward' } = {}): Promise<Run> {
  const ctx = makeContext({ name: 'helo', helo, clientAddr: client.addr ?? '192.0.2.10' });
  if (client.name) ctx.conn.client.name = client.name;
  if (client.via) ctx.conn.client.via = client.via;
  const atHelo = await callHook(hooks, 'ehlo', ctx, helo);
  ctx.newTransaction('a@sender.example');
  const atMail = await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
  const atRcpt = await callHook(hooks, 'rcpt', ctx, addr('user@example.test'));
  const atPostmaster = await callHook(hooks, 'rcpt', ctx, addr('postmaster@example.test'));
  return { ctx, atHelo, atMail, atRcpt, atPostmaster, results: ctx.conn.results.get('helo')! };
}

/** Refused at RCPT (the default), nothing before, postmaster still reachable. */
function refusedAtRcpt(r: Run, fail: string[], message: RegExp): void {
  assert.equal(r.atHelo.decision, Decision.DECLINED, 'not at HELO');
  assert.equal(r.atMail.decision, Decision.DECLINED, 'not at MAIL');
  assert.equal(r.atRcpt.decision, Decision.DENY);
  assert.equal(r.atRcpt.enhanced, '5.7.1');
  assert.match(r.atRcpt.message!, message);
  assert.equal(r.atPostmaster.decision, Decision.DECLINED, 'postmaster exempt');
  assert.deepEqual(r.results.fail, fail);
}

function accepted(r: Run): void {
  for (const v of [r.atHelo, r.atMail, r.atRcpt, r.atPostmaster]) assert.equal(v.decision, Decision.DECLINED);
  assert.deepEqual(r.results.fail, []);
}

describe('helo: lenient checks (the default policy)', () => {
  test('bad_helo entries: exact (any case), .domain below it, /regex/ with a reason', async () => {
    const hooks = await load({ bad_helo: ['spammer.example', '.bad.example', '/^dyn-[0-9]+\\./ dynamic host names are not accepted'] });
    refusedAtRcpt(await run(hooks, 'Spammer.Example'), ['bad_helo'], /^HELO Spammer\.Example: not accepted here$/);
    refusedAtRcpt(await run(hooks, 'x.bad.example'), ['bad_helo'], /^HELO x\.bad\.example: not accepted here$/);
    refusedAtRcpt(await run(hooks, 'DYN-12.isp.example'), ['bad_helo'], /^HELO DYN-12\.isp\.example: dynamic host names are not accepted$/);
    accepted(await run(hooks, 'bad.example'));
    accepted(await run(hooks, 'good.example'));
  });

  test('bad_helo_file adds entries (comments ignored); a broken regex stops the start', async () => {
    const dir = configDir({ badhelo: '# names we never believe\nyahoo.com   Yahoo does not say that\n\n.aol.com # below aol.com\n' });
    const hooks = await load({ bad_helo_file: 'badhelo' }, resolver, { configDir: dir });
    refusedAtRcpt(await run(hooks, 'yahoo.com'), ['bad_helo'], /Yahoo does not say that/);
    refusedAtRcpt(await run(hooks, 'mx.aol.com'), ['bad_helo'], /not accepted here/);
    await assert.rejects(load({ bad_helo: ['/(unclosed/'] }), /bad_helo\[0\]/);
    await assert.rejects(load({ bad_helo_file: 'missing' }, resolver, { configDir: dir }), /ENOENT/);
  });

  test('localhost is refused from outside, accepted from loopback', async () => {
    const hooks = await load();
    refusedAtRcpt(await run(hooks, 'localhost'), ['localhost'], /you are not localhost/);
    refusedAtRcpt(await run(hooks, 'LOCALHOST.localdomain'), ['localhost'], /you are not localhost/);
    accepted(await run(hooks, 'localhost', { addr: '127.0.0.1' }));
    accepted(await run(hooks, 'localhost', { addr: '::1' }));
  });

  test('our own hostname and our_names are refused from outside ("forged our name")', async () => {
    const hooks = await load({ our_names: ['.ours.example'] });
    refusedAtRcpt(await run(hooks, 'MX.ours.test'), ['our_name'], /that is our own name/);
    refusedAtRcpt(await run(hooks, 'relay.ours.example'), ['our_name'], /that is our own name/);
    accepted(await run(hooks, 'ours.example'));
    accepted(await run(hooks, HOSTNAME, { addr: '127.0.0.1' }));
  });

  test('IP literals: bare IP invalid, a literal must be the client address (IPv4, IPv6, v4-mapped)', async () => {
    const hooks = await load();
    refusedAtRcpt(await run(hooks, '192.0.2.10'), ['plain_ip'], /bare IP address is not a valid HELO name, use an address literal \[192\.0\.2\.10\]/);
    refusedAtRcpt(await run(hooks, '[192.0.2.99]'), ['forged_literal'], /^HELO \[192\.0\.2\.99\]: that is not your address \(192\.0\.2\.10\)$/);
    refusedAtRcpt(await run(hooks, '[IPv6:2001:db8::11]', { addr: '2001:db8::10' }), ['forged_literal'], /not your address/);
    refusedAtRcpt(await run(hooks, '[mail.example]'), ['invalid_literal'], /not a valid address literal/);
    const ok = await run(hooks, '[192.0.2.10]');
    accepted(ok);
    assert.deepEqual(ok.results.pass, ['literal']);
    accepted(await run(hooks, '[IPv6:2001:DB8::10]', { addr: '2001:db8::10' }));
    accepted(await run(hooks, '[192.0.2.10]', { addr: '::ffff:192.0.2.10' }));
  });

  test('lenient leaves unqualified and unresolvable names alone, and asks no DNS', async () => {
    const silent = await silentDnsServer();
    const r = new DnsResolver({ servers: [silent.server], timeout: 2000, tries: 1 });
    try {
      const hooks = await load({}, r);
      const started = Date.now();
      const a = await run(hooks, 'WIN-PC');
      const b = await run(hooks, 'nope.helo.test');
      assert.ok(Date.now() - started < 1000, 'no lookup waited for');
      accepted(a);
      accepted(b);
      assert.deepEqual(b.results.err, []);
      assert.deepEqual(b.results.skip, []);
    } finally {
      r.close();
      await silent.stop();
    }
  });

  test('checks turn single checks on or off over the policy', async () => {
    const hooks = await load({ checks: { localhost: false, not_fqdn: true } });
    accepted(await run(hooks, 'localhost.localdomain'));
    refusedAtRcpt(await run(hooks, 'WIN-PC'), ['not_fqdn'], /^HELO WIN-PC: not a fully qualified domain name/);
    await assert.rejects(load({ checks: { no_such_check: true } }), /no_such_check/);
    await assert.rejects(load({ policy: 'paranoid' }), /policy/);
  });
});

describe('helo: rfc policy', () => {
  test('not_fqdn: no dot, invalid characters or labels; a literal is fine', async () => {
    const hooks = await load({ policy: 'rfc' });
    refusedAtRcpt(await run(hooks, 'mailserver'), ['not_fqdn'], /not a fully qualified domain name \(RFC 5321 2\.3\.5\)/);
    refusedAtRcpt(await run(hooks, 'my_pc.helo.test'), ['invalid_name'], /not a valid domain name/);
    refusedAtRcpt(await run(hooks, '-x.helo.test'), ['invalid_name'], /not a valid domain name/);
    refusedAtRcpt(await run(hooks, 'mail.helo.test/x'), ['invalid_name'], /not a valid domain name/);
    refusedAtRcpt(await run(hooks, 'ex!ample.helo.test'), ['invalid_name'], /not a valid domain name/);
    const literal = await run(hooks, '[192.0.2.10]');
    accepted(literal);
    assert.deepEqual(literal.results.skip, ['no_dns: address literal']);
  });

  test('no_dns: A/AAAA found passes; NXDOMAIN and NODATA fail', async () => {
    const hooks = await load({ policy: 'rfc' });
    const ok = await run(hooks, 'mail.helo.test.');
    accepted(ok);
    assert.deepEqual(ok.results.pass, ['fqdn', 'dns']);
    refusedAtRcpt(await run(hooks, 'nope.helo.test'), ['no_dns'], /^HELO nope\.helo\.test: no such host in the DNS$/);
    refusedAtRcpt(await run(hooks, 'mxonly.helo.test'), ['no_address'], /has no address \(A\/AAAA\) in the DNS/);
    // A name that resolves but is not the client's is fine for rfc.
    accepted(await run(hooks, 'other.helo.test'));
  });

  test('a cheap failure saves the lookup', async () => {
    const hooks = await load({ policy: 'rfc', bad_helo: ['nope.helo.test'] });
    const r = await run(hooks, 'nope.helo.test');
    refusedAtRcpt(r, ['bad_helo'], /not accepted here/);
    assert.deepEqual(r.results.skip, ['no_dns: already failed']);
  });

  test('SERVFAIL is never a rejection: recorded; with on_dns_error defer a 4xx at RCPT', async () => {
    const lenient = await load({ policy: 'rfc' });
    const r = await run(lenient, 'x.broken.test');
    accepted(r);
    assert.deepEqual(r.results.err, ['A/AAAA x.broken.test: servfail']);
    const deferring = await load({ policy: 'rfc', on_dns_error: 'defer' });
    const d = await run(deferring, 'x.broken.test');
    assert.equal(d.atMail.decision, Decision.DECLINED);
    assert.equal(d.atRcpt.decision, Decision.DENYSOFT);
    assert.equal(d.atRcpt.enhanced, '4.4.3');
    assert.match(d.atRcpt.message!, /^HELO x\.broken\.test: temporary DNS failure, try again later$/);
    assert.equal(d.atPostmaster.decision, Decision.DECLINED);
    assert.deepEqual(d.results.fail, []);
  });

  test('a DNS timeout is recorded, not refused (defer: 4xx)', async () => {
    const silent = await silentDnsServer();
    const r = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const skip = await run(await load({ policy: 'rfc' }, r), 'mail.helo.test');
      accepted(skip);
      assert.deepEqual(skip.results.err, ['A/AAAA mail.helo.test: timeout']);
      r.flush();
      const defer = await run(await load({ policy: 'rfc', on_dns_error: 'defer' }, r), 'mail.helo.test');
      assert.equal(defer.atRcpt.decision, Decision.DENYSOFT);
    } finally {
      r.close();
      await silent.stop();
    }
  });
});

describe('helo: strict policy', () => {
  test('address literals are refused, even the client own', async () => {
    const hooks = await load({ policy: 'strict' });
    refusedAtRcpt(await run(hooks, '[192.0.2.10]'), ['address_literal'], /address literals are not accepted here/);
  });

  test('dns_match: forward (A/AAAA include the client) or reverse (rDNS name in the same domain)', async () => {
    const hooks = await load({ policy: 'strict' });
    const fwd = await run(hooks, 'mail.helo.test');
    accepted(fwd);
    assert.deepEqual(fwd.results.pass, ['fqdn', 'dns', 'forward_match']);
    const v6 = await run(hooks, 'mail.helo.test', { addr: '2001:db8::10' });
    assert.ok(v6.results.pass.includes('forward_match'));
    // XFORWARD NAME (Postfix verified it): mx9.helo.test for a HELO of other.helo.test
    const rev = await run(hooks, 'other.helo.test', { addr: '192.0.2.50', name: 'mx9.helo.test', via: 'xforward' });
    accepted(rev);
    assert.deepEqual(rev.results.pass, ['fqdn', 'dns', 'reverse_match']);
    refusedAtRcpt(
      await run(hooks, 'other.helo.test', { addr: '192.0.2.50', name: 'host.elsewhere.test', via: 'xforward' }),
      ['no_match'],
      /^HELO other\.helo\.test: the name does not match your address 192\.0\.2\.50 or its reverse DNS name$/,
    );
    // Postfix without a name ([UNAVAILABLE]): nothing to match in reverse, no lookup of our own.
    refusedAtRcpt(await run(hooks, 'other.helo.test', { addr: '192.0.2.30', via: 'xforward' }), ['no_match'], /does not match/);
  });

  test('standalone without a name: the PTR is looked up; fcrdns names are used when there', async () => {
    const hooks = await load({ policy: 'strict' });
    const ptr = await run(hooks, 'mx0.helo.test', { addr: '192.0.2.30' });
    accepted(ptr);
    assert.ok(ptr.results.pass.includes('reverse_match'));
    refusedAtRcpt(await run(hooks, 'mx0.helo.test', { addr: '192.0.2.31' }), ['no_match'], /does not match/);
    // fcrdns already looked (unverified name mx7.helo.test): its names count, no PTR of our own.
    const ctx = makeContext({ name: 'helo', helo: 'mx0.helo.test', clientAddr: '192.0.2.31' });
    ctx.conn.notes.fcrdns = { name: 'mx7.helo.test', names: ['mx7.helo.test'], verified: false, source: 'dns', flags: ['no_fcrdns'] };
    assert.equal((await callHook(hooks, 'ehlo', ctx, 'mx0.helo.test')).decision, Decision.DECLINED);
    ctx.newTransaction('a@sender.example');
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('user@example.test'))).decision, Decision.DECLINED);
    assert.ok(ctx.conn.results.get('helo')!.pass.includes('reverse_match'));
  });

  test('match: forward and both', async () => {
    const forward = await load({ policy: 'strict', match: 'forward' });
    refusedAtRcpt(await run(forward, 'other.helo.test', { addr: '192.0.2.50', name: 'mx9.helo.test', via: 'xforward' }), ['no_match'], /does not match your address 192\.0\.2\.50$/);
    const both = await load({ policy: 'strict', match: 'both' });
    accepted(await run(both, 'mail.helo.test', { name: 'mail.helo.test', via: 'xforward' }));
    refusedAtRcpt(await run(both, 'mail.helo.test', { via: 'xforward' }), ['no_match'], /your address 192\.0\.2\.10 and its reverse DNS name/);
  });

  test('a PTR failure leaves the match open: no rejection, or 4xx with on_dns_error defer', async () => {
    const r = await run(await load({ policy: 'strict' }), 'other.helo.test', { addr: '198.51.100.9' });
    accepted(r);
    assert.deepEqual(r.results.err, ['PTR servfail']);
    const d = await run(await load({ policy: 'strict', on_dns_error: 'defer' }), 'other.helo.test', { addr: '198.51.100.9' });
    assert.equal(d.atRcpt.decision, Decision.DENYSOFT);
  });
});

describe('helo: where and when', () => {
  test('reject_at helo refuses the EHLO itself; reject_at mail refuses MAIL', async () => {
    const atHelo = await run(await load({ reject_at: 'helo' }), 'localhost');
    assert.equal(atHelo.atHelo.decision, Decision.DENY);
    assert.equal(atHelo.atRcpt.decision, Decision.DECLINED);
    const atMail = await run(await load({ reject_at: 'mail' }), 'localhost');
    assert.equal(atMail.atHelo.decision, Decision.DECLINED);
    assert.equal(atMail.atMail.decision, Decision.DENY);
    assert.equal(atMail.atRcpt.decision, Decision.DECLINED);
  });

  test('checked once per name and client; a new name is checked again', async () => {
    const hooks = await load({ policy: 'rfc' });
    const ctx = makeContext({ name: 'helo', helo: 'mail.helo.test' });
    await callHook(hooks, 'ehlo', ctx, 'mail.helo.test');
    await callHook(hooks, 'ehlo', ctx, 'mail.helo.test');
    ctx.newTransaction('a@sender.example');
    await callHook(hooks, 'rcpt', ctx, addr('user@example.test'));
    assert.deepEqual(ctx.conn.results.get('helo')!.pass, ['fqdn', 'dns']);
    ctx.conn.client.helo = 'nope.helo.test';
    await callHook(hooks, 'ehlo', ctx, 'nope.helo.test');
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('user@example.test'))).decision, Decision.DENY);
  });

  test('the HELO is checked at RCPT when the helo hook did not run (XFORWARD before a reload); no HELO is only recorded', async () => {
    const hooks = await load({ policy: 'rfc' });
    const ctx = makeContext({ name: 'helo', helo: 'nope.helo.test', sender: 'a@sender.example' });
    assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED);
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('user@example.test'))).decision, Decision.DENY);
    const none = makeContext({ name: 'helo', sender: 'a@sender.example' });
    assert.equal((await callHook(hooks, 'mail', none, none.txn!.sender!)).decision, Decision.DECLINED);
    assert.equal((await callHook(hooks, 'rcpt', none, addr('user@example.test'))).decision, Decision.DECLINED);
    assert.deepEqual(none.conn.results.get('helo')!.skip, ['no HELO']);
  });
});

describe('helo: over the wire', () => {
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
  const rfc = { helo: { policy: 'rfc', on_dns_error: 'defer', bad_helo: ['spammer.helo.test'] } };

  test('standalone: a good name is relayed; unknown and listed names refused at RCPT (postmaster open); SERVFAIL deferred', async () => {
    const proxy = await startProxy(config('standalone', [rfc]));
    try {
      const before = downstream.messages.length;
      const good = await SmtpTalk.connect(proxy.port);
      const r = await good.send('a@sender.example', ['user@example.test'], 'Subject: hi\r\n\r\nhi\r\n', 'mail.helo.test');
      assert.equal(r.eod!.code, 250);
      assert.equal(downstream.messages.length, before + 1);
      await good.quit();

      const bad = await SmtpTalk.connect(proxy.port);
      assert.equal((await bad.cmd('EHLO nope.helo.test')).code, 250);
      assert.equal((await bad.cmd('MAIL FROM:<a@sender.example>')).code, 250);
      const refused = await bad.cmd('RCPT TO:<user@example.test>');
      assert.equal(refused.code, 550);
      assert.equal(refused.enhanced, '5.7.1');
      assert.match(refused.lines.join(' '), /HELO nope\.helo\.test: no such host in the DNS/);
      assert.equal((await bad.cmd('RCPT TO:<postmaster@example.test>')).code, 250);
      await bad.cmd('RSET');
      // A new greeting is a new name: listed this time.
      await bad.cmd('EHLO spammer.helo.test');
      await bad.cmd('MAIL FROM:<a@sender.example>');
      assert.equal((await bad.cmd('RCPT TO:<user@example.test>')).code, 550);
      await bad.quit();

      const broken = await SmtpTalk.connect(proxy.port);
      await broken.cmd('EHLO x.broken.test');
      await broken.cmd('MAIL FROM:<a@sender.example>');
      const deferred = await broken.cmd('RCPT TO:<user@example.test>');
      assert.equal(deferred.code, 450);
      assert.equal(deferred.enhanced, '4.4.3');
      await broken.quit();
    } finally {
      await proxy.close();
    }
    assert.ok(proxy.log.lines.some((e) => /HELO nope\.helo\.test from 127\.0\.0\.1: no_dns/.test(e.msg)), 'logged');
  });

  test('standalone: reject_at helo refuses the EHLO; relay clients are immune', async () => {
    const proxy = await startProxy(config('standalone', [{ helo: { policy: 'rfc', reject_at: 'helo' } }]));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const r = await t.cmd('EHLO nope.helo.test');
      assert.equal(r.code, 550);
      assert.match(r.lines.join(' '), /no such host/);
    } finally {
      await t.quit();
      await proxy.close();
    }
    const relay = await startProxy(config('standalone', [{ helo: { policy: 'rfc', reject_at: 'helo' } }], { relay_clients: ['127.0.0.1'] }));
    const u = await SmtpTalk.connect(relay.port);
    try {
      const r = await u.send('a@sender.example', ['user@example.test'], 'Subject: hi\r\n\r\nhi\r\n', 'nope.helo.test');
      assert.equal(r.rcpt[0]!.code, 250);
      assert.equal(r.eod!.code, 250);
    } finally {
      await u.quit();
      await relay.close();
    }
  });

  test('postfix mode: XFORWARD HELO and ADDR are checked; accept, reject, defer, whitelist immunity', async () => {
    const proxy = await startProxy(config('postfix', [{ whitelist: { hosts: ['192.0.2.77'] } }, rfc]));
    const t = await SmtpTalk.connect(proxy.port);
    const client = async (xforward: string): Promise<{ mail: number; rcpt: { code: number; text: string } }> => {
      await t.cmd('RSET');
      assert.equal((await t.cmd(`XFORWARD ${xforward}`)).code, 250);
      const mail = (await t.cmd('MAIL FROM:<a@sender.example>')).code;
      const r = await t.cmd('RCPT TO:<user@example.test>');
      return { mail, rcpt: { code: r.code, text: r.lines.join(' ') } };
    };
    try {
      await t.cmd('EHLO postfix.example.test');
      const good = await client('NAME=mail.helo.test ADDR=192.0.2.10 HELO=mail.helo.test PROTO=ESMTP');
      assert.deepEqual([good.mail, good.rcpt.code], [250, 250]);
      const data = await t.cmd('DATA');
      assert.equal(data.code, 354);
      assert.equal((await t.cmd('Subject: hi\r\n\r\nhi\r\n.')).code, 250);

      const forged = await client('NAME=[UNAVAILABLE] ADDR=192.0.2.60 HELO=[192.0.2.99] PROTO=ESMTP');
      assert.equal(forged.mail, 250);
      assert.equal(forged.rcpt.code, 550);
      assert.match(forged.rcpt.text, /HELO \[192\.0\.2\.99\]: that is not your address \(192\.0\.2\.60\)/);

      const ours = await client('ADDR=192.0.2.60 HELO=pq.example.test PROTO=ESMTP');
      assert.match(ours.rcpt.text, /HELO pq\.example\.test: that is our own name/);

      const unknown = await client('ADDR=192.0.2.60 HELO=nope.helo.test PROTO=ESMTP');
      assert.equal(unknown.rcpt.code, 550);
      assert.equal((await t.cmd('RCPT TO:<postmaster@example.test>')).code, 250);

      const deferred = await client('ADDR=192.0.2.60 HELO=x.broken.test PROTO=ESMTP');
      assert.equal(deferred.rcpt.code, 450);

      const friend = await client('ADDR=192.0.2.77 HELO=nope.helo.test PROTO=ESMTP');
      assert.equal(friend.rcpt.code, 250, 'whitelisted client: helo skipped');
    } finally {
      await t.quit();
      await proxy.close();
    }
  });

  test('postfix mode: reject_at helo is held by the core and delivered at MAIL', async () => {
    const proxy = await startProxy(config('postfix', [{ helo: { reject_at: 'helo' } }]));
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO postfix.example.test');
      assert.equal((await t.cmd('XFORWARD ADDR=192.0.2.60 HELO=localhost PROTO=ESMTP')).code, 250);
      const r = await t.cmd('MAIL FROM:<a@sender.example>');
      assert.equal(r.code, 550);
      assert.match(r.lines.join(' '), /HELO localhost: you are not localhost/);
    } finally {
      await t.quit();
      await proxy.close();
    }
  });
});
