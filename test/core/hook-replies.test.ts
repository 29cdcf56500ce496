/**
 * Every decision at every hook gives qpsmtpd's reply, over a real SMTP
 * connection: front end, chain, responders and downstream all in play.
 */
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision } from '../../src/plugin/decision';
import type { HookName } from '../../src/plugin/api';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { scripted } from '../fixtures/plugins/scripted';

const MESSAGE = 'From: a@example.net\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody\r\n';

/** [code, disconnects] per decision; '-' = the normal reply for the command. */
type Expect = Record<Decision, [number, boolean]>;

const mailLike = (normal: number): Expect => ({
  [Decision.DECLINED]: [normal, false],
  [Decision.OK]: [normal, false],
  [Decision.DONE]: [normal, false],
  [Decision.DENY]: [550, false],
  [Decision.DENYSOFT]: [450, false],
  [Decision.DENY_DISCONNECT]: [550, true],
  [Decision.DENYSOFT_DISCONNECT]: [421, true],
});

const EXPECTED: Partial<Record<HookName, Expect>> = {
  connect: {
    [Decision.DECLINED]: [220, false],
    [Decision.OK]: [220, false],
    [Decision.DONE]: [220, false],
    [Decision.DENY]: [554, true],
    [Decision.DENYSOFT]: [421, true],
    [Decision.DENY_DISCONNECT]: [554, true],
    [Decision.DENYSOFT_DISCONNECT]: [421, true],
  },
  helo: mailLike(250),
  ehlo: mailLike(250),
  mail: mailLike(250),
  rcpt: mailLike(250),
  data: { ...mailLike(354), [Decision.DENY]: [554, false], [Decision.DENYSOFT]: [451, false], [Decision.DENY_DISCONNECT]: [554, true] },
  data_headers_end: { ...mailLike(250), [Decision.DENYSOFT]: [451, false] },
  data_post: { ...mailLike(250), [Decision.DENYSOFT]: [451, false] },
  queue: { ...mailLike(250), [Decision.DENY]: [554, false], [Decision.DENYSOFT]: [451, false], [Decision.DENY_DISCONNECT]: [554, true] },
  vrfy: { ...mailLike(252), [Decision.OK]: [250, false], [Decision.DENY]: [554, false], [Decision.DENY_DISCONNECT]: [554, true] },
  noop: mailLike(250),
  unrecognized_command: {
    ...mailLike(500),
    [Decision.DENY]: [500, false],
    [Decision.DENY_DISCONNECT]: [521, true],
  },
};

let downstream: FakeSmtpServer;
let proxy: TestProxy;

before(async () => {
  downstream = await FakeSmtpServer.start();
  proxy = await startProxy({
    mode: 'standalone',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    plugins: ['scripted'],
  });
});
after(async () => {
  await proxy.close();
  await downstream.close();
});
beforeEach(() => scripted.reset());

/** Drives a session up to the command that fires `hook`; returns that command's reply. */
async function exercise(hook: HookName): Promise<{ code: number; text: string; closed: boolean; delivered: number }> {
  const before = downstream.messages.length;
  const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
  try {
    let r = await t.reply();
    if (hook !== 'connect') {
      if (hook === 'helo') r = await t.cmd('HELO client.example.net');
      else r = await t.cmd('EHLO client.example.net');
    }
    if (!['connect', 'helo', 'ehlo'].includes(hook)) {
      if (hook === 'vrfy') r = await t.cmd('VRFY someone');
      else if (hook === 'noop') r = await t.cmd('NOOP');
      else if (hook === 'unrecognized_command') r = await t.cmd('FROB x');
      else {
        r = await t.cmd('MAIL FROM:<a@example.net>');
        if (hook !== 'mail') {
          r = await t.cmd('RCPT TO:<b@example.test>');
          if (hook !== 'rcpt') {
            r = await t.cmd('DATA');
            if (hook !== 'data') {
              assert.equal(r.code, 354);
              t.write(MESSAGE + '.\r\n');
              r = await t.reply();
            }
          }
        }
      }
    }
    // A disconnecting reply is followed by the close; give it a moment to arrive.
    await Promise.race([t.closed, new Promise((res) => setTimeout(res, 150))]);
    return { code: r.code, text: r.lines.join(' '), closed: t.isClosed, delivered: downstream.messages.length - before };
  } finally {
    t.destroy();
  }
}

