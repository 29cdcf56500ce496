/**
 * uribl against a real NSD: what is extracted from decoded text and HTML,
 * registrable-domain reduction, IPs, exclusions, caps, return codes, failure
 * policy; over the wire in both modes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/uribl';
import { Found, decodeEntities, extractFrom, extractFromHtml } from '../../plugins/uribl/extract';
import { DnsResolver } from '../../src/dns/resolver';
import { spoolBuffer } from '../../src/message/spool';
import { Decision, type Verdict } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import type { PluginResult } from '../../src/session/results';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

let dns: DnsServer;
let resolver: DnsResolver;
before(async () => {
  dns = await startDnsServer({
    'uribl.test': [
      'spam.example IN A 127.0.0.2',
      'spam.example IN TXT "URI listed, see https://uribl.test/spam.example"',
      'grey.example IN A 127.0.0.4',
      'cheap-pills.com IN A 127.0.0.2',
      'evil.co.uk IN A 127.0.0.2',
      '5.2.0.192 IN A 127.0.0.2',
      'hidden.example IN A 127.0.0.2',
      'qp.example IN A 127.0.0.2',
      'b64.example IN A 127.0.0.2',
      'sender.example IN A 127.0.0.2',
      'helo.example IN A 127.0.0.2',
      'fromhdr.example IN A 127.0.0.2',
      'w3.org IN A 127.0.0.2',
      'mine.example IN A 127.0.0.2',
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

function mime(headers: string[], body: string): Buffer {
  return Buffer.from([...headers, '', body].join('\r\n').replace(/\r?\n/g, '\r\n'));
}

const text = (body: string, extra: string[] = []) =>
  mime(['From: <a@good.example>', 'Subject: t', 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', ...extra], body);

/** data_post on a spooled message; the verdict and this plugin's results. */
async function check(
  hooks: PluginHooks,
  raw: Buffer,
  ctxOpts: { sender?: string; helo?: string } = {},
): Promise<{ v: Verdict; r: Readonly<PluginResult> }> {
  const msg = await spoolBuffer(raw);
  try {
    const ctx = makeContext({ name: 'uribl', sender: ctxOpts.sender ?? 'a@good.example', helo: ctxOpts.helo ?? 'mx.good.example' });
    const v = await callHook(hooks, 'data_post', ctx, msg);
    return { v, r: ctx.myResults()! };
  } finally {
    await msg.dispose();
  }
}

describe('uribl: extraction', () => {
  test('URLs, www names, mailto, addresses, protocol-relative links, entities', () => {
    const f = new Found();
    extractFrom(
      'see http://WWW.Spam.Example/path?x=1, www.other.example. mail me: mailto:x%40y@m.example or joe@addr.example; http://[2001:db8::5]/ and http://3221225989/',
      f,
      false,
    );
    extractFromHtml('<a href="//rel.example/x">x</a> <img src="http://hidden&#46;example&#x2f;i.png"> <img src="cid:image001.png@01D5A1B2.C3D4E5F0">', f, false);
    assert.deepEqual([...f.hosts], ['www.spam.example', 'www.other.example', 'm.example', 'addr.example', 'rel.example', 'hidden.example']);
    assert.deepEqual([...f.ips], ['2001:db8::5', '192.0.2.5']);
    assert.equal(decodeEntities('a&period;b&#46;c&amp;d&bogus;'), 'a.b.c&d&bogus;');
  });

  test('bare domains only under known public suffixes', () => {
    const f = new Found();
    extractFrom('Buy at cheap-pills.com now! See readme.txt and spam.test, e.g. this; sub.evil.co.uk.', f, true);
    assert.deepEqual([...f.hosts], ['cheap-pills.com', 'sub.evil.co.uk']);
    const off = new Found();
    extractFrom('Buy at cheap-pills.com now!', off, false);
    assert.deepEqual([...off.hosts], []);
  });
});

