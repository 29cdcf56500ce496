/**
 * fcrdns against a real NSD serving forward and reverse (in-addr.arpa,
 * ip6.arpa) zones: confirmed names, no rDNS, mismatches, generic names,
 * invalid TLDs, IPv6, XFORWARD NAME behind Postfix, DNS failures; then over
 * SMTP through prequeue: accept, reject, defer and immunity.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { NOTE_KEY, embedsIp, isGeneric, GENERIC_WORDS, type FcrdnsNote } from '../../plugins/fcrdns';
import { DnsResolver } from '../../src/dns/resolver';
import { reverseName } from '../../src/dns/names';
import { Decision } from '../../src/plugin/decision';
import type { ClientInfo } from '../../src/session/state';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom } from '../helpers/wire-clients';

const V6_ZONE = '8.b.d.0.1.0.0.2.ip6.arpa';
/** The owner name of an IPv6 address's PTR record, relative to V6_ZONE. */
const v6Label = (ip: string) => reverseName(ip).slice(0, -(V6_ZONE.length + 1));

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'example.net': [
      'mail IN A 192.0.2.10',
      'liar IN A 192.0.2.99',
      '192-0-2-13.dyn IN A 192.0.2.13',
      'other IN A 192.0.2.99',
      'mx IN A 192.0.2.15',
      'client.customer IN A 192.0.2.18',
      'mail6 IN AAAA 2001:db8::25',
      'mail6 IN A 192.0.2.10',
      'good IN A 127.0.0.21',
      'relay IN A 127.0.0.1',
    ].join('\n'),
    // Configured without data: NSD answers SERVFAIL for every name in it.
    'corp.invalidtld': 'host IN A 192.0.2.14',
    'broken.example.org': null,
    '100.51.198.in-addr.arpa': null,
    '2.0.192.in-addr.arpa': [
      '10 IN PTR mail.example.net.',
      // 11: no PTR
      '12 IN PTR liar.example.net.',
      '13 IN PTR 192-0-2-13.dyn.example.net.',
      '14 IN PTR host.corp.invalidtld.',
      '15 IN PTR other.example.net.',
      '15 IN PTR mx.example.net.',
      '16 IN PTR mail.broken.example.org.',
      '17 IN PTR nohost.example.net.',
      '18 IN PTR client.customer.example.net.',
    ].join('\n'),
    '0.0.127.in-addr.arpa': [
      '21 IN PTR good.example.net.',
      // 22: no PTR
      '23 IN PTR nohost.example.net.',
      '24 IN PTR mail.broken.example.org.',
      '1 IN PTR relay.example.net.',
    ].join('\n'),
    [V6_ZONE]: [`${v6Label('2001:db8::25')} IN PTR mail6.example.net.`, `${v6Label('2001:db8::26')} IN PTR mail6.example.net.`].join('\n'),
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
});
after(async () => {
  resolver.close();
  await dns.stop();
});

const load = (options: Record<string, unknown> = {}, r: DnsResolver = resolver) => loadPlugin(plugin, options, { dns: r, name: 'fcrdns' });

/** Runs the connect hook for a client at `ip` (optionally as described by XFORWARD). */
async function connect(options: Record<string, unknown>, ip: string, proxied?: Partial<ClientInfo>): Promise<{ ctx: FakeContext; verdict: Awaited<ReturnType<typeof callHook>> }> {
  const hooks = await load(options);
  const ctx = makeContext({ name: 'fcrdns', clientAddr: ip });
  if (proxied) Object.assign(ctx.conn.client, { via: 'xforward', ...proxied });
  return { ctx, verdict: await callHook(hooks, 'connect', ctx) };
}

const note = (ctx: FakeContext) => ctx.conn.notes[NOTE_KEY] as FcrdnsNote | undefined;

const ALL = { reject_no_rdns: true, reject_no_fcrdns: true, reject_generic: true, reject_invalid_tld: true };

