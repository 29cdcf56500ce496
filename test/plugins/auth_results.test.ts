import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/auth_results';
import { authservIdOf, claims, formatAuthResults, pvalue } from '../../src/mailauth/auth-results';
import { authNotes } from '../../src/mailauth/notes';
import type { SpooledMessage } from '../../src/message/message';
import { spoolBuffer } from '../../src/message/spool';
import { dkimRecord, keyFiles, mailauthSign, perlDomainKeySignature, rsaKey, sendAsPostfix, txt, type TestKey } from '../helpers/dkim-keys';
import { startDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';

const unfold = (s: string): string => s.replace(/\r\n(?=[ \t])/g, '');
const messages: SpooledMessage[] = [];
after(async () => {
  for (const m of messages) await m.dispose();
});

async function run(raw: string, fill: (ctx: FakeContext) => void = () => undefined, options: object = { authserv_id: 'mx.example.org' }, env = {}) {
  const hooks = await loadPlugin(plugin, options, env);
  const message = await spoolBuffer(Buffer.from(raw));
  messages.push(message);
  const ctx = makeContext({ clientAddr: '192.0.2.1', sender: 'alice@example.test' });
  fill(ctx);
  await callHook(hooks, 'data_post', ctx, message);
  return { message, ctx, fields: message.headers.fields(), results: ctx.myResults() };
}

describe('Authentication-Results syntax', () => {
  test('one resinfo per folded line, values quoted where the grammar needs it', () => {
    const v = formatAuthResults('mx.example.org', [
      { method: 'spf', result: 'pass', comment: 'mx.example.org: domain of a@b.example designates 192.0.2.1 as permitted sender', props: [['smtp.mailfrom', 'a@b.example']] },
      { method: 'dkim', result: 'fail', comment: 'bad (nested) \\ signature', props: [['header.d', 'b.example'], ['header.b', 'ab/+cd=e'], ['header.s', '']] },
      { method: 'dmarc', result: 'fail', props: [['header.from', 'b.example']] },
    ]);
    const lines = v.split('\r\n');
    assert.equal(lines[0], 'mx.example.org;');
    assert.ok(lines.slice(1).every((l) => /^[ \t]/.test(l) && l.length <= 100), v);
    const flat = unfold(v);
    assert.match(flat, /; spf=pass \(mx\.example\.org: domain of a@b\.example designates 192\.0\.2\.1 as permitted sender\) smtp\.mailfrom=a@b\.example;/);
    assert.match(flat, /dkim=fail \(bad \\\(nested\\\) \\\\ signature\) header\.d=b\.example header\.b="ab\/\+cd=e";/, 'escaped comment, quoted b=, empty property left out');
    assert.match(flat, /; dmarc=fail header\.from=b\.example$/);
    assert.equal(formatAuthResults('mx.example.org', []), 'mx.example.org; none');
  });

  test('pvalue: addresses and domains bare, anything else quoted', () => {
    assert.equal(pvalue('user.name+tag@example.org'), 'user.name+tag@example.org');
    assert.equal(pvalue('@example.org'), '@example.org');
    assert.equal(pvalue('a b@example.org'), '"a b@example.org"');
    assert.equal(pvalue('a/b'), '"a/b"');
    assert.equal(pvalue('x"y'), '"x\\"y"');
  });

  test('the authserv-id of an existing header, comments and quotes allowed; compared case-insensitively', () => {
    assert.equal(authservIdOf('mx.example.org; spf=pass'), 'mx.example.org');
    assert.equal(authservIdOf(' (a (nested) comment) MX.Example.ORG 1; none'), 'MX.Example.ORG');
    assert.equal(authservIdOf('"mx.example.org"; none'), 'mx.example.org');
    assert.equal(authservIdOf('mx.example.org'), 'mx.example.org');
    assert.equal(authservIdOf('  '), undefined);
    assert.ok(claims(' MX.EXAMPLE.ORG ; dkim=pass', 'mx.example.org'));
    assert.ok(!claims('mx.example.org.evil; dkim=pass', 'mx.example.org'));
    assert.ok(!claims('evil.mx.example.org; dkim=pass', 'mx.example.org'));
  });
});

describe('auth_results plugin', () => {
  const FORGED = [
    'Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example',
    'Received: from somewhere',
    'Authentication-Results: other.example; spf=fail smtp.mailfrom=x@y.example',
    'Authentication-Results: (comment) MX.EXAMPLE.ORG;',
    '  dkim=pass header.d=bank.example',
    'From: alice@example.test',
    'Subject: x',
    '',
    'body',
    '',
  ].join('\r\n');

  test('removes every field claiming our authserv-id, keeps the others in place, adds ours on top', async () => {
    const r = await run(FORGED, (ctx) => {
      const n = authNotes(ctx.txn!);
      n.spf = { result: 'pass', domain: 'example.test', scope: 'mfrom', identity: 'alice@example.test', ip: '192.0.2.1', helo: 'mta.example.test' };
      n.dkim = [{ result: 'pass', domain: 'example.test', selector: 's1', algorithm: 'rsa-sha256', b: 'abcdEFGH' }];
      n.domainkeys = [{ result: 'fail', domain: 'example.test', selector: 'dk', senderHeader: 'from', sender: 'alice@example.test', comment: 'bad signature' }];
      n.arc = { result: 'pass', i: 2 };
      n.dmarc = { result: 'pass', headerFrom: 'example.test', disposition: 'none', comment: 'p=REJECT dis=NONE' };
    });
    const names = r.fields.map((f) => f.name);
    assert.deepEqual(names, ['Authentication-Results', 'Received', 'Authentication-Results', 'From', 'Subject']);
    assert.equal(r.fields[2]!.value, 'other.example; spf=fail smtp.mailfrom=x@y.example', 'the foreign one untouched');
    assert.match(r.results!.msg[0]!, /removed 2 Authentication-Results claiming mx\.example\.org/);
    const ours = unfold(r.fields[0]!.raw.toString('latin1').trimEnd());
    assert.equal(
      ours,
      'Authentication-Results: mx.example.org;' +
        ' spf=pass smtp.mailfrom=alice@example.test smtp.helo=mta.example.test;' +
        ' dkim=pass header.d=example.test header.i=@example.test header.s=s1 header.a=rsa-sha256 header.b=abcdEFGH;' +
        ' domainkeys=fail (bad signature) header.d=example.test header.from=alice@example.test;' +
        ' arc=pass (i=2);' +
        ' dmarc=pass (p=REJECT dis=NONE) header.from=example.test',
    );
  });

  test('an authenticated client gets auth=pass smtp.auth; nothing known, no header, forged ones still removed', async () => {
    const authed = await run('From: a@example.test\r\n\r\nx\r\n', (ctx) => {
      ctx.conn.auth = { user: 'alice', method: 'PLAIN', plugin: 'auth' };
      ctx.conn.relayClient = true;
    });
    assert.equal(unfold(authed.message.headers.get('Authentication-Results')!), 'mx.example.org; auth=pass smtp.auth=alice');
    const nothing = await run(FORGED);
    assert.deepEqual(nothing.message.headers.getAll('Authentication-Results'), ['other.example; spf=fail smtp.mailfrom=x@y.example']);
    assert.deepEqual(nothing.results?.skip, ['no results to report']);
  });

  test('the authserv-id defaults to the config hostname; it must be a plain name', async () => {
    const r = await run(FORGED.replace(/mx\.example\.org|MX\.EXAMPLE\.ORG/g, 'pq.example.net'), (ctx) => {
      authNotes(ctx.txn!).dmarc = { result: 'none', headerFrom: 'example.test', disposition: 'none' };
    }, {}, { hostname: 'pq.example.net' });
    const ar = r.message.headers.getAll('Authentication-Results');
    assert.deepEqual(ar, ['pq.example.net; dmarc=none header.from=example.test', 'other.example; spf=fail smtp.mailfrom=x@y.example']);
    await assert.rejects(loadPlugin(plugin, { authserv_id: 'two words' }), /host name/);
  });
});

describe('one Authentication-Results over SMTP: spf, dkim + arc, domainkeys, dmarc', () => {
  let dns: DnsServer;
  let key: TestKey;
  let downstream: FakeSmtpServer;
  let proxy: Awaited<ReturnType<typeof startProxy>>;

  before(async () => {
    key = rsaKey(1024);
    dns = await startDnsServer({
      'example.test': [
        '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"',
        '_dmarc IN TXT "v=DMARC1; p=reject"',
        txt('sel._domainkey', dkimRecord(key)),
        txt('dk._domainkey', `k=rsa; p=${key.publicB64}`),
      ].join('\n'),
    });
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'postfix',
      hostname: 'mx.example.org',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      plugins: [{ spf: {} }, { dkim: {} }, { domainkeys: {} }, { dmarc: {} }, { auth_results: {} }],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
    await dns?.stop();
  });

  test('the header carries every result, under the config hostname; a forged one is gone', async () => {
    const body = 'From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: all of them\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n';
    const dk = await perlDomainKeySignature(body, 'example.test', 'dk', keyFiles({ dk: key }).path.dk!, 'nofws');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { sealMessage } = require('mailauth') as { sealMessage(m: Buffer, s: object): Promise<Buffer> };
    const signed = await mailauthSign(dk + body, 'example.test', 'sel', key);
    const seal = await sealMessage(signed, { signingDomain: 'example.test', selector: 'sel', privateKey: key.privatePem, authResults: 'relay.example.test; spf=pass', cv: 'none' });
    const forged = 'Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example\r\n';
    const before = downstream.messages.length;
    const r = await sendAsPostfix(proxy.port, {
      addr: '192.0.2.1',
      helo: 'mta.example.test',
      from: 'alice@example.test',
      to: ['bob@example.org'],
      message: Buffer.concat([Buffer.from(forged), seal, signed]),
    });
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data.toString('latin1');
    const ar = got.match(/^Authentication-Results:.*(?:\r\n[ \t].*)*/gm)!;
    assert.equal(ar.length, 1, ar.join('\n'));
    const flat = unfold(ar[0]!);
    assert.match(flat, /^Authentication-Results: mx\.example\.org; spf=pass /);
    assert.match(flat, /; dkim=pass header\.d=example\.test /);
    assert.match(flat, /; domainkeys=pass header\.d=example\.test header\.from=alice@example\.test;/);
    assert.match(flat, /; arc=pass \(i=1 spf=pass\);/);
    assert.match(flat, /; dmarc=pass \(p=REJECT dis=NONE\) header\.from=example\.test$/);
    assert.doesNotMatch(got, /bank\.example/);
    assert.ok(got.indexOf('Authentication-Results:') < got.indexOf('Received-SPF:'), 'added on top (after Received-SPF, at data_post in config order)');
  });
});
