import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { receivedSpf } from '../../plugins/spf';
import { DnsResolver } from '../../src/dns/resolver';
import { spoolBuffer } from '../../src/message/spool';
import { authNotes, peekAuthNotes } from '../../src/mailauth/notes';
import { Decision } from '../../src/plugin/decision';
import { startDnsServer, silentDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, loadPlugin, makeContext, type FakeContextOptions } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';
import { sendAsPostfix } from '../helpers/dkim-keys';

const GOOD_IP = '192.0.2.1';
const OTHER_IP = '198.51.100.7';

let dns: DnsServer;
let resolver: DnsResolver;
let silent: { server: string; stop(): Promise<void> };

before(async () => {
  dns = await startDnsServer({
    'example.test': [
      '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"',
      'soft IN TXT "v=spf1 ip4:192.0.2.1 ~all"',
      'neutral IN TXT "v=spf1 ?all"',
      'none IN A 192.0.2.50',
      'perm IN TXT "v=spf1 ip4:192.0.2.1 frobnicate:x -all"',
      'twice IN TXT "v=spf1 -all"',
      'twice IN TXT "v=spf1 +all"',
      'mta IN A 192.0.2.1',
      'mta IN TXT "v=spf1 a -all"',
      'inc IN TXT "v=spf1 include:broken.test -all"',
      'v6 IN TXT "v=spf1 ip6:2001:db8::/32 -all"',
    ].join('\n'),
    // Configured without data: NSD answers SERVFAIL.
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
  silent = await silentDnsServer();
});
after(async () => {
  resolver?.close();
  await dns?.stop();
  await silent?.stop();
});

async function atMail(sender: string, ctxOpts: FakeContextOptions = {}, options: object = {}, res = resolver) {
  const hooks = await loadPlugin(plugin, options, { dns: res, hostname: 'mx.example.org' });
  const ctx = makeContext({ clientAddr: GOOD_IP, helo: 'client.example.net', sender, ...ctxOpts });
  const verdict = await callHook(hooks, 'mail', ctx, addr(sender));
  return { hooks, ctx, verdict, note: peekAuthNotes(ctx.txn)?.spf, results: ctx.myResults() };
}

describe('spf: results and default actions at MAIL', () => {
  test('an allowed client passes and is recorded for dmarc and the log', async () => {
    const r = await atMail('user@example.test');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.note?.result, 'pass');
    assert.equal(r.note?.domain, 'example.test');
    assert.equal(r.note?.scope, 'mfrom');
    assert.deepEqual(r.results?.pass, ['pass']);
  });

  test('fail is rejected with 5.7.23 naming the domain', async () => {
    const r = await atMail('user@example.test', { clientAddr: OTHER_IP });
    assert.equal(r.verdict.decision, Decision.DENY);
    assert.equal(r.verdict.enhanced, '5.7.23');
    assert.match(r.verdict.message!, /198\.51\.100\.7 is not allowed to send mail from example\.test/);
    assert.equal(r.note?.result, 'fail');
    assert.deepEqual(r.results?.fail, ['fail']);
  });

  test('softfail, neutral and none are accepted by default and recorded', async () => {
    for (const [sender, result] of [
      ['user@soft.example.test', 'softfail'],
      ['user@neutral.example.test', 'neutral'],
      ['user@none.example.test', 'none'],
    ] as const) {
      const r = await atMail(sender, { clientAddr: OTHER_IP });
      assert.equal(r.verdict.decision, Decision.DECLINED, sender);
      assert.equal(r.note?.result, result, sender);
    }
  });

  test('permerror (an unknown mechanism, two records) is accepted by default, rejectable with 5.7.24', async () => {
    const r = await atMail('user@perm.example.test');
    assert.equal(r.note?.result, 'permerror');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.deepEqual(r.results?.err, ['permerror']);
    const twice = await atMail('user@twice.example.test', {}, { actions: { permerror: 'reject' } });
    assert.equal(twice.note?.result, 'permerror');
    assert.equal(twice.verdict.decision, Decision.DENY);
    assert.equal(twice.verdict.enhanced, '5.7.24');
  });

  test('a SERVFAIL during evaluation is temperror and deferred with 4.7.24', async () => {
    const r = await atMail('user@inc.example.test');
    assert.equal(r.note?.result, 'temperror');
    assert.equal(r.verdict.decision, Decision.DENYSOFT);
    assert.equal(r.verdict.enhanced, '4.7.24');
  });

  test('a DNS timeout is temperror and deferred, never "none"', async () => {
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const t0 = Date.now();
      const r = await atMail('user@example.test', {}, {}, slow);
      assert.equal(r.note?.result, 'temperror');
      assert.equal(r.verdict.decision, Decision.DENYSOFT);
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      slow.close();
    }
  });

  test('actions are configurable per result', async () => {
    const soft = await atMail('user@soft.example.test', { clientAddr: OTHER_IP }, { actions: { softfail: 'reject' } });
    assert.equal(soft.verdict.decision, Decision.DENY);
    const fail = await atMail('user@example.test', { clientAddr: OTHER_IP }, { actions: { fail: 'defer' } });
    assert.equal(fail.verdict.decision, Decision.DENYSOFT);
    assert.equal(fail.verdict.enhanced, '4.7.23');
    const tmp = await atMail('user@inc.example.test', {}, { actions: { temperror: 'accept' } });
    assert.equal(tmp.verdict.decision, Decision.DECLINED);
    await assert.rejects(loadPlugin(plugin, { actions: { fail: 'bounce' } }), /Invalid enum value|invalid/i);
    await assert.rejects(loadPlugin(plugin, { actions: { pas: 'accept' } }), /Unrecognized key/i);
  });

  test('IPv6 clients are checked against ip6 mechanisms', async () => {
    assert.equal((await atMail('user@v6.example.test', { clientAddr: '2001:db8::25' })).note?.result, 'pass');
    assert.equal((await atMail('user@v6.example.test', { clientAddr: '2001:db9::25' })).note?.result, 'fail');
  });
});

