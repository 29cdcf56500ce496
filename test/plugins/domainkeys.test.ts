/**
 * DomainKeys verification against signatures made by an independent
 * implementation: Mail::DKIM (Debian's libmail-dkim-perl, dkimproxy-sign
 * --type=domainkeys), keys made here and published in NSD.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/domainkeys';
import { DnsResolver } from '../../src/dns/resolver';
import { canonHeader, DkBodyCanon } from '../../src/mailauth/domainkeys';
import { peekAuthNotes } from '../../src/mailauth/notes';
import { parseHeaderBlock } from '../../src/message/headers';
import type { SpooledMessage } from '../../src/message/message';
import { spoolBuffer } from '../../src/message/spool';
import { Decision } from '../../src/plugin/decision';
import { keyFiles, perlDomainKeySignature, rsaKey, txt, type TestKey } from '../helpers/dkim-keys';
import { startDnsServer, silentDnsServer, type DnsServer } from '../helpers/dns-server';
import { callHook, loadPlugin, makeContext } from '../helpers/plugin-context';

const crlf = (lines: string[]): string => lines.join('\r\n');
const MSG = crlf([
  'From: Alice <alice@example.test>',
  'To: bob@example.org',
  'Subject: hello  there',
  '\tand  more',
  'X-Unsigned: Mail::DKIM signs only the usual fields',
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  '',
  'Body line  with spaces\t and a tab',
  '',
  'last line',
  '',
  '',
  '',
]);

let dns: DnsServer;
let resolver: DnsResolver;
let silent: { server: string; stop(): Promise<void> };
let key: TestKey;
let files: ReturnType<typeof keyFiles>;
const messages: SpooledMessage[] = [];

before(async () => {
  key = rsaKey(1024);
  files = keyFiles({ dk: key });
  const p = key.publicB64;
  dns = await startDnsServer({
    'example.test': [
      txt('dk._domainkey', `k=rsa; p=${p}`),
      txt('testing._domainkey', `t=y; k=rsa; p=${p}`),
      txt('gran._domainkey', `g=alice; k=rsa; p=${p}`),
      'revoked._domainkey IN TXT "k=rsa; p="',
      txt('dsa._domainkey', `k=dsa; p=${p}`),
    ].join('\n'),
    'other.test': txt('dk._domainkey', `k=rsa; p=${p}`),
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

async function signed(message: string, method: 'simple' | 'nofws', domain = 'example.test', selector = 'dk'): Promise<string> {
  return (await perlDomainKeySignature(message, domain, selector, files.path.dk!, method)) + message;
}

async function verify(raw: string | Buffer, res = resolver, memoryThreshold?: number, change?: (m: SpooledMessage) => void) {
  const hooks = await loadPlugin(plugin, {}, { dns: res });
  const message = await spoolBuffer(typeof raw === 'string' ? Buffer.from(raw, 'latin1') : raw, memoryThreshold === undefined ? {} : { memoryThreshold });
  messages.push(message);
  const ctx = makeContext({ sender: 'alice@example.test' });
  await callHook(hooks, 'data_headers_end', ctx, message.headers);
  change?.(message);
  const verdict = await callHook(hooks, 'data_post', ctx, message);
  return { verdict, dk: peekAuthNotes(ctx.txn)?.domainkeys, results: ctx.myResults(), message };
}

const edit = (raw: string, from: string | RegExp, to: string): string => {
  const out = raw.replace(from, to);
  assert.notEqual(out, raw, `edit ${from} applies`);
  return out;
};

describe('domainkeys: signatures by Mail::DKIM', () => {
  for (const method of ['simple', 'nofws'] as const) {
    test(`c=${method}: a good signature passes, with the sending address recorded`, async () => {
      const r = await verify(await signed(MSG, method));
      assert.equal(r.verdict.decision, Decision.DECLINED);
      assert.deepEqual(r.dk, [{ result: 'pass', domain: 'example.test', selector: 'dk', senderHeader: 'from', sender: 'alice@example.test' }]);
      assert.deepEqual(r.results?.pass, ['example.test s=dk']);
    });

    test(`c=${method}: a changed body fails; added trailing empty lines do not matter`, async () => {
      const raw = await signed(MSG, method);
      assert.equal((await verify(edit(raw, 'last line', 'last line!'))).dk?.[0]?.result, 'fail');
      assert.equal((await verify(raw + '\r\n\r\n')).dk?.[0]?.result, 'pass');
    });

    test(`c=${method}: only fields after the signature (and in h=) are covered`, async () => {
      const raw = await signed(MSG, method);
      assert.equal((await verify('X-Above: added later\r\n' + raw)).dk?.[0]?.result, 'pass', 'above the signature');
      assert.equal((await verify(edit(raw, '\r\nDate:', '\r\nX-Unlisted: added\r\nDate:'))).dk?.[0]?.result, 'pass', 'not in h=');
      assert.equal((await verify(edit(raw, '\r\nDate:', '\r\nTo: eve@example.org\r\nDate:'))).dk?.[0]?.result, 'fail', 'a second To is covered');
    });
  }

  test('nofws ignores whitespace changes that break simple', async () => {
    const respace = (raw: string) => edit(edit(raw, 'hello  there', 'hello there'), 'Body line  with', 'Body line with');
    assert.equal((await verify(respace(await signed(MSG, 'nofws')))).dk?.[0]?.result, 'pass');
    assert.equal((await verify(respace(await signed(MSG, 'simple')))).dk?.[0]?.result, 'fail');
  });

  test('an unfolded header breaks simple only', async () => {
    const unfold = (raw: string) => edit(raw, 'there\r\n\tand', 'there\tand');
    assert.equal((await verify(unfold(await signed(MSG, 'nofws')))).dk?.[0]?.result, 'pass');
    assert.equal((await verify(unfold(await signed(MSG, 'simple')))).dk?.[0]?.result, 'fail');
  });

  test('a body an earlier plugin changed (addsig\'s footer) is verified as received', async () => {
    const raw = await signed(MSG, 'simple');
    const r = await verify(raw, resolver, undefined, (m) => m.appendBody('-- \r\nfooter\r\n'));
    assert.equal(r.dk?.[0]?.result, 'pass');
    assert.match(Buffer.concat(await r.message.stream().toArray()).toString('latin1'), /-- \r\nfooter\r\n$/, 'the footer stays');
  });

  test('a big, 8-bit message spooled to a file verifies as well', async () => {
    const body = Array.from({ length: 4000 }, (_, i) => `line ${i} Grüße  \t`).join('\r\n');
    const big = MSG.replace('last line', body + '\r\nlast line');
    const raw = await signed(big, 'nofws');
    const r = await verify(Buffer.from(raw, 'utf8'), resolver, 1024);
    assert.ok(r.message.tempPath, 'file-backed spool');
    assert.equal(r.dk?.[0]?.result, 'pass');
  });
});

describe('domainkeys: sender, keys and lookups', () => {
  test('d= must be the sending domain or a parent of it; Sender comes before From', async () => {
    const foreign = await verify(await signed(MSG, 'simple', 'other.test'));
    assert.equal(foreign.dk?.[0]?.result, 'fail');
    assert.match(foreign.dk![0]!.comment!, /d=other\.test is not the sending domain example\.test/);
    const viaSender = MSG.replace('From: Alice <alice@example.test>', 'From: Alice <alice@elsewhere.example>\r\nSender: list@lists.example.test');
    const r = await verify(await signed(viaSender, 'simple'));
    assert.equal(r.dk?.[0]?.result, 'pass');
    assert.equal(r.dk?.[0]?.senderHeader, 'sender');
    assert.equal(r.dk?.[0]?.sender, 'list@lists.example.test');
  });

  test('no key, a revoked key, a non-RSA key: permerror', async () => {
    assert.equal((await verify(await signed(MSG, 'simple', 'example.test', 'nothere'))).dk?.[0]?.result, 'permerror');
    assert.equal((await verify(await signed(MSG, 'simple', 'example.test', 'revoked'))).dk?.[0]?.comment, 'key revoked');
    assert.equal((await verify(await signed(MSG, 'simple', 'example.test', 'dsa'))).dk?.[0]?.result, 'permerror');
  });

  test('a failed key lookup (SERVFAIL, timeout) is temperror', async () => {
    const broken = MSG.replace('alice@example.test', 'alice@broken.test');
    assert.equal((await verify(await signed(broken, 'simple', 'broken.test'))).dk?.[0]?.result, 'temperror');
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const r = await verify(await signed(MSG, 'simple'), slow);
      assert.equal(r.dk?.[0]?.result, 'temperror');
      assert.deepEqual(r.results?.err, ['temperror: example.test s=dk (key lookup failed (timeout))']);
    } finally {
      slow.close();
    }
  });

  test('a key in testing mode (t=y) turns a failure into neutral', async () => {
    const raw = await signed(MSG, 'simple', 'example.test', 'testing');
    assert.equal((await verify(raw)).dk?.[0]?.result, 'pass');
    assert.equal((await verify(edit(raw, 'last line', 'other line'))).dk?.[0]?.result, 'neutral');
  });

  test('key granularity g= must match the sender\'s local part', async () => {
    assert.equal((await verify(await signed(MSG, 'simple', 'example.test', 'gran'))).dk?.[0]?.result, 'pass');
    const bob = MSG.replace('alice@example.test', 'bob@example.test');
    assert.equal((await verify(await signed(bob, 'simple', 'example.test', 'gran'))).dk?.[0]?.result, 'fail');
  });

  test('unsupported or malformed signatures are neutral; no signature is none', async () => {
    const sha256 = 'DomainKey-Signature: a=rsa-sha256; c=simple; d=example.test; s=dk; b=AAAA\r\n' + MSG;
    assert.equal((await verify(sha256)).dk?.[0]?.result, 'neutral');
    const noSelector = 'DomainKey-Signature: a=rsa-sha1; d=example.test; b=AAAA\r\n' + MSG;
    assert.match((await verify(noSelector)).dk?.[0]?.comment ?? '', /bad format/);
    const none = await verify(MSG);
    assert.deepEqual(none.dk, []);
    assert.deepEqual(none.results?.msg, ['none (no signature)']);
  });
});

describe('domainkeys: canonicalization units', () => {
  const canon = (c: 'simple' | 'nofws', pieces: string[]): string => {
    const b = new DkBodyCanon(c);
    const out: Buffer[] = [];
    for (const p of pieces) out.push(...b.push(Buffer.from(p)));
    out.push(...b.end());
    return Buffer.concat(out).toString();
  };

  test('body: trailing empty lines dropped, inner ones kept, whatever the chunking', () => {
    const body = '\r\na b\r\n\r\n \r\nc\t\r\n\r\n\r\n';
    assert.equal(canon('simple', [body]), '\r\na b\r\n\r\n \r\nc\t\r\n');
    assert.equal(canon('nofws', [body]), '\r\nab\r\n\r\n\r\nc\r\n');
    const bytes = [...body];
    assert.equal(canon('simple', bytes), canon('simple', [body]));
    assert.equal(canon('nofws', bytes), canon('nofws', [body]));
    assert.equal(canon('simple', ['\r\n\r\n\r\n']), '', 'a body of empty lines drops the separator too');
    assert.equal(canon('simple', ['\r\nno final newline']), '\r\nno final newline\r\n');
  });

  test('headers: simple keeps the bytes, nofws removes all whitespace and line breaks', () => {
    const { headers } = parseHeaderBlock(Buffer.from('Subject:  a  b\r\n\tc\r\n\r\n'));
    const raw = headers.fields()[0]!.raw;
    assert.equal(canonHeader(raw, 'simple').toString(), 'Subject:  a  b\r\n\tc\r\n');
    assert.equal(canonHeader(raw, 'nofws').toString(), 'Subject:abc\r\n');
  });
});