describe('uribl: verdicts', () => {
  test('a listed domain in the text part is refused after the data with the TXT reason', async () => {
    const hooks = await load({ zones: ['uribl.test'] });
    const { v, r } = await check(hooks, text('Hello,\r\nclick http://www.spam.example/offer now\r\n'));
    assert.equal(v.decision, Decision.DENY);
    assert.equal(v.enhanced, '5.7.1');
    assert.equal(v.message, 'spam.example is listed in uribl.test: URI listed, see https://uribl.test/spam.example');
    assert.deepEqual(r.fail, ['uribl.test:spam.example']);
    assert.deepEqual(r.details.checked, ['good.example', 'spam.example']);
    assert.deepEqual(r.pass, ['1 of 2 names not listed']);
  });

  test('a clean message passes', async () => {
    const { v, r } = await check(await load({ zones: ['uribl.test'] }), text('Nothing to see at http://clean.example/ today\r\n'));
    assert.equal(v.decision, Decision.DECLINED);
    assert.deepEqual(r.fail, []);
    assert.deepEqual(r.details.checked, ['good.example', 'clean.example']);
  });

  test('hosts are reduced to the registrable domain (PSL)', async () => {
    const { v } = await check(await load({ zones: ['uribl.test'] }), text('http://a.b.shop.evil.co.uk/x\r\n'));
    assert.equal(v.decision, Decision.DENY);
    assert.match(v.message!, /^evil\.co\.uk is listed/);
  });

  test('HTML only, base64-encoded, with entity-obfuscated links', async () => {
    const html = '<html><body><p>Hi</p><a href="http://hidden&#46;example/x">click</a></body></html>';
    const raw = mime(
      ['From: <a@good.example>', 'MIME-Version: 1.0', 'Content-Type: text/html; charset=utf-8', 'Content-Transfer-Encoding: base64'],
      Buffer.from(html).toString('base64').replace(/.{76}/g, '$&\r\n'),
    );
    const { v } = await check(await load({ zones: ['uribl.test'] }), raw);
    assert.equal(v.decision, Decision.DENY);
    assert.match(v.message!, /^hidden\.example is listed/);
  });

  test('multipart/alternative: quoted-printable text with a soft line break inside the URL, and the HTML part', async () => {
    const raw = mime(
      ['From: <a@good.example>', 'MIME-Version: 1.0', 'Content-Type: multipart/alternative; boundary="b1"'],
      [
        '--b1',
        'Content-Type: text/plain; charset=utf-8',
        'Content-Transfer-Encoding: quoted-printable',
        '',
        'Go to http://qp.exa=',
        'mple/deal',
        '--b1',
        'Content-Type: text/html; charset=utf-8',
        'Content-Transfer-Encoding: base64',
        '',
        Buffer.from('<a href="https://b64.example/">deal</a>').toString('base64'),
        '--b1--',
        '',
      ].join('\r\n'),
    );
    const { v, r } = await check(await load({ zones: ['uribl.test'] }), raw);
    assert.equal(v.decision, Decision.DENY);
    assert.deepEqual([...r.fail].sort(), ['uribl.test:b64.example', 'uribl.test:qp.example']);
  });

  test('IP URLs are looked up reversed (decimal forms normalised); ips: false skips them for a zone', async () => {
    const raw = text('http://3221225989/login and http://10.0.0.1/ and http://127.0.0.1/\r\n');
    const { v, r } = await check(await load({ zones: ['uribl.test'] }), raw);
    assert.equal(v.decision, Decision.DENY);
    assert.match(v.message!, /^192\.0\.2\.5 is listed in uribl\.test/);
    assert.deepEqual(r.details.checked, ['good.example', '192.0.2.5'], 'private addresses are not looked up');
    const noIps = await check(await load({ zones: [{ zone: 'uribl.test', ips: false }] }), raw);
    assert.equal(noIps.v.decision, Decision.DECLINED);
  });

  test('bare domains in the text, unless bare_domains is false', async () => {
    const raw = text('Best prices at cheap-pills.com today.\r\n');
    assert.equal((await check(await load({ zones: ['uribl.test'] }), raw)).v.decision, Decision.DENY);
    assert.equal((await check(await load({ zones: ['uribl.test'], bare_domains: false }), raw)).v.decision, Decision.DECLINED);
  });

  test('envelope sender, HELO and From header domains are checked too', async () => {
    const hooks = await load({ zones: ['uribl.test'] });
    const bySender = await check(hooks, text('hi\r\n'), { sender: 'x@mail.sender.example' });
    assert.equal(bySender.v.decision, Decision.DENY);
    assert.match(bySender.v.message!, /^sender\.example/);
    assert.equal((await check(hooks, text('hi\r\n'), { helo: 'out.helo.example' })).v.decision, Decision.DENY);
    const byFrom = await check(hooks, mime(['From: "X" <x@fromhdr.example>', 'Subject: y'], 'hi\r\n'));
    assert.equal(byFrom.v.decision, Decision.DENY);
    const off = await load({ zones: ['uribl.test'], sender: false, helo: false, from_header: false });
    assert.equal((await check(off, mime(['From: <x@fromhdr.example>'], 'hi\r\n'), { sender: 'x@sender.example', helo: 'helo.example' })).v.decision, Decision.DECLINED);
  });

  test('bitmask zones: grey (4) does not count unless asked for', async () => {
    const raw = text('http://grey.example/\r\n');
    assert.equal((await check(await load({ zones: [{ zone: 'uribl.test', bitmask: { 2: 'black', 8: 'red' } }] }), raw)).v.decision, Decision.DECLINED);
    const v = (await check(await load({ zones: [{ zone: 'uribl.test', bitmask: { 4: 'grey' }, txt: false }] }), raw)).v;
    assert.equal(v.message, 'grey.example is listed in uribl.test: grey');
  });
});

