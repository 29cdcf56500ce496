/**
 * Standalone mode in front of a real MTA: swaks -> prequeue -> Postfix smtpd -> maildir.
 * prequeue is the MX here: it adds its Received header, describes the client
 * with XFORWARD (or hands it over with XCLIENT), and relays the MTA's replies.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createPostfix, freePort, swaks, type PostfixInstance } from '../helpers/postfix';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { TRICKY, asStored, deliveredContent, swaksInput } from '../helpers/messages';

describe('standalone mode in front of Postfix', () => {
  let pf: PostfixInstance;
  let xforward: TestProxy;
  let xclient: TestProxy;

  before(async () => {
    const afterPort = await freePort();
    pf = createPostfix({
      publicPort: await freePort(),
      afterPort,
      mailboxes: ['alice@example.test', 'bob@example.test', 'refused@example.test'],
      afterRejectRecipients: ['refused@example.test'],
    });
    await pf.start();
    const common = { mode: 'standalone', hostname: 'pq.example.test', downstream: { address: `127.0.0.1:${afterPort}` } };
    xforward = await startProxy({ ...common, plugins: [{ badmailfrom: { addresses: ['@spam.example'], reject_at: 'mail' } }] });
    xclient = await startProxy({ ...common, downstream: { ...common.downstream, xclient: true } });
  });

  after(async () => {
    await xforward?.close();
    await xclient?.close();
    await pf?.stop();
  });

  const send = (port: number, args: string[], input?: string) =>
    swaks(['--server', `127.0.0.1:${port}`, '--from', 'sender@example.net', '--helo', 'client.example.net', '--local-interface', '127.0.0.9', ...args], input === undefined ? {} : { input });

  test('delivered byte-exact below our Received header; the MTA logs the original client', async () => {
    const res = await send(xforward.port, ['--to', 'alice@example.test', '--data', '-'], swaksInput(TRICKY));
    assert.equal(res.code, 0, res.stdout);
    assert.match(res.stdout, /<-\s+250 2\.0\.0 Ok: queued as [0-9A-F]+/, "the MTA's own reply is relayed");
    const files = await pf.waitForMail('alice@example.test', 1);
    const file = files[files.length - 1]!;
    assert.ok(deliveredContent(file).equals(asStored(TRICKY)));
    const text = readFileSync(file, 'utf8');
    assert.match(text, /^Received: from client\.example\.net \(unknown \[127\.0\.0\.9\]\)\n?\s*by pq\.example\.test \(prequeue\) with ESMTP id \S+\n?\s*for <alice@example\.test>;/m);
    await pf.waitForLog(/postfix\/after\/smtpd\[\d+\]: [0-9A-F]+: client=\S+\[127\.0\.0\.1\], orig_client=\S*\[127\.0\.0\.9\]/);
  });

  test('XCLIENT: the MTA sees the real client as its client', async () => {
    const res = await send(xclient.port, ['--to', 'bob@example.test']);
    assert.equal(res.code, 0, res.stdout);
    await pf.waitForMail('bob@example.test', 1);
    // No orig_client: after XCLIENT there is nothing left for XFORWARD to add.
    await pf.waitForLog(/postfix\/after\/smtpd\[\d+\]: [0-9A-F]+: client=\S*\[127\.0\.0\.9\]$/m);
  });

  test("the MTA's rejection of a recipient reaches the client; a plugin's rejection never reaches the MTA", async () => {
    const r = await send(xforward.port, ['--to', 'refused@example.test']);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /<\*\*\s+550 5\.\d\.\d .*refused@example\.test/);
    const spam = await swaks(['--server', `127.0.0.1:${xforward.port}`, '--from', 'x@spam.example', '--to', 'alice@example.test']);
    assert.notEqual(spam.code, 0);
    assert.match(spam.stdout, /<\*\*\s+550 5\.7\.1 /);
    assert.ok(!pf.log().includes('x@spam.example'), 'the MTA never saw the refused sender');
  });
});
