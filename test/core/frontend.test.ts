/**
 * What the client sees of the front end: EHLO keywords, STARTTLS both ways,
 * XCLIENT toward the downstream, the limits, and JSON logging.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { FakeSmtpServer, selfSignedCert } from '../helpers/fake-smtp-server';
import { closedAfterEach, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { createLogger } from '../../src/log';

const env = closedAfterEach();

async function setup(config: Record<string, unknown> = {}): Promise<TestProxy> {
  env.downstream = await FakeSmtpServer.start();
  env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}` }, ...config });
  return env.proxy;
}

function certFiles(): { key: string; cert: string } {
  const { key, cert } = selfSignedCert();
  const dir = mkdtempSync(join(tmpdir(), 'pq-tls-'));
  writeFileSync(join(dir, 'key.pem'), key);
  writeFileSync(join(dir, 'cert.pem'), cert);
  return { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') };
}

describe('EHLO', () => {
  test('advertises the extensions; XFORWARD/XCLIENT only to trusted peers; no STARTTLS without a certificate', async () => {
    const p = await setup({ limits: { message_size: 1234567 } });
    const t = await SmtpTalk.connect(p.port);
    const ehlo = await t.cmd('EHLO c.example');
    const kw = ehlo.lines.slice(1);
    for (const k of ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'DSN', 'SIZE 1234567']) assert.ok(kw.includes(k), `${k} in ${kw}`);
    assert.ok(kw.includes('XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE'));
    assert.ok(kw.some((k) => k.startsWith('XCLIENT ')));
    assert.ok(!kw.includes('STARTTLS'));
    assert.ok(!kw.some((k) => k.startsWith('AUTH')));
    await t.quit();
  });

  test('a peer outside trusted_proxies sees neither XFORWARD nor XCLIENT', async () => {
    const p = await setup({ trusted_proxies: ['10.9.8.7'] });
    const t = await SmtpTalk.connect(p.port);
    const kw = (await t.cmd('EHLO c.example')).lines;
    assert.ok(!kw.some((k) => /^X(FORWARD|CLIENT)/.test(k)));
    await t.quit();
  });
});

describe('STARTTLS', () => {
  test('inbound: offered with a certificate; a message sent over TLS is marked ESMTPS', async () => {
    const files = certFiles();
    const p = await setup({ tls: files });
    const t = await SmtpTalk.connect(p.port);
    assert.ok((await t.cmd('EHLO c.example')).lines.includes('STARTTLS'));
    assert.equal((await t.cmd('STARTTLS')).code, 220);
    const secure = tls.connect({ socket: t.socket, rejectUnauthorized: false });
    await new Promise((r) => secure.once('secureConnect', r));
    const lines: string[] = [];
    const read = (): Promise<string> =>
      new Promise((resolve) => {
        let buf = '';
        const on = (d: Buffer): void => {
          buf += d.toString();
          if (/(^|\r\n)\d{3} [^\r\n]*\r\n$/.test(buf)) {
            secure.off('data', on);
            resolve(buf);
          }
        };
        secure.on('data', on);
      });
    const say = async (line: string): Promise<string> => {
      secure.write(line + '\r\n');
      const r = await read();
      lines.push(r);
      return r;
    };
    assert.match(await say('EHLO c.example'), /^250/);
    assert.match(await say('MAIL FROM:<a@example.net>'), /^250/);
    assert.match(await say('RCPT TO:<b@example.test>'), /^250/);
    assert.match(await say('DATA'), /^354/);
    assert.match(await say('Subject: tls\r\n\r\nsecret\r\n.'), /^250/);
    secure.end('QUIT\r\n');
    const m = env.downstream!.messages[0]!;
    assert.match(m.data.toString(), /with ESMTPS id/);
  });

  test('toward the downstream: required STARTTLS upgrades before MAIL', async () => {
    env.downstream = await FakeSmtpServer.start({ tls: selfSignedCert() });
    env.proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${env.downstream.port}`, starttls: 'required', tls: { reject_unauthorized: false } },
    });
    const t = await SmtpTalk.connect(env.proxy.port);
    assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\ny\r\n')).eod?.code, 250);
    await t.quit();
    assert.equal(env.downstream!.messages[0]!.tls, true);
  });

  test('toward the downstream: required STARTTLS that is not offered gives 451 at MAIL', async () => {
    env.downstream = await FakeSmtpServer.start();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}`, starttls: 'required' } });
    const t = await SmtpTalk.connect(env.proxy.port);
    await t.cmd('EHLO c.example');
    const r = await t.cmd('MAIL FROM:<a@example.net>');
    assert.equal(r.code, 451);
    assert.equal(r.enhanced, '4.7.5');
    await t.quit();
  });
});

describe('XCLIENT toward the downstream (standalone)', () => {
  test('the downstream is told the real client, then greeted with its HELO', async () => {
    env.downstream = await FakeSmtpServer.start();
    env.proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${env.downstream.port}`, xclient: true } });
    const t = await SmtpTalk.connect(env.proxy.port);
    assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\ny\r\n', 'helo.client.example')).eod?.code, 250);
    await t.quit();
    const m = env.downstream.messages[0]!;
    assert.match(m.xclient.join(' '), /ADDR=127\.0\.0\.1/);
    assert.match(m.xclient.join(' '), /HELO=helo\.client\.example/);
    assert.equal(m.helo, 'helo.client.example');
  });
});

describe('limits', () => {
  test('too many recipients: 452', async () => {
    const p = await setup({ limits: { recipients: 2 } });
    const t = await SmtpTalk.connect(p.port);
    await t.cmd('EHLO c.example');
    await t.cmd('MAIL FROM:<a@example.net>');
    assert.equal((await t.cmd('RCPT TO:<r1@example.test>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<r2@example.test>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<r3@example.test>')).code, 452);
    await t.quit();
  });

  test('connections in total and per client address: 421', async () => {
    const p = await setup({ limits: { connections: 3, connections_per_client: 2 } });
    const a = await SmtpTalk.connect(p.port);
    const b = await SmtpTalk.connect(p.port);
    const c = await SmtpTalk.connect(p.port, '127.0.0.1', false);
    const refused = await c.reply();
    assert.equal(refused.code, 421);
    assert.match(refused.lines.join(' '), /from your address/);
    await c.closed;
    await a.quit();
    await new Promise((r) => setTimeout(r, 100));
    const d = await SmtpTalk.connect(p.port);
    assert.equal(d.greeting.code, 220, 'a slot is free again');
    await Promise.all([b.quit(), d.quit()]);
  });

  test('idle timeout: 421 and close', async () => {
    const p = await setup({ limits: { idle_timeout: 0.3 } });
    const t = await SmtpTalk.connect(p.port);
    const r = await t.reply(3000);
    assert.equal(r.code, 421);
    await t.closed;
  });
});

describe('logging', () => {
  test('JSON format: one object a line with the fields', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pq-log-'));
    const file = join(dir, 'prequeue.log');
    const log = createLogger({ level: 'info', format: 'json', file });
    log.child({ conn: 'abc' }).info('transaction', { sender: '<a@b.example>', size: 12 });
    log.debug('not at info');
    await new Promise((r) => setTimeout(r, 300));
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    assert.equal(lines.length, 1);
    const obj = JSON.parse(lines[0]!);
    assert.equal(obj.message, 'transaction');
    assert.equal(obj.conn, 'abc');
    assert.equal(obj.size, 12);
    assert.equal(obj.level, 'info');
  });

  test('the transaction line carries client, helo, sender, recipients, size, results, downstream reply and time', async () => {
    const p = await setup({ plugins: [{ headers: { reject: false } }] });
    const t = await SmtpTalk.connect(p.port);
    await t.send('a@example.net', ['b@example.test'], 'Subject: no date or from\r\n\r\nx\r\n', 'helo.example');
    await t.quit();
    const line = p.log.lines.find((l) => l.msg === 'transaction' && l.meta.reply !== undefined && String(l.meta.reply).startsWith('250'));
    assert.ok(line, 'a transaction line');
    const m = line.meta;
    assert.equal(m.client, '127.0.0.1');
    assert.equal(m.helo, 'helo.example');
    assert.equal(m.sender, '<a@example.net>');
    assert.equal(m.recipients, 'b@example.test');
    assert.ok((m.size as number) > 0);
    assert.match(String(m.downstream), /^250/);
    assert.ok(typeof m.ms === 'number');
    assert.match(JSON.stringify(m.results), /headers/);
    assert.ok(m.conn && m.txn);
  });

  test('each connection logs under one id, the same as smtp-server gives it, and no two connections share one', async () => {
    const p = await setup();
    const a = await SmtpTalk.connect(p.port);
    const b = await SmtpTalk.connect(p.port);
    const frontend = (p.server as unknown as { smtp: { connections: Set<{ id: string }> } }).smtp;
    const ids = [...frontend.connections].map((c) => c.id);
    assert.equal(ids.length, 2);
    assert.notEqual(ids[0], ids[1]);
    await a.cmd('EHLO a.example');
    await b.cmd('EHLO b.example');
    await a.quit();
    await b.quit();
    // The session's own log lines (the dialogue at debug) name the connection by the front end's id.
    const logged = new Set(p.log.lines.filter((l) => /^[CS]: /.test(l.msg)).map((l) => l.meta.conn));
    assert.deepEqual([...logged].sort(), [...ids].sort());
  });
});