describe('fcrdns: lookups against NSD', () => {
  test('PTR -> A includes the client: pass, the name is set for the Received header, no rejection', async () => {
    const { ctx, verdict } = await connect(ALL, '192.0.2.10');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.deepEqual(ctx.myResults()!.pass, ['fcrdns']);
    assert.deepEqual(ctx.myResults()!.fail, []);
    assert.deepEqual(note(ctx), { name: 'mail.example.net', names: ['mail.example.net'], verified: true, source: 'dns', flags: [] });
    assert.equal(ctx.conn.client.name, 'mail.example.net');
  });

  test('one of several PTR names confirms: that one is the name', async () => {
    const { ctx, verdict } = await connect(ALL, '192.0.2.15');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.equal(note(ctx)!.name, 'mx.example.net');
    assert.deepEqual([...note(ctx)!.names].sort(), ['mx.example.net', 'other.example.net']);
  });

  test('no PTR: fail no_rdns; refused only with reject_no_rdns', async () => {
    const off = await connect({}, '192.0.2.11');
    assert.equal(off.verdict.decision, Decision.DECLINED);
    assert.deepEqual(off.ctx.myResults()!.fail, ['no_rdns']);
    assert.equal(note(off.ctx)!.name, undefined);
    const on = await connect({ reject_no_rdns: true }, '192.0.2.11');
    assert.equal(on.verdict.decision, Decision.DENY);
    assert.equal(on.verdict.enhanced, '5.7.25');
    assert.match(on.verdict.message!, /No reverse DNS for 192\.0\.2\.11/);
  });

  test('PTR name resolving elsewhere, or not at all: fail no_fcrdns; refused only with reject_no_fcrdns', async () => {
    for (const [ip, name] of [['192.0.2.12', 'liar.example.net'], ['192.0.2.17', 'nohost.example.net']] as const) {
      const off = await connect({ reject_no_rdns: true }, ip);
      assert.equal(off.verdict.decision, Decision.DECLINED, ip);
      assert.deepEqual(off.ctx.myResults()!.fail, ['no_fcrdns']);
      assert.equal(off.ctx.conn.client.name, undefined, 'an unconfirmed name is not passed on');
      const on = await connect({ reject_no_fcrdns: true }, ip);
      assert.equal(on.verdict.decision, Decision.DENY);
      assert.equal(on.verdict.message, `Reverse DNS of ${ip} (${name}) does not resolve back to it`);
    }
  });

  test('generic names: the address in the name, or an end-user word', async () => {
    const ip = await connect({ reject_generic: true }, '192.0.2.13');
    assert.equal(ip.verdict.decision, Decision.DENY);
    assert.match(ip.verdict.message!, /192-0-2-13\.dyn\.example\.net looks like an end-user address/);
    assert.deepEqual(ip.ctx.myResults()!.pass, ['fcrdns'], 'confirmed, but generic');
    assert.deepEqual(ip.ctx.myResults()!.fail, ['generic']);
    const word = await connect({ reject_generic: true }, '192.0.2.18');
    assert.equal(word.verdict.decision, Decision.DENY);
    assert.deepEqual(word.ctx.myResults()!.fail, ['generic']);
    // Only recorded without reject_generic; a plain mail server name is not generic.
    assert.equal((await connect({}, '192.0.2.13')).verdict.decision, Decision.DECLINED);
    assert.deepEqual((await connect({ reject_generic: true }, '192.0.2.10')).ctx.myResults()!.fail, []);
  });

  test('generic detection: octets either way, packed, hex; words; custom patterns', async () => {
    const rules = { words: new Set(GENERIC_WORDS), patterns: [] as RegExp[] };
    assert.ok(embedsIp('1-2-3-4', '1.2.3.4'));
    assert.ok(embedsIp('4.3.2.host', '1.2.3.4'));
    assert.ok(embedsIp('h001002003004', '1.2.3.4'));
    assert.ok(embedsIp('c0000201', '192.0.2.1'));
    assert.ok(!embedsIp('mail2', '192.0.2.2'));
    assert.ok(isGeneric('1-2-3-4.dyn.example.net', '1.2.3.4', rules));
    assert.ok(isGeneric('ppp-44.pool.example.net', '5.6.7.8', rules));
    assert.ok(!isGeneric('mail.example.net', '1.2.3.4', rules));
    assert.ok(!isGeneric('mail.dyn.com', '1.2.3.4', rules), 'words in the registrable domain do not count');
    const custom = await connect({ reject_generic: true, generic_patterns: ['/^mx\\./'] }, '192.0.2.15');
    assert.equal(custom.verdict.decision, Decision.DENY);
    const noWords = await connect({ reject_generic: true, generic_words: [] }, '192.0.2.18');
    assert.equal(noWords.verdict.decision, Decision.DECLINED);
  });

  test('a name outside the Public Suffix List: invalid_tld, not looked up forward (its A record is never asked); valid_tlds accepts it', async () => {
    const r = await connect({ reject_invalid_tld: true }, '192.0.2.14');
    assert.equal(r.verdict.decision, Decision.DENY);
    assert.match(r.verdict.message!, /host\.corp\.invalidtld is not under a valid top-level domain/);
    assert.deepEqual([...r.ctx.myResults()!.fail].sort(), ['invalid_tld', 'no_fcrdns']);
    const allowed = await connect({ reject_invalid_tld: true, valid_tlds: ['invalidtld'] }, '192.0.2.14');
    assert.equal(allowed.verdict.decision, Decision.DECLINED);
    assert.deepEqual(allowed.ctx.myResults()!.pass, ['fcrdns'], 'looked up and confirmed');
    assert.deepEqual(allowed.ctx.myResults()!.fail, []);
  });

  test('IPv6: PTR in ip6.arpa, confirmed by AAAA (A records of the name do not count)', async () => {
    const ok = await connect(ALL, '2001:db8::25');
    assert.equal(ok.verdict.decision, Decision.DECLINED);
    assert.deepEqual(ok.ctx.myResults()!.pass, ['fcrdns']);
    const mismatch = await connect({ reject_no_fcrdns: true }, '2001:db8::26');
    assert.equal(mismatch.verdict.decision, Decision.DENY);
    assert.deepEqual(mismatch.ctx.myResults()!.fail, ['no_fcrdns']);
  });

  test('an IPv4-mapped IPv6 client address is treated as IPv4', async () => {
    const r = await connect(ALL, '::ffff:192.0.2.10');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.deepEqual(r.ctx.myResults()!.pass, ['fcrdns']);
  });
});

