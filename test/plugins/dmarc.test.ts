import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import plugin, { type ReportLine } from '../../plugins/dmarc';
import { DnsResolver } from '../../src/dns/resolver';
import { aligned, authorDomains, organizationalDomain } from '../../src/mailauth/domains';
import { authNotes, peekAuthNotes, type DkimNote, type SpfNote } from '../../src/mailauth/notes';
import type { SpooledMessage } from '../../src/message/message';
import { spoolBuffer } from '../../src/message/spool';
import { Decision } from '../../src/plugin/decision';
import { dkimRecord, mailauthSign, rsaKey, sendAsPostfix, txt, type TestKey } from '../helpers/dkim-keys';
import { startDnsServer, silentDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';

const IP = '192.0.2.1';
let dns: DnsServer;
let resolver: DnsResolver;
let silent: { server: string; stop(): Promise<void> };
let key: TestKey;
const messages: SpooledMessage[] = [];

before(async () => {
  key = rsaKey(1024);
  const dkimKey = (name: string) => txt(name, dkimRecord(key));
  dns = await startDnsServer({
    'example.test': ['_dmarc IN TXT "v=DMARC1; p=reject"', dkimKey('sel._domainkey'), '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"'].join('\n'),
    'other.test': [dkimKey('sel._domainkey'), '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"'].join('\n'),
    'strict.test': ['_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"', dkimKey('sel._domainkey.mail'), 'mail IN TXT "v=spf1 ip4:192.0.2.1 -all"'].join('\n'),
    'relaxed.test': ['_dmarc IN TXT "v=DMARC1; p=quarantine"', dkimKey('sel._domainkey.mail'), 'mail IN TXT "v=spf1 ip4:192.0.2.1 -all"'].join('\n'),
    'org.test': '_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine"',
    'pct.test': '_dmarc IN TXT "v=DMARC1; p=reject; pct=0"',
    'monitor.test': '_dmarc IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@monitor.test"',
    'invalid.test': ['_dmarc IN TXT "v=DMARC1; p=bogus"', '_dmarc.rua IN TXT "v=DMARC1; p=bogus; rua=mailto:x@invalid.test"'].join('\n'),
    'nodmarc.test': 'www IN A 192.0.2.80',
    'broken.test': null,
  });
  resolver = new DnsResolver({ servers: [dns.server], timeout: 500, tries: 1 });
  silent = await silentDnsServer();
});
after(async () => {
  for (const m of messages) await m.dispose();
  resolver?.close();
  await dns?.stop();
  await silent?.stop();
});

const dkimPass = (domain: string): DkimNote => ({ result: 'pass', domain, selector: 'sel', algorithm: 'rsa-sha256' });
const spfPass = (domain: string): SpfNote => ({ result: 'pass', domain, scope: 'mfrom', identity: `bounce@${domain}`, ip: IP });

interface Given {
  dkim?: DkimNote[];
  spf?: SpfNote;
  headers?: string;
}

async function evaluate(from: string, given: Given, opts: object = {}, res = resolver) {
  const hooks = await loadPlugin(plugin, opts, { dns: res });
  const message = await spoolBuffer(Buffer.from(`${given.headers ?? ''}From: ${from}\r\nSubject: x\r\n\r\nbody\r\n`));
  messages.push(message);
  const ctx = makeContext({ clientAddr: IP, helo: 'mta.example.net', sender: given.spf?.identity ?? 'bounce@nodmarc.test' });
  const notes = authNotes(ctx.txn!);
  if (given.dkim) notes.dkim = given.dkim;
  if (given.spf) notes.spf = given.spf;
  const verdict = await callHook(hooks, 'data_post', ctx, message);
  return { verdict, dmarc: peekAuthNotes(ctx.txn)?.dmarc, results: ctx.myResults(), message, ctx };
}

describe('dmarc: alignment', () => {
  test('an aligned DKIM pass passes a p=reject domain', async () => {
    const r = await evaluate('alice@example.test', { dkim: [dkimPass('example.test')], spf: spfPass('other.test') });
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.dmarc?.result, 'pass');
    assert.equal(r.dmarc?.alignedDkim, 'example.test');
    assert.equal(r.dmarc?.disposition, 'none');
    assert.equal(r.message.headers.count('X-DMARC-Quarantine'), 0);
  });

  test('an aligned SPF pass is enough', async () => {
    const r = await evaluate('alice@example.test', { dkim: [], spf: spfPass('example.test') });
    assert.equal(r.dmarc?.result, 'pass');
    assert.equal(r.dmarc?.alignedSpf, 'example.test');
  });

  test('an unaligned From fails even with passing SPF and DKIM for another domain', async () => {
    const r = await evaluate('alice@example.test', { dkim: [dkimPass('other.test')], spf: spfPass('other.test') }, { reject_on_reject: true });
    assert.equal(r.dmarc?.result, 'fail');
    assert.equal(r.dmarc?.policy, 'reject');
    assert.equal(r.verdict.decision, Decision.DENY);
    assert.equal(r.verdict.enhanced, '5.7.1');
    assert.match(r.verdict.message!, /example\.test asks to reject/);
  });

  test('without reject_on_reject, p=reject is quarantined: header, notes, reason', async () => {
    const r = await evaluate('alice@example.test', { dkim: [dkimPass('other.test')], spf: spfPass('other.test') });
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.dmarc?.disposition, 'quarantine');
    assert.match(r.dmarc!.comment!, /dis=QUARANTINE local_policy/);
    assert.equal(r.message.headers.get('X-DMARC-Quarantine'), 'yes (DMARC policy of example.test: reject)');
  });

  test('strict alignment (adkim=s, aspf=s) needs the exact domain; relaxed takes the organisational domain', async () => {
    const strict = await evaluate('alice@strict.test', { dkim: [dkimPass('mail.strict.test')], spf: spfPass('mail.strict.test') });
    assert.equal(strict.dmarc?.result, 'fail');
    const exact = await evaluate('alice@strict.test', { dkim: [dkimPass('strict.test')], spf: spfPass('mail.strict.test') });
    assert.equal(exact.dmarc?.result, 'pass');
    const relaxed = await evaluate('alice@relaxed.test', { dkim: [dkimPass('mail.relaxed.test')], spf: spfPass('other.test') });
    assert.equal(relaxed.dmarc?.result, 'pass');
  });

  test('helpers: organisational domains from the PSL, alignment, author domains', () => {
    assert.equal(organizationalDomain('a.b.example.co.uk'), 'example.co.uk');
    assert.equal(organizationalDomain('mail.example.test'), 'example.test');
    assert.ok(aligned('example.co.uk', 'mail.example.co.uk', false));
    assert.ok(!aligned('example.co.uk', 'other.co.uk', false), 'a public suffix is no common organisation');
    assert.ok(!aligned('example.test', 'mail.example.test', true));
    assert.ok(aligned('EXAMPLE.test.', 'example.TEST', true));
    assert.deepEqual(authorDomains(['"A, B" <a@x.test>, c@Y.test', 'd@x.test']).domains, ['x.test', 'y.test']);
  });
});

