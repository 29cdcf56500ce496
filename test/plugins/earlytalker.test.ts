/**
 * earlytalker over real SMTP through prequeue (standalone, a fake downstream):
 * raw sockets that talk before the greeting or before the 354, polite and
 * pipelining clients that must pass, and postfix mode where it does nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/earlytalker';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { FakeSmtpServer, selfSignedCert } from '../helpers/fake-smtp-server';
import { loadPlugin, makeContext, memoryLogger, callHook } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { Decision } from '../../src/plugin/decision';

let downstream: FakeSmtpServer;
before(async () => {
  downstream = await FakeSmtpServer.start();
});
after(() => downstream.close());

const MESSAGE = 'Subject: hello\r\n\r\nhello\r\n';

function config(options: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    mode: 'standalone',
    received_header: 'never',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    plugins: [{ earlytalker: options }],
    ...extra,
  };
}

async function withProxy(cfg: Record<string, unknown>, fn: (p: TestProxy) => Promise<void>): Promise<void> {
  const proxy = await startProxy(cfg);
  try {
    await fn(proxy);
  } finally {
    await proxy.close();
  }
}

/** The results summary of the logged transactions (the log line per transaction). */
function loggedResults(proxy: TestProxy): Record<string, string>[] {
  return proxy.log.lines.filter((l) => l.msg === 'transaction').map((l) => l.meta.results as Record<string, string>);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('earlytalker at connect', () => {
  test('a client that writes EHLO before the greeting gets 554 and is closed, without waiting the whole wait', async () => {
    await withProxy(config({ wait: 3 }), async (proxy) => {
      const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
      const started = Date.now();
      t.write('EHLO bot.example\r\n');
      const r = await t.reply();
      assert.equal(r.code, 554);
      assert.equal(r.enhanced, '5.5.0');
      assert.match(r.lines.join(' '), /talk too soon/);
      assert.ok(Date.now() - started < 2000, `answered as soon as the client talked (${Date.now() - started} ms)`);
      await t.closed;
      // No reply to the EHLO the client sent: the connection ended at the greeting.
      assert.ok(t.isClosed);
    });
  });

  test('a polite client waits out the greeting delay and is served; the pass is recorded', async () => {
    await withProxy(config({ wait: 0.4 }), async (proxy) => {
      const before = downstream.messages.length;
      const started = Date.now();
      const t = await SmtpTalk.connect(proxy.port);
      assert.equal(t.greeting.code, 220);
      assert.ok(Date.now() - started >= 350, `greeting held back for the wait (${Date.now() - started} ms)`);
      const r = await t.send('a@example.net', ['b@example.test'], MESSAGE);
      assert.equal(r.eod?.code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1);
      assert.match(loggedResults(proxy).at(-1)!.earlytalker!, /pass=connect/);
    });
  });

  test('a pipelining client (EHLO, MAIL, RCPT, DATA in one packet right after the greeting) is not flagged', async () => {
    await withProxy(config({ wait: 0.2, check_at: 'both' }), async (proxy) => {
      const before = downstream.messages.length;
      const t = await SmtpTalk.connect(proxy.port);
      t.write('EHLO mx.example.net\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 354);
      t.write(`${MESSAGE}.\r\n`);
      assert.equal((await t.reply()).code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1);
      // (The log line shows the transaction's results for a plugin, so only the data check's pass is visible here.)
      assert.match(loggedResults(proxy).at(-1)!.earlytalker!, /pass=data/);
    });
  });

  test('reject: false only records the early talker (for karma), and its early EHLO is answered after the greeting', async () => {
    await withProxy(config({ wait: 0.3, reject: false }), async (proxy) => {
      const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
      t.write('EHLO bot.example\r\n');
      assert.equal((await t.reply()).code, 220);
      assert.equal((await t.reply()).code, 250);
      const mail = await t.cmd('MAIL FROM:<a@example.net>');
      assert.equal(mail.code, 250);
      await t.cmd('RSET');
      await t.quit();
      assert.match(loggedResults(proxy).at(-1)!.earlytalker!, /fail=connect/);
      assert.ok(proxy.log.lines.some((l) => /earlytalker would reject at connect/.test(l.msg)));
    });
  });

  test('with deferred_rejection.connection the refusal comes at MAIL, and the reason with it', async () => {
    await withProxy(config({ wait: 0.3 }, { deferred_rejection: { connection: true, stage: 'mail' } }), async (proxy) => {
      const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
      t.write('EHLO bot.example\r\n');
      assert.equal((await t.reply()).code, 220);
      assert.equal((await t.reply()).code, 250);
      const mail = await t.cmd('MAIL FROM:<a@example.net>');
      assert.equal(mail.code, 550);
      assert.equal(mail.enhanced, '5.5.0');
      assert.match(mail.lines.join(' '), /talk too soon/);
      await t.quit();
    });
  });

  test('check_at: data leaves the greeting alone (no delay, no check)', async () => {
    await withProxy(config({ wait: 2, check_at: 'data' }), async (proxy) => {
      const started = Date.now();
      const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
      t.write('EHLO bot.example\r\n');
      assert.equal((await t.reply()).code, 220);
      assert.ok(Date.now() - started < 1500);
      assert.equal((await t.reply()).code, 250);
      await t.quit();
    });
  });
});

describe('earlytalker at DATA', () => {
  test('the message body sent with DATA in the same packet (before 354) is refused and the connection closed', async () => {
    await withProxy(config({ check_at: 'data' }), async (proxy) => {
      const before = downstream.messages.length;
      const t = await SmtpTalk.connect(proxy.port);
      assert.equal((await t.cmd('EHLO bot.example')).code, 250);
      assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
      t.write(`DATA\r\n${MESSAGE}.\r\n`);
      const r = await t.reply();
      assert.equal(r.code, 554);
      assert.equal(r.enhanced, '5.5.0');
      assert.match(r.lines.join(' '), /before the 354/);
      await t.closed;
      assert.equal(downstream.messages.length, before, 'nothing relayed');
      assert.match(loggedResults(proxy).at(-1)!.earlytalker!, /fail=data/);
    });
  });

  test('the whole transaction in one packet, body included, is refused at DATA', async () => {
    await withProxy(config({ check_at: 'both', wait: 0 }), async (proxy) => {
      const before = downstream.messages.length;
      const t = await SmtpTalk.connect(proxy.port);
      t.write(`EHLO bot.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n${MESSAGE}.\r\nQUIT\r\n`);
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 250);
      assert.equal((await t.reply()).code, 554);
      await t.closed;
      assert.equal(downstream.messages.length, before);
    });
  });

  test('a body sent in its own packet right behind DATA is caught with data_wait', async () => {
    await withProxy(config({ check_at: 'data', data_wait: 0.5 }), async (proxy) => {
      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO bot.example');
      await t.cmd('MAIL FROM:<a@example.net>');
      await t.cmd('RCPT TO:<b@example.test>');
      t.write('DATA\r\n');
      await sleep(100);
      t.write(`${MESSAGE}.\r\n`);
      assert.equal((await t.reply()).code, 554);
      await t.closed;
    });
  });

  test('DATA split over two packets, then waiting for the 354, passes', async () => {
    await withProxy(config({ check_at: 'data', data_wait: 0.2 }), async (proxy) => {
      const before = downstream.messages.length;
      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO mx.example.net');
      await t.cmd('MAIL FROM:<a@example.net>');
      await t.cmd('RCPT TO:<b@example.test>');
      t.write('DA');
      await sleep(50);
      assert.equal((await t.cmd('TA')).code, 354);
      t.write(`${MESSAGE}.\r\n`);
      assert.equal((await t.reply()).code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1);
    });
  });

  test('a second transaction on the same connection is judged on its own DATA', async () => {
    await withProxy(config({ check_at: 'data' }), async (proxy) => {
      const t = await SmtpTalk.connect(proxy.port);
      const first = await t.send('a@example.net', ['b@example.test'], MESSAGE, 'mx.example.net');
      assert.equal(first.eod?.code, 250);
      assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
      t.write(`DATA\r\n${MESSAGE}.\r\n`);
      assert.equal((await t.reply()).code, 554);
      await t.closed;
    });
  });
});

/** A reply reader on a TLS socket (SmtpTalk reads the plain one). */
function tlsTalk(secure: tls.TLSSocket): { write(s: string): void; reply(): Promise<number>; closed: Promise<void> } {
  let buf = '';
  const waiters: (() => void)[] = [];
  secure.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    waiters.splice(0).forEach((w) => w());
  });
  const closed = new Promise<void>((resolve) => secure.once('close', () => resolve()));
  return {
    write: (s) => void secure.write(s),
    async reply() {
      for (;;) {
        const m = /^(?:\d{3}-[^\r\n]*\r\n)*(\d{3}) [^\r\n]*\r\n/.exec(buf);
        if (m) {
          buf = buf.slice(m[0].length);
          return Number(m[1]);
        }
        await Promise.race([new Promise<void>((r) => waiters.push(r)), closed.then(() => Promise.reject(new Error(`closed; buffered: ${buf}`)))]);
      }
    },
    closed,
  };
}