describe('spf: identities and skips', () => {
  test('the null sender is checked as postmaster@HELO', async () => {
    const ok = await atMail('', { helo: 'mta.example.test' });
    assert.equal(ok.note?.result, 'pass');
    assert.equal(ok.note?.scope, 'helo');
    assert.equal(ok.note?.identity, 'postmaster@mta.example.test');
    const bad = await atMail('', { helo: 'mta.example.test', clientAddr: OTHER_IP });
    assert.equal(bad.note?.result, 'fail');
    assert.equal(bad.verdict.decision, Decision.DENY);
  });

  test('the null sender without a HELO name is none', async () => {
    const r = await atMail('', { helo: undefined });
    assert.equal(r.note?.result, 'none');
    assert.equal(r.verdict.decision, Decision.DECLINED);
  });

  test('an authenticated client is not checked, even with immune: false', async () => {
    const hooks = await loadPlugin(plugin, {}, { dns: resolver });
    const ctx = makeContext({ clientAddr: OTHER_IP, sender: 'user@example.test' });
    ctx.conn.auth = { user: 'joe', method: 'PLAIN', plugin: 'auth' };
    const v = await callHook(hooks, 'mail', ctx, addr('user@example.test'));
    assert.equal(v.decision, Decision.DECLINED);
    assert.equal(peekAuthNotes(ctx.txn)?.spf, undefined);
    assert.deepEqual(ctx.myResults()?.skip, ['authenticated client']);
  });

  test('check_at: rcpt checks once at the first RCPT and decides each RCPT', async () => {
    const hooks = await loadPlugin(plugin, { check_at: 'rcpt' }, { dns: resolver });
    const ctx = makeContext({ clientAddr: OTHER_IP, sender: 'user@example.test' });
    assert.equal((await callHook(hooks, 'mail', ctx, addr('user@example.test'))).decision, Decision.DECLINED);
    assert.equal(peekAuthNotes(ctx.txn)?.spf, undefined, 'nothing checked at MAIL');
    const first = await callHook(hooks, 'rcpt', ctx, addr('a@example.org'));
    assert.equal(first.decision, Decision.DENY);
    const note = peekAuthNotes(ctx.txn)?.spf;
    const second = await callHook(hooks, 'rcpt', ctx, addr('b@example.org'));
    assert.equal(second.decision, Decision.DENY);
    assert.equal(peekAuthNotes(ctx.txn)?.spf, note, 'the same result, not a second check');
    assert.equal(ctx.myResults()?.fail.length, 1, 'recorded once');
  });
});