describe('dmarc: policy', () => {
  const unaligned = { dkim: [dkimPass('other.test')], spf: spfPass('other.test') };

  test('sp= applies to a subdomain without its own record', async () => {
    const r = await evaluate('alice@news.org.test', unaligned, { reject_on_reject: true });
    assert.equal(r.dmarc?.policy, 'quarantine');
    assert.equal(r.dmarc?.policyDomain, 'org.test');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.dmarc?.disposition, 'quarantine');
    const own = await evaluate('alice@org.test', unaligned, { reject_on_reject: true });
    assert.equal(own.verdict.decision, Decision.DENY, 'p= for the domain itself');
  });

  test('pct=0: nothing sampled, reject becomes quarantine', async () => {
    const r = await evaluate('alice@pct.test', unaligned, { reject_on_reject: true });
    assert.equal(r.dmarc?.pct, 0);
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.dmarc?.disposition, 'quarantine');
    assert.match(r.dmarc!.comment!, /sampled_out/);
  });

  test('p=none: a fail is only recorded', async () => {
    const r = await evaluate('alice@monitor.test', unaligned, { reject_on_reject: true });
    assert.equal(r.dmarc?.result, 'fail');
    assert.equal(r.dmarc?.disposition, 'none');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.message.headers.count('X-DMARC-Quarantine'), 0);
  });

  test('no record, or one without a valid p=, is none; with rua= it counts as p=none', async () => {
    assert.equal((await evaluate('alice@nodmarc.test', unaligned)).dmarc?.result, 'none');
    const bad = await evaluate('alice@invalid.test', unaligned);
    assert.equal(bad.dmarc?.result, 'none');
    assert.equal(bad.dmarc?.comment, 'invalid DMARC record');
    const rua = await evaluate('alice@rua.invalid.test', unaligned);
    assert.equal(rua.dmarc?.result, 'fail');
    assert.equal(rua.dmarc?.policy, 'none');
  });

  test('incoming copies of the quarantine header are removed; quarantine_header: false adds none', async () => {
    const r = await evaluate('alice@example.test', { dkim: [dkimPass('example.test')], headers: 'X-DMARC-Quarantine: yes (forged)\r\n' });
    assert.equal(r.message.headers.count('X-DMARC-Quarantine'), 0);
    const off = await evaluate('alice@example.test', unaligned, { quarantine_header: false });
    assert.equal(off.dmarc?.disposition, 'quarantine');
    assert.equal(off.message.headers.count('X-DMARC-Quarantine'), 0);
  });
});