describe('uribl: limits', () => {
  test('exclusions are never looked up (default w3.org; exclude and exclude_file with subdomains and networks)', async () => {
    const raw = text('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\nhttp://shop.mine.example/ http://192.0.2.5/\r\n');
    const defaults = await check(await load({ zones: ['uribl.test'], exclude_file: undefined }), text('http://www.w3.org/TR/\r\n'));
    assert.equal(defaults.v.decision, Decision.DECLINED);
    assert.deepEqual(defaults.r.skip, ['excluded: w3.org']);
    const dir = configDir({ 'uribl-exclude': '# ours\nmine.example\n192.0.2.0/24\n' });
    const hooks = await loadPlugin(plugin, { zones: ['uribl.test'], exclude: ['w3.org'], exclude_file: 'uribl-exclude' }, { dns: resolver, configDir: dir });
    const { v, r } = await check(hooks, raw);
    assert.equal(v.decision, Decision.DECLINED);
    assert.deepEqual(r.skip, ['excluded: w3.org,mine.example,192.0.2.5']);
    assert.deepEqual(r.details.checked, ['good.example']);
  });

  test('max_lookups caps the names looked up; the rest is recorded', async () => {
    const pad = Array.from({ length: 6 }, (_, i) => `http://pad${i}.example/`).join(' ');
    const { v, r } = await check(await load({ zones: ['uribl.test'], max_lookups: 4 }), text(`${pad} http://spam.example/\r\n`));
    assert.equal(v.decision, Decision.DECLINED, 'spam.example is past the cap');
    assert.deepEqual(r.details.checked, ['good.example', 'pad0.example', 'pad1.example', 'pad2.example']);
    assert.deepEqual(r.skip, ['max_lookups: 4 of 8 not looked up (pad3.example,pad4.example,pad5.example,spam.example)']);
  });

  test('a message over max_size is not parsed (skip), but its envelope still is checked', async () => {
    const big = text(`http://spam.example/\r\n${'x'.repeat(2000)}\r\n`);
    const hooks = await load({ zones: ['uribl.test'], max_size: 1000 });
    const { v, r } = await check(hooks, big);
    assert.equal(v.decision, Decision.DECLINED);
    assert.match(r.skip.join(), /^body: \d+ bytes, over max_size 1000$/);
    assert.equal((await check(hooks, big, { sender: 'x@sender.example' })).v.decision, Decision.DENY);
  });

  test('lookup failures: recorded, skipped by default, 4xx under defer; a listing elsewhere still denies', async () => {
    const raw = text('http://spam.example/\r\n');
    const skip = await check(await load({ zones: ['broken.test'] }), raw);
    assert.equal(skip.v.decision, Decision.DECLINED);
    assert.deepEqual(skip.r.err, ['broken.test: servfail (2 lookups)']);
    assert.deepEqual(skip.r.pass, ['0 of 2 names not listed']);
    const defer = await check(await load({ zones: ['broken.test'], on_lookup_error: 'defer' }), raw);
    assert.equal(defer.v.decision, Decision.DENYSOFT);
    const both = await check(await load({ zones: ['broken.test', 'uribl.test'], on_lookup_error: 'defer' }), raw);
    assert.equal(both.v.decision, Decision.DENY);

    const silent = await silentDnsServer();
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const t = await check(await load({ zones: ['uribl.test'], on_lookup_error: 'defer' }, slow), raw);
      assert.equal(t.v.decision, Decision.DENYSOFT);
      assert.deepEqual(t.r.err, ['uribl.test: timeout (2 lookups)']);
    } finally {
      slow.close();
      await silent.stop();
    }
  });
});

describe('uribl: over the wire', () => {
  let downstream: FakeSmtpServer;
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(() => downstream.close());
  const config = (mode: 'postfix' | 'standalone') => ({
    mode,
    downstream: { address: `127.0.0.1:${downstream.port}` },
    dns: { servers: [dns.server], timeout: 1, tries: 1 },
    plugins: [{ uribl: { zones: ['uribl.test'] } }],
  });
  const spam = 'From: <a@good.example>\r\nSubject: deal\r\n\r\nClick http://www.spam.example/now\r\n';

  test('standalone mode: a listed link is refused at the end of data and not relayed; a clean one is', async () => {
    const proxy = await startProxy(config('standalone'));
    const before = downstream.messages.length;
    try {
      const t = await SmtpTalk.connect(proxy.port);
      const r = await t.send('a@good.example', ['user@example.test'], spam, 'mx.good.example');
      assert.equal(r.eod!.code, 550);
      assert.match(r.eod!.lines.join(' '), /spam\.example is listed in uribl\.test: URI listed/);
      const ok = await t.send('a@good.example', ['user@example.test'], 'From: <a@good.example>\r\nSubject: hi\r\n\r\nhttp://clean.example/\r\n', 'mx.good.example');
      assert.equal(ok.eod!.code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1);
    } finally {
      await proxy.close();
    }
  });

  test('postfix mode: the same behind XFORWARD', async () => {
    const proxy = await startProxy(config('postfix'));
    try {
      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO postfix.example.test');
      await t.cmd('XFORWARD ADDR=192.0.2.60 NAME=mx.good.example HELO=mx.good.example PROTO=ESMTP');
      assert.equal((await t.cmd('MAIL FROM:<a@good.example>')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<user@example.test>')).code, 250);
      assert.equal((await t.cmd('DATA')).code, 354);
      t.write(spam + '.\r\n');
      const eod = await t.reply();
      assert.equal(eod.code, 550);
      assert.match(eod.lines.join(' '), /spam\.example is listed in uribl\.test/);
      await t.quit();
    } finally {
      await proxy.close();
    }
  });
});
