/**
 * Cut-through (spool.cut_through): with no plugin that needs the whole message,
 * the message goes downstream as it arrives and only its final dot waits for
 * the client's. Whatever goes wrong before that dot, the downstream never gets
 * it and the client never gets a 250.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeSmtpServer, type FakeScript } from '../helpers/fake-smtp-server';
import { closedAfterEach, startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

const env = closedAfterEach();

async function setup(script: FakeScript = {}, extra: Record<string, unknown> = {}): Promise<TestProxy> {
  env.downstream = await FakeSmtpServer.start({ script });
  env.proxy = await startProxy({
    mode: 'standalone',
    received_header: 'never',
    plugins: [],
    downstream: { address: `127.0.0.1:${env.downstream.port}`, timeouts: { connect: 1, greeting: 0.5, command: 0.5, data: 0.5, eod: 0.5 } },
    ...extra,
  });
  return env.proxy;
}

/** A client in the middle of DATA (354 received). */
async function inData(p: TestProxy): Promise<SmtpTalk> {
  const t = await SmtpTalk.connect(p.port);
  await t.cmd('EHLO client.example.net');
  assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
  assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await t.cmd('DATA')).code, 354);
  return t;
}

/** Waits until the downstream's first connection has received `text`. */
async function downstreamSees(text: string, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!env.downstream!.sessions[0]?.raw.toString('latin1').includes(text)) {
    if (Date.now() > until) assert.fail(`the downstream never got ${JSON.stringify(text)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const HEAD = 'From: a@example.net\r\nSubject: cut\r\n\r\nfirst part\r\n..dot line\r\n';

test('the message reaches the downstream while it arrives; the final dot only after the client\'s, and the reply is the downstream\'s', async () => {
  const p = await setup({ eod: '250 2.0.0 Ok: queued as CUT1' });
  const t = await inData(p);
  t.write(HEAD);
  await downstreamSees('first part');
  const raw = env.downstream!.sessions[0]!.raw.toString('latin1');
  assert.ok(!raw.slice(raw.indexOf('DATA')).includes('\r\n.\r\n'), 'no final dot before the client sent one');
  assert.equal(env.downstream!.messages.length, 0);
  t.write(Buffer.from('second part \xe4\r\n.\r\n', 'latin1'));
  const r = await t.reply();
  assert.equal(r.code, 250);
  assert.deepEqual(r.lines, ['Ok: queued as CUT1']);
  assert.equal(env.downstream!.messages[0]!.data.toString('latin1'), 'From: a@example.net\r\nSubject: cut\r\n\r\nfirst part\r\n.dot line\r\nsecond part \xe4\r\n');
  t.destroy();
});

test('a bare LF after part of the message was relayed: 550 to the client, and the downstream gets neither the dot nor the bad chunk', async () => {
  const p = await setup();
  const t = await inData(p);
  t.write(HEAD);
  await downstreamSees('first part');
  t.write('smuggle\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n');
  const r = await t.reply();
  assert.equal(r.code, 550);
  await env.downstream!.sessions[0]!.whenClosed();
  assert.equal(env.downstream!.messages.length, 0);
  assert.ok(!env.downstream!.sessions[0]!.raw.toString('latin1').includes('smuggle'));
  // The client's connection goes on: the next message is relayed.
  const next = await t.send('a@example.net', ['b@example.test'], 'Subject: next\r\n\r\nok\r\n');
  assert.equal(next.eod?.code, 250);
  assert.equal(env.downstream!.messages.length, 1);
  t.destroy();
});

test('over the size limit: 552, and the downstream gets no dot', async () => {
  const p = await setup({}, { limits: { message_size: 2000 } });
  const t = await inData(p);
  t.write(HEAD + 'x'.repeat(70).concat('\r\n').repeat(60) + '.\r\n');
  const r = await t.reply();
  assert.equal(r.code, 552);
  await env.downstream!.sessions[0]!.whenClosed();
  assert.equal(env.downstream!.messages.length, 0);
  t.destroy();
});

for (const [label, script, code] of [
  ["refuses DATA: the client's message is taken in and answered with the refusal", { data: '554 5.7.1 no data today' }, 554],
  ['drops the connection mid-message: 451, never 250', { data: { closeMidData: 1000 } }, 451],
] as [string, FakeScript, number][]) {
  test(`the downstream ${label}`, async () => {
    const p = await setup(script);
    const t = await inData(p);
    t.write(HEAD + 'y'.repeat(70).concat('\r\n').repeat(3000) + '.\r\n');
    const r = await t.reply();
    assert.equal(r.code, code);
    assert.equal(env.downstream!.messages.length, 0);
    t.destroy();
  });
}

test('the client goes away mid-message: the downstream link is dropped without the dot', async () => {
  const p = await setup();
  const t = await inData(p);
  t.write(HEAD);
  await downstreamSees('first part');
  t.destroy();
  await env.downstream!.sessions[0]!.whenClosed();
  assert.equal(env.downstream!.messages.length, 0);
});

for (const [label, extra] of [
  ['spool.cut_through: false', { spool: { cut_through: false } }],
  ['a data_post plugin', { plugins: [{ headers: { reject: false } }] }],
  ['a Received header to add', { received_header: 'always' }],
] as [string, Record<string, unknown>][]) {
  test(`with ${label} the message is spooled whole before anything goes downstream`, async () => {
    const p = await setup({}, extra);
    const t = await inData(p);
    t.write(HEAD);
    await new Promise((r) => setTimeout(r, 300));
    const raw = env.downstream!.sessions[0]?.raw.toString('latin1') ?? '';
    assert.ok(!raw.includes('first part'), 'nothing of the message before its end');
    assert.ok(!raw.includes('DATA'), 'not even DATA');
    t.write('end\r\n.\r\n');
    assert.equal((await t.reply()).code, 250);
    assert.match(env.downstream!.messages[0]!.data.toString('latin1'), /first part\r\n\.dot line\r\nend\r\n$/);
    t.destroy();
  });
}