describe('dmarc: errors', () => {
  test('a failing record lookup is temperror: accepted by default, deferred with defer_on_temperror', async () => {
    const r = await evaluate('alice@broken.test', { dkim: [] });
    assert.equal(r.dmarc?.result, 'temperror');
    assert.equal(r.verdict.decision, Decision.DECLINED);
    const d = await evaluate('alice@broken.test', { dkim: [] }, { defer_on_temperror: true });
    assert.equal(d.verdict.decision, Decision.DENYSOFT);
  });

  test('a DNS timeout is temperror and deferred when configured', async () => {
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const r = await evaluate('alice@example.test', { dkim: [] }, { defer_on_temperror: true }, slow);
      assert.equal(r.dmarc?.result, 'temperror');
      assert.equal(r.verdict.decision, Decision.DENYSOFT);
    } finally {
      slow.close();
    }
  });

  test('an aligned DKIM temperror makes a would-be fail a temperror', async () => {
    const r = await evaluate('alice@example.test', { dkim: [{ ...dkimPass('example.test'), result: 'temperror' }], spf: spfPass('other.test') }, { reject_on_reject: true });
    assert.equal(r.dmarc?.result, 'temperror');
    assert.equal(r.verdict.decision, Decision.DECLINED);
  });

  test('no From domain, or several: permerror, nothing enforced', async () => {
    const many = await evaluate('a@example.test, b@other.test', { dkim: [] }, { reject_on_reject: true });
    assert.equal(many.dmarc?.result, 'permerror');
    assert.equal(many.verdict.decision, Decision.DECLINED);
    const none = await evaluate('undisclosed-recipients:;', { dkim: [] });
    assert.equal(none.dmarc?.result, 'permerror');
  });

  test('without the spf plugin dmarc checks SPF itself; without dkim results it warns', async () => {
    const r = await evaluate('alice@example.test', {}, {});
    assert.equal(r.dmarc?.result, 'fail', 'bounce@nodmarc.test has no SPF record');
    assert.ok(r.ctx.log.entries.some((e) => e.level === 'warn' && /is dkim listed before dmarc/.test(e.msg)));
    const hooks = await loadPlugin(plugin, {}, { dns: resolver });
    const message = await spoolBuffer(Buffer.from('From: alice@example.test\r\n\r\nx\r\n'));
    messages.push(message);
    const ctx = makeContext({ clientAddr: IP, sender: 'bounce@example.test' });
    await callHook(hooks, 'data_post', ctx, message);
    assert.equal(peekAuthNotes(ctx.txn)?.dmarc?.result, 'pass');
    assert.equal(peekAuthNotes(ctx.txn)?.dmarc?.alignedSpf, 'example.test');
  });
});

