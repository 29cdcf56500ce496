/**
 * DKIM end to end behind a real, private Postfix:
 * swaks -> public smtpd -> smtpd_proxy_filter -> prequeue (dkim verify, addsig,
 * dkim:sign, auth_results) -> after-filter smtpd -> maildir,
 * keys published in a private NSD. The delivered files are checked with dkimpy
 * (python3-dkim), an implementation independent of prequeue and mailauth.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dkimRecord, dkimpySign, dkimpyVerify, ed25519Key, keyFiles, rsaKey, txt, type TestKey } from '../helpers/dkim-keys';
import { startDnsServer, type DnsServer } from '../helpers/dns-server';
import { createPostfix, freePort, swaks, type PostfixInstance } from '../helpers/postfix';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { swaksInput } from '../helpers/messages';

const RELAY_CLIENT = '127.0.0.5';
const OUTSIDER = '127.0.0.6';
const message = (subject: string): string =>
  [
    'From: Alice <alice@example.test>',
    'To: Bob <bob@example.test>',
    `Subject: ${subject}`,
    'Date: Sun, 22 Nov 2026 10:00:00 +0000',
    `Message-ID: <${subject.replace(/\W+/g, '-')}@example.test>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'Hello Bob,',
    '',
    '.a line starting with a dot, and 8-bit text: Grüße',
    '',
  ].join('\r\n');

describe('DKIM through Postfix', () => {
  let dns: DnsServer;
  let pf: PostfixInstance;
  let proxy: TestProxy;
  let publicPort: number;
  let keys: Record<'rsa' | 'ed' | 'inbound', TestKey>;
  let files: ReturnType<typeof keyFiles>;

  before(async () => {
    keys = { rsa: rsaKey(2048), ed: ed25519Key(), inbound: rsaKey(1024) };
    files = keyFiles(keys);
    dns = await startDnsServer({
      'example.test': [txt('rsa._domainkey', dkimRecord(keys.rsa)), txt('ed._domainkey', dkimRecord(keys.ed))].join('\n'),
      'example.net': txt('in._domainkey', dkimRecord(keys.inbound)),
    });
    publicPort = await freePort();
    const filterPort = await freePort();
    const afterPort = await freePort();
    pf = createPostfix({ publicPort, filterPort, afterPort, mailboxes: ['bob@example.test'] });
    await pf.start();
    proxy = await startProxy({
      mode: 'postfix',
      hostname: 'mx.example.test',
      listen: `127.0.0.1:${filterPort}`,
      downstream: { address: `127.0.0.1:${afterPort}` },
      relay_clients: [RELAY_CLIENT],
      dns: { servers: [dns.server], timeout: 2, tries: 1 },
      plugins: [
        { dkim: {} },
        { auth_results: {} },
        { addsig: { signatures: { 'example.test': { text: 'Example Test -- footer added before signing' } } } },
        {
          'dkim:sign': {
            verify: false,
            sign: { keys: { 'example.test': [{ selector: 'rsa', file: files.path.rsa }, { selector: 'ed', file: files.path.ed }] } },
          },
        },
      ],
    });
  });

  after(async () => {
    await proxy?.close();
    await pf?.stop();
    await dns?.stop();
  });

  const send = (from: string, iface: string, data: string | Buffer) =>
    swaks(['--server', `127.0.0.1:${publicPort}`, '--from', from, '--to', 'bob@example.test', '--helo', 'client.example.test', '--local-interface', iface, '--data', '-'], {
      // As bytes: a signed 8-bit body must reach swaks unchanged (a string would be re-encoded as UTF-8).
      input: Buffer.from(swaksInput(Buffer.from(data).toString('latin1')), 'latin1'),
    });

  test('a relay client\'s message is signed after addsig, delivered, and verifies with dkimpy from the maildir', async () => {
    const res = await send('alice@example.test', RELAY_CLIENT, message('signed by prequeue'));
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const files = await pf.waitForMail('bob@example.test', 1);
    const stored = readFileSync(files[files.length - 1]!);
    const text = stored.toString('utf8');
    assert.match(text, /Subject: signed by prequeue/);
    assert.match(text, /Example Test -- footer added before signing/);
    assert.equal((text.match(/^DKIM-Signature:/gm) ?? []).length, 2);
    // Postfix prepended Return-Path, Delivered-To and Received on top of the signatures.
    assert.ok(text.indexOf('Received:') < text.indexOf('DKIM-Signature:'));
    assert.deepEqual(await dkimpyVerify(stored, dns.port), [true, true]);
    assert.doesNotMatch(text, /^Authentication-Results:/m, 'nothing verified for a relay client, nothing to report');
  });

  test('an outside client\'s signed message is verified (dkim=pass in Authentication-Results), not re-signed', async () => {
    const before = pf.maildirFiles('bob@example.test').length;
    const inbound = (await dkimpySign(message('signed elsewhere').replace('alice@example.test', 'carol@example.net'), 'example.net', 'in', files.path.inbound!)).toString('latin1');
    const res = await send('carol@example.net', OUTSIDER, Buffer.from(inbound, 'latin1'));
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const all = await pf.waitForMail('bob@example.test', before + 1);
    const stored = readFileSync(all[all.length - 1]!);
    const text = stored.toString('utf8').replace(/\n(?=[ \t])/g, '');
    assert.match(text, /^Authentication-Results: mx\.example\.test; dkim=pass header\.d=example\.net /m);
    assert.equal((text.match(/^DKIM-Signature:/gm) ?? []).length, 1, 'only the sender\'s own signature');
    assert.doesNotMatch(text, /footer added before signing/);
    assert.deepEqual(await dkimpyVerify(stored, dns.port), [true], 'still intact after the trip');
  });
});