describe('fcrdns: DNS failures never reject outright', () => {
  test('PTR SERVFAIL: err recorded, no note; skip declines, defer answers 4xx 4.4.3', async () => {
    const skip = await connect(ALL, '198.51.100.7');
    assert.equal(skip.verdict.decision, Decision.DECLINED);
    assert.deepEqual(skip.ctx.myResults()!.err, ['PTR servfail']);
    assert.deepEqual(skip.ctx.myResults()!.fail, []);
    assert.equal(note(skip.ctx), undefined);
    const defer = await connect({ ...ALL, on_lookup_error: 'defer' }, '198.51.100.7');
    assert.equal(defer.verdict.decision, Decision.DENYSOFT);
    assert.equal(defer.verdict.enhanced, '4.4.3');
  });

  test('forward lookup SERVFAIL: not read as a mismatch', async () => {
    const r = await connect({ reject_no_fcrdns: true }, '192.0.2.16');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.deepEqual(r.ctx.myResults()!.err, ['mail.broken.example.org A servfail']);
    assert.deepEqual(r.ctx.myResults()!.fail, []);
    const defer = await connect({ reject_no_fcrdns: true, on_lookup_error: 'defer' }, '192.0.2.16');
    assert.equal(defer.verdict.decision, Decision.DENYSOFT);
  });

  test('defer without any reject_* option still only records (nothing to defer)', async () => {
    const r = await connect({ on_lookup_error: 'defer' }, '198.51.100.7');
    assert.equal(r.verdict.decision, Decision.DECLINED);
  });

  test('a DNS server that never answers: timeout recorded, declined', async () => {
    const silent = await silentDnsServer();
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const hooks = await load(ALL, slow);
      const ctx = makeContext({ name: 'fcrdns', clientAddr: '192.0.2.10' });
      assert.equal((await callHook(hooks, 'connect', ctx)).decision, Decision.DECLINED);
      assert.deepEqual(ctx.myResults()!.err, ['PTR timeout']);
    } finally {
      slow.close();
      await silent.stop();
    }
  });
});

describe('fcrdns: XFORWARD NAME behind Postfix', () => {
  test('a NAME Postfix sent counts as verified without a lookup (this client has no PTR at all)', async () => {
    const r = await connect(ALL, '192.0.2.11', { name: 'Mail.Example.NET' });
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.deepEqual(r.ctx.myResults()!.pass, ['fcrdns']);
    assert.deepEqual(note(r.ctx), { name: 'mail.example.net', names: ['mail.example.net'], verified: true, source: 'proxy', flags: [] });
    // The proxy's name is still judged for being generic.
    const generic = await connect(ALL, '192.0.2.13', { name: '192-0-2-13.dyn.example.net' });
    assert.equal(generic.verdict.decision, Decision.DENY);
  });

  test('NAME=[UNAVAILABLE] (no name from Postfix): looked up here; found, missing, mismatched', async () => {
    const found = await connect(ALL, '192.0.2.10', { name: undefined });
    assert.equal(found.verdict.decision, Decision.DECLINED);
    assert.equal(note(found.ctx)!.source, 'dns');
    assert.deepEqual(found.ctx.myResults()!.pass, ['fcrdns']);
    assert.equal(found.ctx.conn.client.name, undefined, "Postfix's description is left as it came");
    const missing = await connect({ reject_no_rdns: true }, '192.0.2.11', { name: undefined });
    assert.equal(missing.verdict.decision, Decision.DENY);
    const mismatch = await connect({ reject_no_fcrdns: true }, '192.0.2.12', { name: undefined });
    assert.equal(mismatch.verdict.decision, Decision.DENY);
    const failed = await connect(ALL, '198.51.100.7', { name: undefined });
    assert.equal(failed.verdict.decision, Decision.DECLINED);
  });

  test('trust_xforward_name: false looks up even when Postfix sent a name', async () => {
    const r = await connect({ reject_no_rdns: true, trust_xforward_name: false }, '192.0.2.11', { name: 'mail.example.net' });
    assert.equal(r.verdict.decision, Decision.DENY);
    assert.equal(note(r.ctx)!.source, 'dns');
  });
});

