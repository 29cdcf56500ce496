/**
 * End to end behind a real, private Postfix wired as SMTPD_PROXY_README says:
 * swaks -> public smtpd -> smtpd_proxy_filter -> prequeue -> after-filter smtpd -> maildir,
 * with and without smtpd_proxy_options=speed_adjust.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPostfix, freePort, swaks, type PostfixInstance } from '../helpers/postfix';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { TRICKY, asStored, deliveredContent, swaksInput } from '../helpers/messages';

for (const speedAdjust of [false, true]) {
  describe(`Postfix mode${speedAdjust ? ' with speed_adjust' : ''}`, () => {
    let pf: PostfixInstance;
    let proxy: TestProxy;
    let publicPort: number;

    before(async () => {
      publicPort = await freePort();
      const filterPort = await freePort();
      const afterPort = await freePort();
      pf = createPostfix({
        publicPort,
        filterPort,
        afterPort,
        speedAdjust,
        mailboxes: ['alice@example.test', 'bob@example.test', 'denied@example.test', 'refused@example.test'],
        afterRejectRecipients: ['refused@example.test'],
        headerChecksReject: '^Subject: reject me',
      });
      await pf.start();
      proxy = await startProxy({
        mode: 'postfix',
        listen: `127.0.0.1:${filterPort}`,
        downstream: { address: `127.0.0.1:${afterPort}` },
        plugins: [{ badrcptto: { addresses: ['denied@example.test   prequeue says no to denied'] } }],
      });
    });

    after(async () => {
      await proxy?.close();
      await pf?.stop();
    });

    const send = (args: string[]) => swaks(['--server', `127.0.0.1:${publicPort}`, '--from', 'sender@example.net', '--helo', 'client.example.net', ...args]);

    test('a message is delivered byte-exact, and the after-filter logs the original client (XFORWARD)', async () => {
      const res = await swaks(
        ['--server', `127.0.0.1:${publicPort}`, '--from', 'sender@example.net', '--helo', 'client.example.net', '--to', 'alice@example.test', '--local-interface', '127.0.0.5', '--data', '-'],
        { input: swaksInput(TRICKY) },
      );
      assert.equal(res.code, 0, res.stdout + res.stderr);
      assert.match(res.stdout, /<-\s+250 2\.0\.0 Ok: queued as/);
      const files = await pf.waitForMail('alice@example.test', 1);
      const stored = deliveredContent(files[files.length - 1]!);
      assert.equal(stored.toString('utf8'), asStored(TRICKY).toString('utf8'));
      assert.ok(stored.equals(asStored(TRICKY)), 'byte for byte');
      // XFORWARD reached the after-filter: it names the real client, not prequeue.
      await pf.waitForLog(/postfix\/after\/smtpd\[\d+\]: [0-9A-F]+: client=\S+\[127\.0\.0\.1\], orig_client=\S*\[127\.0\.0\.5\]/);
    });

    test('a plugin DENY at RCPT reaches the client', async () => {
      const res = await send(['--to', 'denied@example.test']);
      assert.notEqual(res.code, 0);
      assert.match(res.stdout, /550 5\.7\.1 prequeue says no to denied/);
      assert.equal(pf.maildirFiles('denied@example.test').length, 0);
    });

    test('a downstream rejection at RCPT reaches the client', async () => {
      const res = await send(['--to', 'refused@example.test']);
      assert.notEqual(res.code, 0);
      assert.match(res.stdout, /550 5\.\d\.\d .*refused@example\.test/);
      assert.equal(pf.maildirFiles('refused@example.test').length, 0);
    });

    test('a downstream rejection at end of data reaches the client', async () => {
      const res = await send(['--to', 'bob@example.test', '--header', 'Subject: reject me']);
      assert.notEqual(res.code, 0);
      // header_checks run only at the after-filter: this reply came back through prequeue.
      assert.match(res.stdout, /<\*\*\s+550 5\.7\.1 header rejected/);
      assert.equal(pf.maildirFiles('bob@example.test').length, 0);
    });

    test('with prequeue stopped the client gets 4xx and nothing is delivered', async () => {
      const before = pf.maildirFiles('bob@example.test').length;
      await proxy.close();
      const res = await send(['--to', 'bob@example.test']);
      assert.notEqual(res.code, 0);
      assert.match(res.stdout, /<\*\*\s+4\d\d /);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(pf.maildirFiles('bob@example.test').length, before);
      assert.ok(pf.queueIsEmpty(), 'nothing queued');
    });
  });
}
