/**
 * Lock-step relay against a downstream that fails on cue at each stage:
 * the client always gets the matching 4xx/5xx, never a 250 for a message the
 * downstream did not accept, and a rejected message never gets its final dot.
 */
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeSmtpServer, type FakeScript } from '../helpers/fake-smtp-server';
import { closedAfterEach, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { scripted } from '../fixtures/plugins/scripted';
import { deny } from '../../src/plugin/decision';

const MESSAGE = 'From: a@example.net\r\nTo: b@example.test\r\nSubject: test\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n8-bit: \xe4\xf6\xfc\r\n';

const env = closedAfterEach();

afterEach(() => scripted.reset());

/** Short downstream timeouts so "hang" cases finish quickly. */
async function setup(script: FakeScript, extra: Record<string, unknown> = {}): Promise<TestProxy> {
  env.downstream = await FakeSmtpServer.start({ script });
  env.proxy = await startProxy({
    mode: 'standalone',
    downstream: { address: `127.0.0.1:${env.downstream.port}`, timeouts: { connect: 1, greeting: 0.5, command: 0.5, data: 0.5, eod: 0.5 } },
    ...extra,
  });
  return env.proxy;
}

async function transaction(p: TestProxy, message = MESSAGE) {
  const t = await SmtpTalk.connect(p.port);
  try {
    return await t.send('a@example.net', ['b@example.test'], Buffer.from(message, 'latin1'));
  } finally {
    t.destroy();
  }
}

describe('downstream replies are relayed', () => {
  test('happy path: byte-exact, downstream reply text relayed, XFORWARD sent', async () => {
    const p = await setup({ eod: '250 2.0.0 Ok: queued as ABC123' });
    const r = await transaction(p);
    assert.equal(r.eod?.code, 250);
    assert.deepEqual(r.eod?.lines, ['Ok: queued as ABC123']);
    const m = env.downstream!.messages[0]!;
    // Standalone mode adds our Received header on top; the rest is the client's bytes.
    const text = m.data.toString('latin1');
    assert.match(text, /^Received: from client\.example\.net \(unknown \[127\.0\.0\.1\]\) by pq\.example\.test \(prequeue\) with ESMTP id \S+ for <b@example\.test>; /);
    assert.equal(text.slice(text.indexOf('\r\n') + 2), MESSAGE);
    assert.match(m.xforward.join(' '), /ADDR=127\.0\.0\.1/);
    assert.match(m.xforward.join(' '), /HELO=client\.example\.net/);
    assert.equal(m.mailFrom, '<a@example.net>');
  });

  test('MAIL and RCPT parameters reach the downstream unchanged', async () => {
    const p = await setup({});
    const t = await SmtpTalk.connect(p.port);
    await t.cmd('EHLO c.example');
    assert.equal((await t.cmd('MAIL FROM:<a@example.net> SIZE=400 BODY=8BITMIME RET=HDRS ENVID=abc+2B123')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test')).code, 250);
    await t.cmd('RSET');
    await t.quit();
    const lines = env.downstream!.sessions[0]!.lines;
    assert.ok(lines.includes('MAIL FROM:<a@example.net> SIZE=400 BODY=8BITMIME RET=HDRS ENVID=abc+2B123'), lines.join('\n'));
    assert.ok(lines.includes('RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test'));
  });

  for (const [stage, script, where] of [
    ['MAIL 4xx', { mail: '451 4.3.0 mail later' }, 'mail'],
    ['MAIL 5xx', { mail: '553 5.7.1 sender refused' }, 'mail'],
    ['RCPT 4xx', { rcpt: '450 4.2.1 mailbox busy' }, 'rcpt'],
    ['RCPT 5xx', { rcpt: '550 5.1.1 unknown user' }, 'rcpt'],
    ['DATA 4xx', { data: '451 4.3.0 no data now' }, 'eod'],
    ['DATA 5xx', { data: '554 5.5.1 no valid recipients' }, 'eod'],
    ['end-of-data 4xx', { eod: '452 4.3.1 disk full' }, 'eod'],
    ['end-of-data 5xx', { eod: '550 5.7.1 content refused' }, 'eod'],
  ] as const) {
    test(`${stage}: the client gets the downstream's reply word for word`, async () => {
      const p = await setup(script as FakeScript);
      const r = await transaction(p);
      const expected = Object.values(script)[0] as string;
      const got = where === 'mail' ? r.mail : where === 'rcpt' ? r.rcpt[0]! : r.eod!;
      assert.equal(`${got.code} ${got.enhanced} ${got.lines.join(' ')}`, expected);
      if (where !== 'eod') assert.equal(r.eod, undefined);
    });
  }
});

describe('downstream failures become 4xx, never 250', () => {
  test('downstream unreachable: 451 at MAIL', async () => {
    const ds = await FakeSmtpServer.start();
    const port = ds.port;
    await ds.close();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${port}` } });
    const r = await transaction(env.proxy);
    assert.equal(r.mail.code, 451);
    assert.equal(r.mail.enhanced, '4.4.1');
  });

  for (const [name, script, where] of [
    ['greeting hangs', { greeting: 'hang' }, 'mail'],
    ['greeting refused', { greeting: '554 5.3.2 go away' }, 'mail'],
    ['EHLO hangs', { ehlo: 'hang', helo: 'hang' }, 'mail'],
    ['XFORWARD hangs', { xforward: 'hang' }, 'mail'],
    ['XFORWARD refused', { xforward: '550 5.7.0 not allowed' }, 'mail'],
    ['MAIL hangs', { mail: 'hang' }, 'mail'],
    ['MAIL drops', { mail: 'close' }, 'mail'],
    ['RCPT hangs', { rcpt: 'hang' }, 'rcpt'],
    ['RCPT drops', { rcpt: 'close' }, 'rcpt'],
    ['DATA hangs', { data: 'hang' }, 'eod'],
    ['DATA drops', { data: 'close' }, 'eod'],
    ['drop mid-DATA', { data: 'close-mid-data', closeMidDataAfter: 10 }, 'eod'],
    ['end-of-data hangs', { eod: 'hang' }, 'eod'],
    ['end-of-data drops', { eod: 'close' }, 'eod'],
  ] as const) {
    test(`${name}: 4xx`, async () => {
      const p = await setup(script as FakeScript);
      const r = await transaction(p);
      const got = where === 'mail' ? r.mail : where === 'rcpt' ? r.rcpt[0]! : r.eod!;
      assert.ok(got, 'a reply');
      assert.ok(got.code >= 400 && got.code < 500, `expected 4xx, got ${got.code} ${got.lines.join(' ')}`);
      // Past the final dot the downstream holds the whole message; what counts is that it never said 250.
      if (!name.startsWith('end-of-data')) assert.equal(env.downstream!.messages.length, 0, 'no complete message downstream');
    });
  }

  test('a downstream slow at every step, each within its own timeout, still cannot hold MAIL past reply_deadline', async () => {
    const slow = { reply: undefined, delayMs: 400 };
    env.downstream = await FakeSmtpServer.start({
      script: { greeting: { ...slow, reply: '220 slow ESMTP' }, ehlo: { ...slow, reply: '250-slow\n250 XFORWARD NAME ADDR PROTO HELO' }, xforward: { ...slow, reply: '250 2.0.0 Ok' }, mail: { ...slow, reply: '250 2.1.0 Ok' } },
    });
    env.proxy = await startProxy({ mode: 'standalone', reply_deadline: 1, data_post_budget: 0.5, downstream: { address: `127.0.0.1:${env.downstream.port}` } });
    const t = await SmtpTalk.connect(env.proxy.port);
    await t.cmd('EHLO c.example');
    const started = Date.now();
    const r = await t.cmd('MAIL FROM:<a@example.net>');
    const took = Date.now() - started;
    assert.equal(r.code, 451);
    assert.ok(took >= 900 && took < 1500, `answered after ${took} ms`);
    await t.quit();
  });

  test('the proxy keeps serving after a downstream failure', async () => {
    let first = true;
    const p = await setup({
      mail: () => {
        if (first) {
          first = false;
          return 'close';
        }
        return undefined;
      },
    });
    assert.equal((await transaction(p)).mail.code, 451);
    assert.equal((await transaction(p)).eod?.code, 250);
    assert.equal(env.downstream!.messages.length, 1);
  });
});

describe('rejections abort the downstream without a final dot', () => {
  test('data_post DENY: 550 to the client, RSET downstream, no message there', async () => {
    const p = await setup({}, { plugins: ['scripted'] });
    scripted.script.data_post = deny('virus found');
    const t = await SmtpTalk.connect(p.port);
    const r = await t.send('a@example.net', ['b@example.test'], MESSAGE);
    assert.equal(r.eod?.code, 550);
    assert.match(r.eod!.lines.join(' '), /virus found/);
    // Same connection, next transaction still works.
    scripted.reset();
    const again = await t.send('a@example.net', ['b@example.test'], MESSAGE);
    assert.equal(again.eod?.code, 250);
    await t.quit();
    assert.equal(env.downstream!.messages.length, 1);
    const raw = env.downstream!.sessions.map((s) => s.raw.toString('latin1')).join('');
    assert.equal(raw.split('\r\n.\r\n').length - 1, 1, 'exactly one final dot went downstream');
    assert.ok(env.downstream!.sessions[0]!.lines.includes('RSET'));
  });

  test('a recipient denied by a plugin never reaches the downstream', async () => {
    const p = await setup({}, { plugins: ['scripted'] });
    scripted.script.rcpt = (_ctx, ...args) => ((args[0] as { address: string }).address.startsWith('bad') ? deny() : undefined);
    const t = await SmtpTalk.connect(p.port);
    const r = await t.send('a@example.net', ['bad@example.test', 'good@example.test'], MESSAGE);
    assert.deepEqual(
      r.rcpt.map((x) => x.code),
      [550, 250],
    );
    assert.equal(r.eod?.code, 250);
    await t.quit();
    assert.deepEqual(env.downstream!.messages[0]!.rcptTo, ['<good@example.test>']);
  });
});

describe('downstream link reuse', () => {
  test('a clean link serves the next client, with XFORWARD sent afresh for each transaction', async () => {
    env.downstream = await FakeSmtpServer.start();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}` } });
    for (const helo of ['first.example', 'second.example']) {
      const t = await SmtpTalk.connect(env.proxy.port);
      assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\ny\r\n', helo)).eod?.code, 250);
      await t.quit();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(env.downstream.sessions.length, 1, 'one downstream connection for both clients');
    assert.deepEqual(
      env.downstream.messages.map((m) => /HELO=(\S+)/.exec(m.xforward.join(' '))?.[1]),
      ['first.example', 'second.example'],
    );
  });

  test('a link whose transaction was refused is reset before it is reused', async () => {
    env.downstream = await FakeSmtpServer.start();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}` }, plugins: ['scripted'] });
    scripted.script.data_post = deny('no');
    const t = await SmtpTalk.connect(env.proxy.port);
    assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\ny\r\n')).eod?.code, 550);
    t.destroy();
    await new Promise((r) => setTimeout(r, 100));
    scripted.reset();
    const u = await SmtpTalk.connect(env.proxy.port);
    assert.equal((await u.send('c@example.net', ['d@example.test'], 'Subject: x\r\n\r\ny\r\n')).eod?.code, 250);
    await u.quit();
    assert.equal(env.downstream.sessions.length, 1);
    const lines = env.downstream.sessions[0]!.lines;
    assert.ok(lines.indexOf('RSET') > lines.indexOf('MAIL FROM:<a@example.net>'));
    assert.ok(lines.indexOf('RSET') < lines.indexOf('MAIL FROM:<c@example.net>'));
    assert.deepEqual(env.downstream.messages.map((m) => m.mailFrom), ['<c@example.net>']);
  });

  test('a pooled link the downstream gave up on is replaced without the client noticing', async () => {
    let mails = 0;
    env.downstream = await FakeSmtpServer.start({
      script: { mail: (_arg, session) => (session.index === 0 && mails++ === 1 ? { reply: '421 4.4.2 idle too long', thenClose: true } : undefined) },
    });
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}` } });
    for (let i = 0; i < 2; i++) {
      const t = await SmtpTalk.connect(env.proxy.port);
      assert.equal((await t.send('a@example.net', ['b@example.test'], `Subject: ${i}\r\n\r\ny\r\n`)).eod?.code, 250);
      await t.quit();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(env.downstream.sessions.length, 2, 'a fresh link after the stale one');
    assert.equal(env.downstream.messages.length, 2);
  });

  test('pool.max_idle: 0 gives every client its own link', async () => {
    env.downstream = await FakeSmtpServer.start();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}`, pool: { max_idle: 0 } } });
    for (let i = 0; i < 2; i++) {
      const t = await SmtpTalk.connect(env.proxy.port);
      assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\ny\r\n')).eod?.code, 250);
      await t.quit();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(env.downstream.sessions.length, 2);
    assert.ok(env.downstream.sessions.every((s) => s.lines.includes('QUIT')));
  });
});