// ---- over SMTP ----

describe('fcrdns over SMTP (standalone)', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;
  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      relay_clients: ['127.0.0.25'],
      plugins: [{ fcrdns: { reject_no_rdns: true, reject_no_fcrdns: true, on_lookup_error: 'defer' } }],
    });
  });
  after(async () => {
    await proxy.close();
    await downstream.close();
  });

  test('accept: a confirmed client is greeted and its mail relayed, the name in XFORWARD downstream', async () => {
    const before = downstream.messages.length;
    const t = await connectFrom('127.0.0.21', proxy.port);
    assert.equal(t.greeting.code, 220);
    const r = await t.send('a@example.net', ['b@example.test'], 'Subject: hi\r\n\r\nhi\r\n', 'good.example.net');
    assert.equal(r.eod?.code, 250);
    await t.quit();
    assert.equal(downstream.messages.length, before + 1);
    const received = downstream.messages.at(-1)!.data.toString();
    assert.match(received, /^Received: from good\.example\.net \(good\.example\.net \[127\.0\.0\.21\]\)/);
  });

  test('reject: no PTR gets 554 5.7.25 at the greeting; a mismatch too', async () => {
    for (const [from, text] of [['127.0.0.22', /No reverse DNS for 127\.0\.0\.22/], ['127.0.0.23', /nohost\.example\.net\) does not resolve back/]] as const) {
      const t = await connectFrom(from, proxy.port);
      assert.equal(t.greeting.code, 554, from);
      assert.equal(t.greeting.enhanced, '5.7.25');
      assert.match(t.greeting.lines.join(' '), text);
      await t.closed;
    }
  });

  test('defer: a forward lookup that fails gives 421 4.4.3 at the greeting, never a 5xx', async () => {
    const t = await connectFrom('127.0.0.24', proxy.port);
    assert.equal(t.greeting.code, 421);
    assert.equal(t.greeting.enhanced, '4.4.3');
    await t.closed;
  });

  test('immunity: a relay client without reverse DNS is not checked', async () => {
    const before = downstream.messages.length;
    const t = await connectFrom('127.0.0.25', proxy.port);
    assert.equal(t.greeting.code, 220);
    const r = await t.send('a@example.net', ['b@example.test'], 'Subject: hi\r\n\r\nhi\r\n');
    assert.equal(r.eod?.code, 250);
    await t.quit();
    assert.equal(downstream.messages.length, before + 1);
    const line = proxy.log.lines.filter((l) => l.msg === 'transaction').at(-1)!;
    assert.match((line.meta.results as Record<string, string>).fcrdns!, /skip=connect: immune/);
  });
});

describe('fcrdns over SMTP (postfix mode, XFORWARD)', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;
  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'postfix',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      plugins: [{ fcrdns: { reject_no_rdns: true, reject_no_fcrdns: true, on_lookup_error: 'defer' } }],
    });
  });
  after(async () => {
    await proxy.close();
    await downstream.close();
  });

  async function transaction(xforward: string): Promise<{ mail: number; enhanced?: string; text: string }> {
    const t = await SmtpTalk.connect(proxy.port);
    try {
      await t.cmd('EHLO mx.example.test');
      assert.equal((await t.cmd(`XFORWARD ${xforward}`)).code, 250);
      const mail = await t.cmd('MAIL FROM:<a@example.net>');
      if (mail.code === 250) {
        assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
        await t.cmd('RSET');
      }
      return { mail: mail.code, enhanced: mail.enhanced, text: mail.lines.join(' ') };
    } finally {
      await t.quit();
    }
  }

  test('NAME from Postfix: accepted without a lookup', async () => {
    assert.equal((await transaction('NAME=mail.example.net ADDR=192.0.2.11 HELO=mail.example.net PROTO=ESMTP')).mail, 250);
  });

  test('NAME=[UNAVAILABLE]: looked up; confirmed -> accepted, no PTR -> 550 5.7.25 at MAIL, failure -> 4xx at MAIL', async () => {
    assert.equal((await transaction('NAME=[UNAVAILABLE] ADDR=192.0.2.10 HELO=x PROTO=ESMTP')).mail, 250);
    const none = await transaction('NAME=[UNAVAILABLE] ADDR=192.0.2.11 HELO=x PROTO=ESMTP');
    assert.equal(none.mail, 550);
    assert.equal(none.enhanced, '5.7.25');
    assert.match(none.text, /No reverse DNS for 192\.0\.2\.11/);
    const failed = await transaction('NAME=[UNAVAILABLE] ADDR=198.51.100.7 HELO=x PROTO=ESMTP');
    assert.equal(failed.mail, 450);
    assert.equal(failed.enhanced, '4.4.3');
  });
});