describe('spf: Received-SPF', () => {
  test('added at data_post with result, client-ip, envelope-from, helo, receiver and identity', async () => {
    const r = await atMail('user@soft.example.test', { clientAddr: OTHER_IP }, {});
    const message = await spoolBuffer(Buffer.from('From: a@soft.example.test\r\nSubject: x\r\n\r\nbody\r\n'));
    await callHook(r.hooks, 'data_post', r.ctx, message);
    const field = message.headers.fields()[0]!;
    assert.equal(field.name, 'Received-SPF');
    assert.match(field.value, /^softfail \(mx\.example\.org: domain of transitioning user@soft\.example\.test does not designate 198\.51\.100\.7 as permitted sender\)/);
    assert.match(field.value, /client-ip=198\.51\.100\.7; envelope-from="user@soft\.example\.test"; helo=client\.example\.net; receiver=mx\.example\.org; identity=mailfrom;$/);
    assert.ok(field.raw.toString('latin1').split('\r\n').every((l) => l.length <= 998), 'lines within limits');
    await message.dispose();
  });

  test('quotes what is not a dot-atom and says identity=helo for the null sender', () => {
    const v = receivedSpf({ result: 'pass', domain: 'a.example', scope: 'helo', identity: 'postmaster@a b', ip: '192.0.2.1', helo: 'a b' }, 'mx');
    assert.match(v.replace(/\r\n(?=[ \t])/g, ''), /envelope-from=""; helo="a b"; receiver=mx; identity=helo;/);
  });

  test('not added with received_spf: false, nor when nothing was checked', async () => {
    const r = await atMail('user@example.test', {}, { received_spf: false });
    const message = await spoolBuffer(Buffer.from('Subject: x\r\n\r\nbody\r\n'));
    await callHook(r.hooks, 'data_post', r.ctx, message);
    assert.equal(message.headers.count('Received-SPF'), 0);
    const hooks = await loadPlugin(plugin, {}, { dns: resolver });
    const ctx = makeContext({ sender: 'user@example.test' });
    await callHook(hooks, 'data_post', ctx, message);
    assert.equal(message.headers.count('Received-SPF'), 0);
    authNotes(ctx.txn!); // creating empty notes must not matter either
    await callHook(hooks, 'data_post', ctx, message);
    assert.equal(message.headers.count('Received-SPF'), 0);
    await message.dispose();
  });
});

describe('spf over SMTP behind Postfix (XFORWARD ADDR is the client)', () => {
  let downstream: FakeSmtpServer;
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  let proxySilent: Awaited<ReturnType<typeof startProxy>>;
  const MESSAGE = 'From: user@example.test\r\nTo: rcpt@example.org\r\nSubject: spf\r\n\r\nhello\r\n';

  before(async () => {
    downstream = await FakeSmtpServer.start();
    const base = { mode: 'postfix', downstream: { address: `127.0.0.1:${downstream.port}` }, relay_clients: ['203.0.113.0/24'] };
    proxy = await startProxy({ ...base, dns: { servers: [dns.server], timeout: 1, tries: 1 }, plugins: [{ spf: {} }] });
    proxySilent = await startProxy({ ...base, dns: { servers: [silent.server], timeout: 1, tries: 1 }, plugins: [{ spf: {} }] });
  });
  after(async () => {
    await proxy?.close();
    await proxySilent?.close();
    await downstream?.close();
  });

  test('a forged sender is refused at MAIL with 550 5.7.23', async () => {
    const r = await sendAsPostfix(proxy.port, { addr: OTHER_IP, helo: 'bad.example.net', from: 'user@example.test', to: ['rcpt@example.org'], message: MESSAGE });
    assert.equal(r.mail.code, 550);
    assert.equal(r.mail.enhanced, '5.7.23');
    assert.match(r.mail.lines.join(' '), /SPF: 198\.51\.100\.7 is not allowed/);
  });

  test('an allowed client is relayed with Received-SPF: pass', async () => {
    const before = downstream.messages.length;
    const r = await sendAsPostfix(proxy.port, { addr: GOOD_IP, helo: 'good.example.net', from: 'user@example.test', to: ['rcpt@example.org'], message: MESSAGE });
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data.toString('latin1').replace(/\r\n(?=[ \t])/g, '');
    assert.match(got, /^Received-SPF: pass \(pq\.example\.test: domain of user@example\.test designates 192\.0\.2\.1 as permitted sender\)/);
    assert.match(got, /client-ip=192\.0\.2\.1;/);
  });

  test('a relay client is not checked (core immunity)', async () => {
    const before = downstream.messages.length;
    const r = await sendAsPostfix(proxy.port, { addr: '203.0.113.5', helo: 'inside.example.test', from: 'user@example.test', to: ['rcpt@example.org'], message: MESSAGE });
    assert.equal(r.eod?.code, 250);
    assert.doesNotMatch(downstream.messages[before]!.data.toString('latin1'), /Received-SPF/);
  });

  test('a DNS timeout defers with 450 4.7.24', async () => {
    const r = await sendAsPostfix(proxySilent.port, { addr: GOOD_IP, helo: 'good.example.net', from: 'user@example.test', to: ['rcpt@example.org'], message: MESSAGE });
    assert.equal(r.mail.code, 450);
    assert.equal(r.mail.enhanced, '4.7.24');
    assert.match(r.mail.lines.join(' '), /SPF: temporary error checking example\.test/);
  });
});