describe('earlytalker after STARTTLS', () => {
  test('the input is watched on the TLS socket: a polite client passes at DATA, one sending the body with DATA does not', async () => {
    const { key, cert } = selfSignedCert();
    const dir = mkdtempSync(join(tmpdir(), 'pq-et-tls-'));
    writeFileSync(join(dir, 'key.pem'), key);
    writeFileSync(join(dir, 'cert.pem'), cert);
    await withProxy(config({ check_at: 'data' }, { tls: { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') } }), async (proxy) => {
      const before = downstream.messages.length;
      for (const rude of [false, true]) {
        const t = await SmtpTalk.connect(proxy.port);
        await t.cmd('EHLO mx.example.net');
        assert.equal((await t.cmd('STARTTLS')).code, 220);
        const secure = tls.connect({ socket: t.socket, rejectUnauthorized: false });
        await new Promise((r) => secure.once('secureConnect', r));
        const s = tlsTalk(secure);
        s.write('EHLO mx.example.net\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\n');
        assert.equal(await s.reply(), 250);
        assert.equal(await s.reply(), 250);
        assert.equal(await s.reply(), 250);
        if (rude) {
          s.write(`DATA\r\n${MESSAGE}.\r\n`);
          assert.equal(await s.reply(), 554);
          await s.closed;
        } else {
          s.write('DATA\r\n');
          assert.equal(await s.reply(), 354);
          s.write(`${MESSAGE}.\r\nQUIT\r\n`);
          assert.equal(await s.reply(), 250);
          assert.equal(await s.reply(), 221);
        }
        secure.destroy();
      }
      assert.equal(downstream.messages.length, before + 1, 'only the polite client\'s message');
    });
  });
});

describe('earlytalker behind Postfix and proxies', () => {
  test('postfix mode: nothing is checked (the peer is Postfix), skip recorded, logged once at start', async () => {
    await withProxy(
      {
        mode: 'postfix',
        downstream: { address: `127.0.0.1:${downstream.port}` },
        plugins: [{ earlytalker: { check_at: 'both', wait: 1 } }],
      },
      async (proxy) => {
        const before = downstream.messages.length;
        const started = Date.now();
        // Talks before the greeting and sends the body with DATA: Postfix never does, but if it did it would not count.
        const t = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
        t.write('EHLO postfix.example.test\r\n');
        assert.equal((await t.reply()).code, 220);
        assert.ok(Date.now() - started < 900, 'no greeting delay');
        assert.equal((await t.reply()).code, 250);
        assert.equal((await t.cmd('XFORWARD ADDR=192.0.2.7 NAME=mx.example.net HELO=mx.example.net PROTO=ESMTP')).code, 250);
        assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
        assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
        t.write(`DATA\r\n${MESSAGE}.\r\n`);
        assert.equal((await t.reply()).code, 354);
        assert.equal((await t.reply()).code, 250);
        await t.quit();
        assert.equal(downstream.messages.length, before + 1);
        assert.match(loggedResults(proxy).at(-1)!.earlytalker!, /skip=postfix mode/);
        assert.equal(proxy.log.lines.filter((l) => /earlytalker checks nothing/.test(l.msg)).length, 1);
      },
    );
  });

  test('a client described by XCLIENT in standalone mode is not judged by the proxy\'s timing', async () => {
    const hooks = await loadPlugin(plugin, { check_at: 'both', wait: 0 });
    const ctx = makeContext({ name: 'earlytalker' });
    (ctx.conn as { client: unknown }).client = { addr: '192.0.2.9', port: 1, via: 'xclient' };
    (ctx.conn as { input: unknown }).input = { talkedBeforeGreeting: true, hasUnreadInput: () => true };
    assert.equal((await callHook(hooks, 'connect', ctx)).decision, Decision.DECLINED);
    assert.deepEqual(ctx.myResults()!.skip, ['connect: client described by XCLIENT']);
  });

  test('without input timing (no live socket) it records skip and declines', async () => {
    const hooks = await loadPlugin(plugin, { wait: 0 });
    const ctx = makeContext({ name: 'earlytalker' });
    assert.equal((await callHook(hooks, 'connect', ctx)).decision, Decision.DECLINED);
    assert.deepEqual(ctx.myResults()!.skip, ['connect: no input timing']);
  });

  test('options are validated: unknown keys and out-of-range waits are errors', async () => {
    await assert.rejects(loadPlugin(plugin, { wiat: 1 }), /wiat/);
    await assert.rejects(loadPlugin(plugin, { wait: 21 }));
    await assert.rejects(loadPlugin(plugin, { check_at: 'helo' }));
    const log = memoryLogger();
    await loadPlugin(plugin, {}, { mode: 'postfix', log });
    assert.equal(log.entries.length, 1);
  });
});
