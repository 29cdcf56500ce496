import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spoolBuffer } from '../../src/message/spool';
import { toCrlf, type SpooledMessage } from '../../src/message/message';
import { collect } from './helpers';

const tmp = mkdtempSync(join(tmpdir(), 'prequeue-message-test-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

const head = 'From: a@example.test\r\nSubject: s\r\n\r\n';
const body = 'line 1\r\nline 2\r\n.line 3\r\n';
const input = Buffer.from(head + body);

/** The same message in memory and in a temp file. */
async function both(): Promise<Array<[string, SpooledMessage]>> {
  return [
    ['memory', await spoolBuffer(input)],
    ['file', await spoolBuffer(input, { memoryThreshold: 8, tmpDir: tmp })],
  ];
}

async function text(msg: SpooledMessage): Promise<string> {
  const out = await collect(msg.stream());
  assert.equal(msg.size(), out.length, 'size() is exact');
  const b = await collect(msg.bodyStream());
  assert.equal(msg.bodySize(), b.length, 'bodySize() is exact');
  return out.toString();
}

test('originalBody, bodySize, bodyBuffer of an unedited message', async () => {
  for (const [name, msg] of await both()) {
    assert.deepEqual(msg.originalBody(), { kind: 'range', start: 0, end: body.length }, name);
    assert.equal(msg.bodySize(), body.length);
    assert.equal((await msg.bodyBuffer()).toString(), body);
    assert.equal(await text(msg), head + body);
    assert.equal(msg.bodyModified, false);
    await msg.dispose();
  }
});

test('appendBody / prependBody', async () => {
  for (const [name, msg] of await both()) {
    msg.appendBody('-- \r\nfooter\r\n');
    msg.prependBody(Buffer.from('top\r\n'));
    msg.appendBody(Buffer.alloc(0));
    assert.equal(await text(msg), head + 'top\r\n' + body + '-- \r\nfooter\r\n', name);
    assert.equal(msg.receivedSize, input.length);
    await msg.dispose();
  }
});

test('receivedBodyStream gives the body as received, whatever was changed since', async () => {
  for (const [name, msg] of await both()) {
    msg.appendBody('-- \r\nfooter\r\n');
    msg.replaceBody([Buffer.from('new\r\n'), ...msg.bodyParts()]);
    assert.equal((await collect(msg.receivedBodyStream())).toString(), body, name);
    assert.equal((await collect(msg.bodyStream())).toString(), 'new\r\n' + body + '-- \r\nfooter\r\n', 'the current body is untouched');
    await msg.dispose();
  }
});

test('replaceBody with ranges of the received body and new parts', async () => {
  for (const [name, msg] of await both()) {
    const orig = msg.originalBody();
    msg.replaceBody([
      { kind: 'range', start: 8, end: 16 }, // "line 2\r\n"
      Buffer.from('new\r\n'),
      { kind: 'range', start: 0, end: 8 }, // "line 1\r\n"
      { kind: 'range', start: 3, end: 3 }, // empty: dropped
      orig,
    ]);
    assert.equal(await text(msg), head + 'line 2\r\nnew\r\nline 1\r\n' + body, name);
    assert.equal((await msg.bodyBuffer()).toString(), 'line 2\r\nnew\r\nline 1\r\n' + body);
    assert.equal(msg.bodyParts().length, 4);
    // Back to the original, and a replacement after an edit still refers to the received body.
    msg.replaceBody([orig]);
    assert.equal(await text(msg), head + body);
    msg.replaceBody([]);
    assert.equal(await text(msg), head);
    await msg.dispose();
  }
});

test('replaceBody refuses ranges outside the received body and odd parts', async () => {
  const msg = await spoolBuffer(input);
  const len = body.length;
  assert.throws(() => msg.replaceBody([{ kind: 'range', start: 0, end: len + 1 }]), RangeError);
  assert.throws(() => msg.replaceBody([{ kind: 'range', start: -1, end: 2 }]), RangeError);
  assert.throws(() => msg.replaceBody([{ kind: 'range', start: 3, end: 2 }]), RangeError);
  assert.throws(() => msg.replaceBody([{ kind: 'range', start: 0.5, end: 2 }]), RangeError);
  assert.throws(() => msg.replaceBody([{} as never]), TypeError);
  assert.equal(await text(msg), head + body, 'unchanged after refused edits');
});

test('a range cut inside a CRLF makes streaming fail instead of relaying a bare CR/LF', async () => {
  for (const [name, msg] of await both()) {
    msg.replaceBody([{ kind: 'range', start: 0, end: 7 }, Buffer.from('X\r\n')]); // "line 1\r" + "X"
    await assert.rejects(collect(msg.stream()), /bare CR/, name);
    msg.replaceBody([{ kind: 'range', start: 7, end: 16 }]); // "\nline 2\r\n"
    await assert.rejects(collect(msg.bodyStream()), /bare LF/, name);
    msg.replaceBody([{ kind: 'range', start: 0, end: 7 }]);
    await assert.rejects(collect(msg.bodyStream()), /bare CR/, name);
    // Cutting a CRLF and putting it back together is fine.
    msg.replaceBody([{ kind: 'range', start: 0, end: 7 }, { kind: 'range', start: 7, end: body.length }]);
    assert.equal(await text(msg), head + body);
    await msg.dispose();
  }
});

test('added data gets CRLF line ends, so no bare newline (and no smuggling) can be added', async () => {
  const msg = await spoolBuffer(input);
  msg.appendBody('evil\n.\nMAIL FROM:<x@y>\r\n.\r\rend\r');
  assert.equal(await text(msg), head + body + 'evil\r\n.\r\nMAIL FROM:<x@y>\r\n.\r\n\r\nend\r\n');
  assert.equal(toCrlf(Buffer.from('a\r\nb')).toString(), 'a\r\nb');
  const clean = Buffer.from('x\r\n');
  assert.equal(toCrlf(clean), clean, 'clean data is not copied');
});

test('bodyTail reads only the end, across parts, from memory and file', async () => {
  for (const [name, msg] of await both()) {
    assert.equal((await msg.bodyTail(8)).toString(), 'line 3\r\n', name);
    assert.equal((await msg.bodyTail(0)).length, 0);
    assert.equal((await msg.bodyTail(10_000)).toString(), body);
    msg.appendBody('tail\r\n');
    assert.equal((await msg.bodyTail(10)).toString(), ' 3\r\ntail\r\n');
    msg.replaceBody([{ kind: 'range', start: 0, end: 8 }, Buffer.from('x\r\n'), { kind: 'range', start: 8, end: 16 }]);
    assert.equal((await msg.bodyTail(12)).toString(), '\nx\r\nline 2\r\n');
    assert.equal((await msg.bodyTail(100)).toString(), 'line 1\r\nx\r\nline 2\r\n');
    await msg.dispose();
  }
});

test('bodyBuffer refuses bodies over the limit with a clear error', async () => {
  const msg = await spoolBuffer(input, { memoryThreshold: 8, tmpDir: tmp });
  await assert.rejects(msg.bodyBuffer(10), (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, 'ERR_BODY_TOO_LARGE');
    assert.match(err.message, /message body is 25 bytes, more than the 10 bytes/);
    return true;
  });
  assert.equal((await msg.bodyBuffer(25)).toString(), body);
  // The Buffer is a copy: changing it does not change the message.
  const b = await msg.bodyBuffer();
  b.fill(0);
  assert.equal((await msg.bodyBuffer()).toString(), body);
  await msg.dispose();
});

test('dispose removes the temp file; the message cannot be read afterwards', async () => {
  const msg = await spoolBuffer(input, { memoryThreshold: 8, tmpDir: tmp });
  const path = msg.tempPath!;
  assert.ok(existsSync(path));
  await msg.dispose();
  assert.equal(existsSync(path), false);
  await msg.dispose();
  await assert.rejects(msg.bodyBuffer(), /disposed/);
  await assert.rejects(collect(msg.stream()), /disposed/);

  const mem = await spoolBuffer(input);
  assert.equal(mem.tempPath, undefined);
  await mem.dispose();
  await assert.rejects(mem.bodyTail(3), /disposed/);
});

test('streams are snapshots: edits after stream() do not leak into it', async () => {
  const msg = await spoolBuffer(input);
  const s = msg.stream();
  msg.appendBody('later\r\n');
  msg.headers.append('X-Later', 'yes');
  assert.equal((await collect(s)).toString(), head + body);
});