describe('dmarc: aggregate report data', () => {
  test('one JSON line per message with a DMARC record', async () => {
    const dir = configDir({});
    const opts = { report_file: 'dmarc.jsonl' };
    // report_file is relative to the config dir.
    const hooks = await loadPlugin(plugin, opts, { dns: resolver, configDir: dir });
    for (const [from, dkim] of [
      ['alice@example.test', [dkimPass('example.test')]],
      ['alice@example.test', [dkimPass('other.test')]],
      ['alice@nodmarc.test', []],
    ] as const) {
      const message = await spoolBuffer(Buffer.from(`From: ${from}\r\n\r\nx\r\n`));
      messages.push(message);
      const ctx = makeContext({ clientAddr: IP, sender: 'bounce@other.test' });
      authNotes(ctx.txn!).dkim = [...dkim];
      authNotes(ctx.txn!).spf = spfPass('other.test');
      await callHook(hooks, 'data_post', ctx, message);
    }
    const lines = readFileSync(join(dir, 'dmarc.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as ReportLine);
    assert.equal(lines.length, 2, 'nothing for a domain without a record');
    assert.equal(lines[0]!.dmarc, 'pass');
    assert.deepEqual(lines[0]!.policy_evaluated, { disposition: 'none', dkim: 'pass', spf: 'fail' });
    assert.equal(lines[1]!.dmarc, 'fail');
    assert.deepEqual(lines[1]!.policy_evaluated, { disposition: 'quarantine', dkim: 'fail', spf: 'fail', reason: 'local_policy' });
    assert.deepEqual(lines[1]!.policy_published, { domain: 'example.test', p: 'reject', sp: 'reject', pct: 100, adkim: 'r', aspf: 'r' });
    assert.equal(lines[1]!.source_ip, IP);
    assert.equal(lines[1]!.header_from, 'example.test');
    assert.equal(lines[1]!.envelope_from, 'other.test');
    assert.deepEqual(lines[1]!.auth_results, { dkim: [{ domain: 'other.test', selector: 'sel', result: 'pass' }], spf: { domain: 'other.test', scope: 'mfrom', result: 'pass' } });
    assert.ok(!Number.isNaN(Date.parse(lines[0]!.time)));
  });
});

describe('dmarc over SMTP behind Postfix: spf, dkim, dmarc, auth_results', () => {
  let downstream: FakeSmtpServer;
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  const base = (from: string) =>
    `From: ${from}\r\nTo: bob@example.org\r\nSubject: dmarc over smtp\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${Math.random()}@x>\r\n\r\nHello.\r\n`;

  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'postfix',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      plugins: [{ spf: {} }, { dkim: {} }, { dmarc: { reject_on_reject: true } }, { auth_results: { authserv_id: 'mx.example.org' } }],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  const send = (message: Buffer) => sendAsPostfix(proxy.port, { addr: IP, helo: 'mta.other.test', from: 'bounce@other.test', to: ['bob@example.org'], message });

  test('p=reject: a From not aligned with the passing SPF/DKIM domain is refused with 550 5.7.1, nothing relayed', async () => {
    const before = downstream.messages.length;
    const r = await send(await mailauthSign(base('Alice <alice@example.test>'), 'other.test', 'sel', key));
    assert.equal(r.eod?.code, 550);
    assert.equal(r.eod?.enhanced, '5.7.1');
    assert.match(r.eod!.lines.join(' '), /example\.test asks to reject/);
    assert.equal(downstream.messages.length, before);
  });

  test('an aligned signature passes: relayed with one Authentication-Results header', async () => {
    const before = downstream.messages.length;
    const r = await send(await mailauthSign(base('Alice <alice@example.test>'), 'example.test', 'sel', key));
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data.toString('latin1');
    const ar = got.match(/^Authentication-Results:.*(?:\r\n[ \t].*)*/gm)!;
    assert.equal(ar.length, 1);
    const flat = ar[0]!.replace(/\r\n[ \t]+/g, ' ');
    assert.match(flat, /^Authentication-Results: mx\.example\.org; spf=pass .*smtp\.mailfrom=bounce@other\.test/);
    assert.match(flat, /; dkim=pass header\.d=example\.test header\.i=@example\.test header\.s=sel header\.a=rsa-sha256 header\.b="?[^ ;]{8}"?;/);
    assert.match(flat, /; dmarc=pass \(p=REJECT dis=NONE\) header\.from=example\.test$/);
  });

  test('a tampered body breaks the aligned signature: DMARC fails and the message is refused', async () => {
    const signed = await mailauthSign(base('Alice <alice@example.test>'), 'example.test', 'sel', key);
    const r = await send(Buffer.from(signed.toString('latin1').replace('Hello.', 'Hello!'), 'latin1'));
    assert.equal(r.eod?.code, 550);
  });

  test('p=quarantine: an unaligned message is relayed with the quarantine header and dmarc=fail', async () => {
    const before = downstream.messages.length;
    const forged = 'X-DMARC-Quarantine: no (forged by the sender)\r\n' + base('Alice <alice@relaxed.test>');
    const r = await send(await mailauthSign(forged, 'other.test', 'sel', key));
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data.toString('latin1');
    assert.deepEqual(got.match(/^X-DMARC-Quarantine:.*$/gm), ['X-DMARC-Quarantine: yes (DMARC policy of relaxed.test: quarantine)']);
    const flat = got.match(/^Authentication-Results:.*(?:\r\n[ \t].*)*/m)![0].replace(/\r\n[ \t]+/g, ' ');
    assert.match(flat, /; dkim=pass header\.d=other\.test /);
    assert.match(flat, /; dmarc=fail \(p=QUARANTINE dis=QUARANTINE\) header\.from=relaxed\.test$/);
  });
});

describe('dmarc over SMTP when DNS times out', () => {
  let downstream: FakeSmtpServer;
  let deferring: Awaited<ReturnType<typeof startProxy>>;
  let accepting: Awaited<ReturnType<typeof startProxy>>;
  const MESSAGE = 'From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: timeout\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n';

  before(async () => {
    downstream = await FakeSmtpServer.start();
    const config = (dmarc: object) => ({
      mode: 'postfix',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [silent.server], timeout: 1, tries: 1 },
      // SPF's own temperror deferral is tested in spf.test.ts: here it lets the message reach DATA.
      plugins: [{ spf: { actions: { temperror: 'accept' } } }, { dkim: {} }, { dmarc: dmarc }, { auth_results: { authserv_id: 'mx.example.org' } }],
    });
    deferring = await startProxy(config({ reject_on_reject: true, defer_on_temperror: true }));
    accepting = await startProxy(config({ reject_on_reject: true }));
  });
  after(async () => {
    await deferring?.close();
    await accepting?.close();
    await downstream?.close();
  });

  const send = (port: number) =>
    (async () => sendAsPostfix(port, { addr: IP, helo: 'mta.example.test', from: 'alice@example.test', to: ['bob@example.org'], message: await mailauthSign(MESSAGE, 'example.test', 'sel', key) }))();

  test('defer_on_temperror: 451 4.7.0 at the end of data, nothing relayed', async () => {
    const before = downstream.messages.length;
    const r = await send(deferring.port);
    assert.equal(r.mail.code, 250);
    assert.equal(r.eod?.code, 451);
    assert.equal(r.eod?.enhanced, '4.7.0');
    assert.match(r.eod!.lines.join(' '), /DMARC: temporary error looking up the policy of example\.test/);
    assert.equal(downstream.messages.length, before);
  });

  test('without it: relayed, every result temperror in Authentication-Results', async () => {
    const before = downstream.messages.length;
    const r = await send(accepting.port);
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data.toString('latin1');
    const flat = got.match(/^Authentication-Results:.*(?:\r\n[ \t].*)*/m)![0].replace(/\r\n[ \t]+/g, ' ');
    assert.match(flat, /^Authentication-Results: mx\.example\.org; spf=temperror /);
    assert.match(flat, /; dkim=temperror .*header\.d=example\.test /);
    assert.match(flat, /; dmarc=temperror .*header\.from=example\.test$/);
  });
});
