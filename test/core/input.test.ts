/**
 * Hostile and broken input: SMTP smuggling variants, NUL bytes, overlong
 * lines, oversize messages. Each gets a clear reply, nothing is delivered
 * wrongly, and the server keeps serving.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

const SMUGGLE_TAIL = 'MAIL FROM:<admin@victim.example>\r\nRCPT TO:<target@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n';

/** End-of-data lookalikes that some MTAs accept (SMTP smuggling, 2023). */
const VARIANTS: [string, string][] = [
  ['LF.LF', '\n.\n'],
  ['CRLF.LF', '\r\n.\n'],
  ['LF.CRLF', '\n.\r\n'],
  ['CR.CR', '\r.\r'],
  ['CRLF.CR', '\r\n.\r'],
  ['CR.CRLF', '\r.\r\n'],
];

let downstream: FakeSmtpServer;
let strict: TestProxy;
let lenient: TestProxy;

before(async () => {
  downstream = await FakeSmtpServer.start();
  const common = {
    mode: 'standalone',
    received_header: 'never',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    limits: { message_size: 10000, data_line_length: 998, command_line_length: 1024 },
  };
  strict = await startProxy(common);
  lenient = await startProxy({ ...common, data: { bare_newline: 'normalize', nul: 'keep' } });
});
after(async () => {
  await strict.close();
  await lenient.close();
  await downstream.close();
});

async function openData(port: number): Promise<SmtpTalk> {
  const t = await SmtpTalk.connect(port);
  assert.equal((await t.cmd('EHLO c.example')).code, 250);
  assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
  assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await t.cmd('DATA')).code, 354);
  return t;
}

/** After a refused message the same connection must still deliver a clean one. */
async function stillServes(t: SmtpTalk): Promise<void> {
  const before = downstream.messages.length;
  const r = await t.send('a@example.net', ['b@example.test'], 'Subject: clean\r\n\r\nclean\r\n');
  assert.equal(r.eod?.code, 250);
  assert.equal(downstream.messages.length, before + 1);
}

describe('SMTP smuggling (bare_newline: reject, the default)', () => {
  for (const [name, seq] of VARIANTS) {
    test(`${name}: refused with 550 5.6.0, nothing relayed, nothing smuggled`, async () => {
      const before = downstream.messages.length;
      const t = await openData(strict.port);
      t.write(`Subject: innocent\r\n\r\nhello${seq}${SMUGGLE_TAIL}.\r\n`);
      const r = await t.reply();
      assert.equal(r.code, 550);
      assert.equal(r.enhanced, '5.6.0');
      assert.equal(downstream.messages.length, before, 'nothing relayed');
      await stillServes(t);
      await t.quit();
      assert.ok(!downstream.messages.some((m) => m.mailFrom.includes('admin@victim')), 'no smuggled transaction');
    });
  }
});

describe('SMTP smuggling (bare_newline: normalize)', () => {
  for (const [name, seq] of VARIANTS) {
    test(`${name}: one message, the lookalike neutralised inside it`, async () => {
      const before = downstream.messages.length;
      const t = await openData(lenient.port);
      t.write(`Subject: innocent\r\n\r\nhello${seq}${SMUGGLE_TAIL}.\r\n`);
      const r = await t.reply();
      assert.equal(r.code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1, 'exactly one message');
      const m = downstream.messages[before]!;
      const data = m.data.toString('latin1');
      assert.ok(data.includes('smuggled body'), 'the smuggled text stays inside the one message');
      assert.ok(!/[^\r]\n|\r[^\n]/.test(data), 'only CRLF line ends left');
      // The lone dot line was dot-stuffed on the wire, so it could not end the message downstream.
      assert.ok(m.rawData.toString('latin1').includes('\r\n..\r\n'));
      assert.ok(!downstream.messages.some((x) => x.mailFrom.includes('admin@victim')));
    });
  }
});

describe('NUL bytes', () => {
  test('NUL in the message: 550 5.6.0 by default', async () => {
    const before = downstream.messages.length;
    const t = await openData(strict.port);
    t.write('Subject: nul\r\n\r\nbad\x00byte\r\n.\r\n');
    const r = await t.reply();
    assert.equal(r.code, 550);
    assert.match(r.lines.join(' '), /NUL/);
    assert.equal(downstream.messages.length, before);
    await stillServes(t);
    await t.quit();
  });

  test('nul: keep relays it byte-exact', async () => {
    const before = downstream.messages.length;
    const t = await openData(lenient.port);
    t.write('Subject: nul\r\n\r\nbad\x00byte\r\n.\r\n');
    assert.equal((await t.reply()).code, 250);
    await t.quit();
    assert.ok(downstream.messages[before]!.data.includes(Buffer.from('bad\x00byte')));
  });

  test('NUL in a command argument: 501, the session goes on', async () => {
    const t = await SmtpTalk.connect(strict.port);
    await t.cmd('EHLO c.example');
    const r = await t.cmd('MAIL FROM:<a\x00b@example.net>');
    assert.equal(r.code, 501);
    await stillServes(t);
    await t.quit();
  });
});

describe('overlong lines', () => {
  test('a command line over the limit: 421 with a reason, and the server keeps serving others', async () => {
    const t = await SmtpTalk.connect(strict.port);
    const r = await t.cmd('EHLO ' + 'x'.repeat(3000));
    assert.equal(r.code, 421);
    assert.match(r.lines.join(' '), /too long/i);
    await t.closed;
    const other = await SmtpTalk.connect(strict.port);
    await stillServes(other);
    await other.quit();
  });

  test('a message line over data_line_length: 550 5.6.0, nothing relayed', async () => {
    const before = downstream.messages.length;
    const t = await openData(strict.port);
    t.write(`Subject: long\r\n\r\n${'y'.repeat(1500)}\r\n.\r\n`);
    const r = await t.reply();
    assert.equal(r.code, 550);
    assert.match(r.lines.join(' '), /longer than 998/);
    assert.equal(downstream.messages.length, before);
    await stillServes(t);
    await t.quit();
  });

  test('a 998-character line starting with a dot is relayed unchanged', async () => {
    const before = downstream.messages.length;
    const line = '.' + 'z'.repeat(997);
    const t = await SmtpTalk.connect(strict.port);
    const r = await t.send('a@example.net', ['b@example.test'], `Subject: dots\r\n\r\n${line}\r\n`);
    assert.equal(r.eod?.code, 250);
    await t.quit();
    assert.equal(downstream.messages[before]!.data.toString(), `Subject: dots\r\n\r\n${line}\r\n`);
  });
});

describe('oversize', () => {
  test('SIZE over the limit at MAIL: 552', async () => {
    const t = await SmtpTalk.connect(strict.port);
    await t.cmd('EHLO c.example');
    const r = await t.cmd('MAIL FROM:<a@example.net> SIZE=20000');
    assert.equal(r.code, 552);
    await stillServes(t);
    await t.quit();
  });

  test('a message over the limit: 552 5.3.4 after the data, nothing relayed', async () => {
    const before = downstream.messages.length;
    const t = await openData(strict.port);
    const body = ('a'.repeat(76) + '\r\n').repeat(300);
    t.write(`Subject: big\r\n\r\n${body}.\r\n`);
    const r = await t.reply();
    assert.equal(r.code, 552);
    assert.equal(r.enhanced, '5.3.4');
    assert.equal(downstream.messages.length, before);
    await stillServes(t);
    await t.quit();
  });
});
