import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import plugin from '../../plugins/dkim';
import { DnsResolver } from '../../src/dns/resolver';
import { dkimVerify } from '../../src/mailauth/lib';
import { peekAuthNotes } from '../../src/mailauth/notes';
import { mailauthResolver } from '../../src/mailauth/resolver';
import type { SpooledMessage } from '../../src/message/message';
import { spoolBuffer } from '../../src/message/spool';
import { Decision } from '../../src/plugin/decision';
import { dkimRecord, dkimpySign, dkimpyVerify, ed25519Key, keyFiles, mailauthSign, rsaKey, sendAsPostfix, txt, type TestKey } from '../helpers/dkim-keys';
import { startDnsServer, silentDnsServer, type DnsServer } from '../helpers/dns-server';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, loadPlugin, makeContext, type FakeContextOptions } from '../helpers/plugin-context';
import { startProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

const crlf = (lines: string[]): string => lines.join('\r\n');
const MSG = crlf([
  'From: Alice <alice@example.test>',
  'To: bob@example.org',
  'Subject: DKIM test',
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  'Message-ID: <dkim-1@example.test>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  '',
  'Hello Bob,',
  '',
  'a body with  two spaces and a trailing space ',
  '',
  '',
]);

let dns: DnsServer;
let resolver: DnsResolver;
let silent: { server: string; stop(): Promise<void> };
let k: Record<'rsa' | 'ed' | 'big' | 'weak' | 'arc', TestKey>;
let files: ReturnType<typeof keyFiles>;
const messages: SpooledMessage[] = [];

before(async () => {
  k = { rsa: rsaKey(1024), ed: ed25519Key(), big: rsaKey(2048), weak: rsaKey(512), arc: rsaKey(1024) };
  files = keyFiles(k);
  dns = await startDnsServer({
    'example.test': [
      txt('rsa._domainkey', dkimRecord(k.rsa)),
      txt('ed._domainkey', dkimRecord(k.ed)),
      txt('big._domainkey', dkimRecord(k.big)),
      txt('weak._domainkey', dkimRecord(k.weak)),
      txt('arc._domainkey', dkimRecord(k.arc)),
      'revoked._domainkey IN TXT "v=DKIM1; k=rsa; p="',
      txt('sub.example.test.', 'v=spf1 -all'),
    ].join('\n'),
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

async function spool(raw: string | Buffer): Promise<SpooledMessage> {
  const m = await spoolBuffer(Buffer.from(raw));
  messages.push(m);
  return m;
}

/** data_headers_end, an optional edit by "an earlier plugin", then data_post. */
async function verify(raw: string | Buffer, opts: object = {}, ctxOpts: FakeContextOptions & { auth?: string } = {}, edit?: (m: SpooledMessage) => void, res = resolver) {
  const hooks = await loadPlugin(plugin, opts, { dns: res });
  const message = await spool(raw);
  const ctx = makeContext({ clientAddr: '192.0.2.1', sender: 'alice@example.test', ...ctxOpts });
  if (ctxOpts.auth) ctx.conn.auth = { user: ctxOpts.auth, method: 'PLAIN', plugin: 'auth' };
  await callHook(hooks, 'data_headers_end', ctx, message.headers);
  edit?.(message);
  const verdict = await callHook(hooks, 'data_post', ctx, message);
  return { verdict, dkim: peekAuthNotes(ctx.txn)?.dkim, arc: peekAuthNotes(ctx.txn)?.arc, results: ctx.myResults(), ctx };
}

const tamper = (raw: Buffer, from: string, to: string): Buffer => Buffer.from(raw.toString('latin1').replace(from, to), 'latin1');

describe('dkim verify', () => {
  test('a signature made by dkimpy (RSA) passes; d=, s= and a= are recorded', async () => {
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    const r = await verify(signed);
    assert.equal(r.verdict.decision, Decision.DECLINED);
    assert.equal(r.dkim?.length, 1);
    assert.deepEqual({ ...r.dkim![0], b: undefined }, { result: 'pass', domain: 'example.test', selector: 'rsa', algorithm: 'rsa-sha256', b: undefined, comment: undefined });
    assert.equal(r.dkim![0]!.b?.length, 8);
    assert.deepEqual(r.results?.pass, ['example.test s=rsa']);
  });

  test('an Ed25519 signature passes (RFC 8463)', async () => {
    const r = await verify(await mailauthSign(MSG, 'example.test', 'ed', k.ed));
    assert.equal(r.dkim?.[0]?.result, 'pass');
    assert.equal(r.dkim?.[0]?.algorithm, 'ed25519-sha256');
  });

  test('a tampered body fails, and so does a tampered signed header', async () => {
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    const body = await verify(tamper(signed, 'Hello Bob', 'Hello Eve'));
    assert.equal(body.dkim?.[0]?.result, 'fail');
    assert.match(body.dkim![0]!.comment!, /body hash did not verify/);
    assert.deepEqual(body.results?.fail, ['fail: example.test s=rsa (body hash did not verify)']);
    const header = await verify(tamper(signed, 'Subject: DKIM test', 'Subject: DKIM test!'));
    assert.equal(header.dkim?.[0]?.result, 'fail');
    assert.match(header.dkim![0]!.comment!, /bad signature/);
  });

  test('every signature gets its own result', async () => {
    const twice = await mailauthSign(await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!), 'example.test', 'ed', k.ed);
    const r = await verify(tamper(twice, 'Subject: DKIM test', 'Subject: changed'));
    assert.deepEqual(r.dkim?.map((d) => [d.selector, d.result]).sort(), [['ed', 'fail'], ['rsa', 'fail']]);
    const ok = await verify(twice);
    assert.deepEqual(ok.dkim?.map((d) => d.result), ['pass', 'pass']);
  });

  test('no key, a revoked key: permerror; a key shorter than min_key_bits: policy', async () => {
    const missing = await verify(await mailauthSign(MSG, 'example.test', 'nothere', k.rsa));
    assert.equal(missing.dkim?.[0]?.result, 'permerror');
    const revoked = await verify(await mailauthSign(MSG, 'example.test', 'revoked', k.rsa));
    assert.equal(revoked.dkim?.[0]?.result, 'permerror');
    const weak = await verify(await mailauthSign(MSG, 'example.test', 'weak', k.weak));
    assert.equal(weak.dkim?.[0]?.result, 'policy');
    assert.equal((await verify(await mailauthSign(MSG, 'example.test', 'rsa', k.rsa), { min_key_bits: 2048 })).dkim?.[0]?.result, 'policy');
  });

  test('a key lookup that fails (SERVFAIL, timeout) is temperror, never "no key"', async () => {
    const servfail = await verify(await mailauthSign(MSG, 'broken.test', 'rsa', k.rsa));
    assert.equal(servfail.dkim?.[0]?.result, 'temperror');
    assert.deepEqual(servfail.results?.err?.length, 1);
    const slow = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 1 });
    try {
      const r = await verify(await mailauthSign(MSG, 'example.test', 'rsa', k.rsa), {}, {}, undefined, slow);
      assert.equal(r.dkim?.[0]?.result, 'temperror');
      assert.equal(r.verdict.decision, Decision.DECLINED, 'dkim itself never rejects');
    } finally {
      slow.close();
    }
  });

  test('an unsigned message: no results, "none" in the log', async () => {
    const r = await verify(MSG);
    assert.deepEqual(r.dkim, []);
    assert.deepEqual(r.results?.msg, ['none (no signature)']);
  });

  test('a signature mailauth cannot process still gets a result (neutral)', async () => {
    const odd = 'DKIM-Signature: v=1; a=rsa-sha512; c=relaxed/relaxed; d=example.test; s=rsa; h=from; bh=AAAA; b=QUJDREVGR0g=\r\n' + MSG;
    const r = await verify(odd);
    assert.equal(r.dkim?.length, 1);
    assert.equal(r.dkim![0]!.result, 'neutral');
    assert.equal(r.dkim![0]!.domain, 'example.test');
    assert.equal(r.dkim![0]!.b, 'QUJDREVG');
  });

  test('header fields other plugins change at data_post do not matter: the block is taken at data_headers_end', async () => {
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    // Appending a second Subject would make the verifier sign-check it (h= picks the last instance).
    const edit = (m: SpooledMessage): void => {
      m.headers.append('Subject', 'added by a plugin');
      m.headers.prepend('Received-SPF', 'pass');
    };
    assert.equal((await verify(signed, {}, {}, edit)).dkim?.[0]?.result, 'pass');
    // Proof the edit would break it if the verifier read the current header block.
    const m = await spool(signed);
    edit(m);
    const direct = await dkimVerify(m.stream(), { resolver: mailauthResolver(resolver) });
    assert.equal(direct.results[0]!.status.result, 'fail');
  });

  test('a body changed by an earlier plugin (a footer, a rewrite) does not matter: the body as received is verified', async () => {
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    const footer = await verify(signed, {}, {}, (m) => m.appendBody('footer added by a plugin\r\n'));
    assert.equal(footer.dkim?.[0]?.result, 'pass');
    const rewritten = await verify(signed, {}, {}, (m) => {
      m.replaceBody([Buffer.from('a new first line\r\n'), m.originalBody(), Buffer.from('-- \r\nfooter\r\n')]);
    });
    assert.equal(rewritten.dkim?.[0]?.result, 'pass');
    const relayed = Buffer.concat(await messages.at(-1)!.stream().toArray()).toString('latin1');
    assert.match(relayed, /\r\n\r\na new first line\r\nHello Bob,/, 'the change stays in the message');
    assert.match(relayed, /-- \r\nfooter\r\n$/);
    // Proof that the changed body would fail: a verifier reading the current message.
    const direct = await dkimVerify(messages.at(-1)!.stream(), { resolver: mailauthResolver(resolver) });
    assert.equal(direct.results[0]!.status.result, 'neutral', 'body hash did not verify');
  });

  test('relay and authenticated clients are not verified unless verify_relay_clients', async () => {
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    const relay = await verify(signed, {}, { relayClient: true });
    assert.equal(relay.dkim, undefined);
    assert.deepEqual(relay.results?.skip, ['verify: relay client']);
    const auth = await verify(signed, {}, { auth: 'alice' });
    assert.equal(auth.dkim, undefined);
    const outsider = await verify(signed);
    assert.equal(outsider.dkim?.[0]?.result, 'pass');
    const forced = await verify(signed, { verify_relay_clients: true }, { relayClient: true });
    assert.equal(forced.dkim?.[0]?.result, 'pass');
  });

  test('an ARC set is verified too (arc=pass), and ignored with arc: false', async () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { sealMessage } = require('mailauth') as { sealMessage(m: Buffer, s: object): Promise<Buffer> };
    const signed = await dkimpySign(MSG, 'example.test', 'rsa', files.path.rsa!);
    const seal = await sealMessage(signed, {
      signingDomain: 'example.test',
      selector: 'arc',
      privateKey: k.arc.privatePem,
      authResults: 'relay.example.test; dkim=pass header.d=example.test',
      cv: 'none',
    });
    const sealed = Buffer.concat([seal, signed]);
    const r = await verify(sealed);
    assert.equal(r.arc?.result, 'pass');
    assert.equal(r.arc?.i, 1);
    assert.equal(r.dkim?.[0]?.result, 'pass');
    assert.equal((await verify(sealed, { arc: false })).arc, undefined);
    assert.equal((await verify(tamper(sealed, 'Hello Bob', 'Hello Eve'))).arc?.result, 'fail');
    assert.equal((await verify(signed)).arc, undefined, 'no ARC set, no arc result');
  });
});

async function sign(raw: string | Buffer, signOpts: object, ctxOpts: FakeContextOptions = { relayClient: true }) {
  const hooks = await loadPlugin(plugin, { verify: false, sign: signOpts }, { dns: resolver, configDir: files.dir });
  assert.equal(hooks.data_post, undefined, 'verify: false registers no data_post');
  const message = await spool(raw);
  const ctx = makeContext({ sender: 'alice@example.test', ...ctxOpts });
  const verdict = await callHook(hooks, 'queue', ctx, message);
  const out = Buffer.concat(await message.stream().toArray());
  return { verdict, out, results: ctx.myResults(), message };
}

const signatureFields = (out: Buffer): string[] =>
  out
    .toString('latin1')
    .split('\r\n\r\n')[0]!
    .split(/\r\n(?![ \t])/)
    .filter((l) => /^DKIM-Signature:/i.test(l));

describe('dkim sign', () => {
  const BOTH = { keys: { 'example.test': [{ selector: 'big', file: 'big.pem' }, { selector: 'ed', file: 'ed.pem' }] } };

  test('a relay client\'s mail is signed with RSA and Ed25519; dkimpy verifies both', async () => {
    const r = await sign(MSG, BOTH);
    assert.equal(r.verdict.decision, Decision.DECLINED, 'the core goes on relaying');
    const sigs = signatureFields(r.out);
    assert.equal(sigs.length, 2);
    assert.match(sigs[0]!, /a=rsa-sha256/);
    assert.match(sigs[1]!, /a=ed25519-sha256/);
    assert.ok(sigs.every((s) => /d=example\.test/.test(s) && /c=relaxed\/relaxed/.test(s)));
    assert.deepEqual(await dkimpyVerify(r.out, dns.port), [true, true]);
    assert.deepEqual(r.results?.pass, ['signed d=example.test s=big (rsa-sha256)', 'signed d=example.test s=ed (ed25519-sha256)']);
  });

  test('simple/simple keeps the signature folded exactly as hashed; dkimpy verifies', async () => {
    const r = await sign(MSG, { ...BOTH, canonicalization: 'simple/simple' });
    assert.ok(signatureFields(r.out).every((s) => /c=simple\/simple/.test(s) && s.includes('\r\n ')));
    assert.deepEqual(await dkimpyVerify(r.out, dns.port), [true, true]);
  });

  test('a tampered signed message fails dkimpy (the check is real)', async () => {
    const r = await sign(MSG, BOTH);
    assert.deepEqual(await dkimpyVerify(tamper(r.out, 'Hello Bob', 'Hello Eve'), dns.port), [false, false]);
  });

  test('only relay or authenticated clients get signatures', async () => {
    const outsider = await sign(MSG, BOTH, { relayClient: false });
    assert.equal(signatureFields(outsider.out).length, 0);
    assert.equal(outsider.results, undefined);
    const hooks = await loadPlugin(plugin, { verify: false, sign: BOTH }, { dns: resolver, configDir: files.dir });
    const message = await spool(MSG);
    const ctx = makeContext({ sender: 'alice@example.test' });
    ctx.conn.auth = { user: 'alice', method: 'PLAIN', plugin: 'auth' };
    await callHook(hooks, 'queue', ctx, message);
    assert.equal(message.headers.count('DKIM-Signature'), 2);
  });

  test('the domain comes from From (default) or the envelope sender; no key, no signature', async () => {
    const other = MSG.replace('alice@example.test', 'alice@elsewhere.test');
    const byFrom = await sign(other, BOTH);
    assert.equal(signatureFields(byFrom.out).length, 0);
    assert.deepEqual(byFrom.results?.skip, ['sign: no key for elsewhere.test']);
    const bySender = await sign(other, { ...BOTH, domain_from: 'sender' });
    assert.equal(signatureFields(bySender.out).length, 2);
    const nullSender = await sign(MSG, { ...BOTH, domain_from: 'sender' }, { relayClient: true, sender: '' });
    assert.equal(signatureFields(nullSender.out).length, 0);
  });

  test('subdomains: true signs sub.example.test with example.test\'s key (relaxed-aligned)', async () => {
    const sub = MSG.replace('alice@example.test', 'alice@news.sub.example.test');
    assert.equal(signatureFields((await sign(sub, BOTH)).out).length, 0);
    const r = await sign(sub, { ...BOTH, subdomains: true });
    assert.equal(signatureFields(r.out).length, 2);
    assert.deepEqual(await dkimpyVerify(r.out, dns.port), [true, true]);
  });

  test('the header list and expiry are configurable', async () => {
    const r = await sign(MSG, { keys: { 'example.test': { selector: 'big', file: 'big.pem' } }, headers: ['From', 'Subject', 'X-Absent'], expire: 3600 });
    const sig = signatureFields(r.out)[0]!.replace(/\r\n[ \t]+/g, ' ');
    assert.match(sig, /h=Subject: ?From;/);
    const t = Number(/\bt=(\d+)/.exec(sig)![1]);
    const x = Number(/\bx=(\d+)/.exec(sig)![1]);
    assert.equal(x - t, 3600);
    assert.deepEqual(await dkimpyVerify(r.out, dns.port), [true]);
  });

  test('keys are checked at load: unreadable, not a key, RSA under 1024 bits, other key types', async () => {
    const load = (file: string) => loadPlugin(plugin, { sign: { keys: { 'example.test': { selector: 's', file } } } }, { configDir: files.dir });
    await assert.rejects(load('missing.pem'), /DKIM key .*missing\.pem: ENOENT/);
    writeFileSync(join(files.dir, 'junk.pem'), 'not a key');
    await assert.rejects(load('junk.pem'), /not a PEM private key/);
    await assert.rejects(load('weak.pem'), /RSA key of 512 bits, at least 1024/);
    writeFileSync(join(files.dir, 'ec.pem'), generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await assert.rejects(load('ec.pem'), /ec key; DKIM signs with RSA or Ed25519/);
    await assert.rejects(loadPlugin(plugin, { sign: { keys: {}, canonicalization: 'nofws' } }), /invalid option/i);
  });
});

describe('dkim over SMTP: the signer listed before addsig still signs last', () => {
  let downstream: FakeSmtpServer;
  let proxy: Awaited<ReturnType<typeof startProxy>>;

  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'postfix',
      relay_clients: ['192.0.2.0/24'],
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      plugins: [
        { 'dkim:sign': { verify: false, sign: { keys: { 'example.test': [{ selector: 'big', file: files.path.big }, { selector: 'ed', file: files.path.ed }] }, canonicalization: 'simple/simple' } } },
        { addsig: { signatures: { 'example.test': { text: 'A footer from a plugin listed after the signer' } } } },
      ],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  test('the footer is covered by both signatures (RSA and Ed25519), dkimpy verifies', async () => {
    const before = downstream.messages.length;
    const r = await sendAsPostfix(proxy.port, { addr: '192.0.2.1', helo: 'client.example.test', from: 'alice@example.test', to: ['bob@example.org'], message: MSG });
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages[before]!.data;
    assert.match(got.toString('latin1'), /A footer from a plugin listed after the signer/);
    assert.equal(signatureFields(got).length, 2);
    assert.deepEqual(await dkimpyVerify(got, dns.port), [true, true]);
    // An outside client's mail goes through unsigned (nothing to sign for).
    const outside = await sendAsPostfix(proxy.port, { addr: '198.51.100.7', helo: 'client.example.net', from: 'alice@example.test', to: ['bob@example.org'], message: MSG });
    assert.equal(outside.eod?.code, 250);
    assert.equal(signatureFields(downstream.messages.at(-1)!.data).length, 0);
  });
});

describe('dkim over SMTP (standalone): verify first, addsig, sign last', () => {
  let downstream: FakeSmtpServer;
  let proxy: Awaited<ReturnType<typeof startProxy>>;

  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'standalone',
      relay_clients: ['127.0.0.1'],
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      plugins: [
        { dkim: {} },
        { addsig: { signatures: { 'example.test': { text: 'Example Test Ltd. -- signed after this footer' } } } },
        { 'dkim:sign': { verify: false, sign: { keys: { 'example.test': [{ selector: 'big', file: files.path.big }, { selector: 'ed', file: files.path.ed }] } } } },
      ],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  test('the relayed message carries the footer, is signed over it, and our Received (added after signing) does not break it', async () => {
    const t = await SmtpTalk.connect(proxy.port);
    const r = await t.send('alice@example.test', ['bob@example.org'], MSG);
    await t.quit();
    assert.equal(r.eod?.code, 250);
    const got = downstream.messages.at(-1)!.data;
    const text = got.toString('latin1');
    assert.match(text, /^Received: from client\.example\.net .* by pq\.example\.test \(prequeue\)/);
    assert.ok(text.indexOf('Received:') < text.indexOf('DKIM-Signature:'), 'Received on top of the signatures');
    assert.match(text, /Example Test Ltd\. -- signed after this footer/);
    assert.deepEqual(await dkimpyVerify(got, dns.port), [true, true]);
    const results = proxy.log.lines.filter((l) => l.msg === 'transaction').at(-1)?.meta.results as Record<string, string> | undefined;
    assert.match(results?.['dkim:sign'] ?? '', /signed d=example\.test s=big/);
    assert.match(results?.dkim ?? '', /skip=verify: relay client/);
  });
});