describe('every decision at every hook', () => {
  for (const [hook, expect] of Object.entries(EXPECTED) as [HookName, Expect][]) {
    for (const [decision, [code, disconnects]] of Object.entries(expect) as [Decision, [number, boolean]][]) {
      test(`${hook} ${decision} -> ${code}${disconnects ? ' + close' : ''}`, async () => {
        scripted.script[hook] = decision;
        const r = await exercise(hook);
        assert.equal(r.code, code, `reply was ${r.code} ${r.text}`);
        assert.equal(r.closed, disconnects, disconnects ? 'connection should be closed' : 'connection should stay open');
        const messageHooks = ['data_headers_end', 'data_post', 'queue'];
        if (messageHooks.includes(hook)) {
          const accepted = code === 250;
          // Queue OK means a plugin took the message: nothing goes downstream.
          const expectDelivered = accepted && !(hook === 'queue' && decision === Decision.OK) ? 1 : 0;
          assert.equal(r.delivered, expectDelivered, 'downstream deliveries');
        }
      });
    }
  }
});

describe('verdict texts', () => {
  test('a verdict message replaces the default text, the code stays the responder\'s', async () => {
    scripted.script.rcpt = { decision: Decision.DENY, message: 'no such user here' };
    const r = await exercise('rcpt');
    assert.equal(r.code, 550);
    assert.match(r.text, /^5\.7\.1 no such user here$|no such user here/);
  });

  test('an enhanced code of the wrong class is not used', async () => {
    scripted.script.mail = { decision: Decision.DENYSOFT, message: 'later', enhanced: '5.1.8' };
    const t = await SmtpTalk.connect(proxy.port);
    await t.cmd('EHLO x.example');
    const r = await t.cmd('MAIL FROM:<a@example.net>');
    assert.equal(r.code, 450);
    assert.equal(r.enhanced, '4.7.1');
    await t.quit();
  });

  test('DONE with a code is sent verbatim', async () => {
    scripted.script.vrfy = { decision: Decision.DONE, code: 252, enhanced: '2.1.5', message: 'ask the postmaster' };
    const t = await SmtpTalk.connect(proxy.port);
    const r = await t.cmd('VRFY bob');
    assert.equal(r.code, 252);
    assert.deepEqual(r.lines, ['ask the postmaster']);
    await t.quit();
  });

  test('a refused DATA ends the transaction: a second DATA needs a new MAIL', async () => {
    scripted.script.data = Decision.DENY;
    const t = await SmtpTalk.connect(proxy.port);
    await t.cmd('EHLO x.example');
    assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
    assert.equal((await t.cmd('DATA')).code, 554);
    assert.equal((await t.cmd('DATA')).code, 503);
    scripted.reset();
    const r = await t.send('a@example.net', ['b@example.test'], 'Subject: again\r\n\r\nok\r\n');
    assert.equal(r.eod?.code, 250);
    await t.quit();
  });

  test('reset_transaction fires once at the end of every transaction: delivered, refused, reset', async () => {
    const t = await SmtpTalk.connect(proxy.port);
    await t.cmd('EHLO x.example');
    const resets = (): number => scripted.calls.filter((c) => c.hook === 'reset_transaction').length;
    // Delivered: the transaction's results are still there when the hook runs.
    let txnSeen: unknown;
    scripted.script.reset_transaction = (ctx) => {
      txnSeen = ctx.txn?.sender?.address;
      return undefined;
    };
    assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: one\r\n\r\nok\r\n')).eod?.code, 250);
    assert.equal(resets(), 1);
    assert.equal(txnSeen, 'a@example.net');
    // Refused at MAIL: that ends a transaction too.
    scripted.script.mail = Decision.DENY;
    assert.equal((await t.cmd('MAIL FROM:<c@example.net>')).code, 550);
    assert.equal(resets(), 2);
    delete scripted.script.mail;
    // RSET after MAIL.
    assert.equal((await t.cmd('MAIL FROM:<d@example.net>')).code, 250);
    assert.equal((await t.cmd('RSET')).code, 250);
    assert.equal(resets(), 3);
    // No transaction, nothing to reset.
    assert.equal((await t.cmd('RSET')).code, 250);
    assert.equal(resets(), 3);
    await t.quit();
  });

  test('QUIT is always answered 221 and closes', async () => {
    scripted.script.quit = Decision.DENY;
    const t = await SmtpTalk.connect(proxy.port);
    const r = await t.cmd('QUIT');
    assert.equal(r.code, 221);
    await t.closed;
  });
});
