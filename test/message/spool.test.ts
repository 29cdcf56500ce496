import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool, spoolBuffer, type SpoolOptions } from '../../src/message/spool';
import type { HeaderBlock } from '../../src/message/headers';
import { chunkings, collect, feed, randomChunks, rng } from './helpers';

const tmp = mkdtempSync(join(tmpdir(), 'prequeue-spool-test-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

function sample(): Buffer {
  const eight = Buffer.alloc(256);
  for (let i = 0; i < 256; i++) eight[i] = i === 10 || i === 13 || i === 0 ? 0x41 : i;
  return Buffer.concat([
    Buffer.from(
      'Received: from client.example.net (client [192.0.2.1])\r\n' +
        '\tby mx.example.test (Postfix) with ESMTP\r\n' +
        'Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n' +
        'X-Latin1: caf\xe9 \xa0\r\n' +
        '\r\n',
      'latin1',
    ),
    Buffer.from('.a line starting with a dot\r\n..two dots\r\n.\r\n\r\n'),
    Buffer.from('x'.repeat(5000) + '\r\n'),
    eight,
    Buffer.from('\r\nlast line\r\n'),
  ]);
}

test('round trip in memory: stream() is the input, byte for byte', async () => {
  const input = sample();
  for (const [name, chunks] of chunkings(input)) {
    const { spool, msg } = await feed(chunks, { maxLineLength: 0 });
    assert.equal(spool.tempPath, undefined, name);
    assert.deepEqual(spool.violations, [], name);
    assert.equal(spool.size, input.length, name);
    assert.equal(msg.receivedSize, input.length, name);
    assert.equal(msg.size(), input.length, name);
    assert.ok(msg.hasBody);
    assert.ok((await collect(msg.stream())).equals(input), name);
    await msg.dispose();
  }
});

test('round trip through the temp file (tiny memoryThreshold), file mode 0600, removed by dispose', async () => {
  const input = sample();
  for (const [name, chunks] of chunkings(input)) {
    const { spool, msg } = await feed(chunks, { memoryThreshold: 64, tmpDir: tmp });
    const path = spool.tempPath;
    assert.ok(path && existsSync(path), name);
    assert.equal(msg.tempPath, path);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(statSync(path).size, input.length);
    assert.ok((await collect(msg.stream())).equals(input), name);
    assert.equal(msg.size(), input.length);
    await msg.dispose();
    assert.equal(existsSync(path), false, `${name}: temp file removed`);
    await msg.dispose(); // idempotent
    await spool.dispose();
  }
  assert.deepEqual(readdirSync(tmp), []);
});

test('round trip of a large message with random chunk sizes, both storage paths', async () => {
  const next = rng(7);
  const input = Buffer.alloc(300_000);
  for (let i = 0; i < input.length; i++) input[i] = 32 + Math.floor(next() * 200);
  // Lines of varying length, all CRLF-terminated.
  for (let i = 50; i < input.length - 2; i += 20 + Math.floor(next() * 900)) {
    input[i] = 13;
    input[i + 1] = 10;
  }
  input[input.length - 2] = 13;
  input[input.length - 1] = 10;
  for (const threshold of [1 << 20, 1000]) {
    const { spool, msg } = await feed(randomChunks(input, 11, 20000), { memoryThreshold: threshold, tmpDir: tmp });
    assert.deepEqual(spool.violations, []);
    assert.equal(spool.tempPath !== undefined, threshold === 1000);
    assert.ok((await collect(msg.stream())).equals(input));
    assert.ok((await collect(msg.bodyStream())).equals(input)); // no header block: all body
    await msg.dispose();
  }
});

test('spool without a temp file: dispose is safe and idempotent', async () => {
  const spool = new Spool();
  spool.end(Buffer.from('Subject: x\r\n\r\nbody\r\n'));
  const msg = await spool.finish();
  await spool.dispose();
  await spool.dispose();
  await msg.dispose();
});

test('dispose before the end: later data is dropped, the file is removed, finish() rejects', async () => {
  const spool = new Spool({ memoryThreshold: 10, tmpDir: tmp });
  const done = spool.finish();
  spool.write(Buffer.from('Subject: x\r\n\r\n' + 'y'.repeat(100) + '\r\n'));
  await new Promise((r) => setImmediate(r));
  const path = spool.tempPath!;
  assert.ok(existsSync(path));
  await spool.dispose();
  assert.equal(existsSync(path), false);
  spool.end(Buffer.from('more\r\n'));
  await assert.rejects(done, /disposed/);
});

// ---------------------------------------------------------------------------
// Bare CR / bare LF

/** The reference: what 'normalize' must produce. */
function normalizeSlowly(b: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    if (c === 13) {
      out.push(13, 10);
      if (b[i + 1] === 10) i++;
    } else if (c === 10) {
      out.push(13, 10);
    } else out.push(c);
  }
  return Buffer.from(out);
}

function onlyCrlf(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 13 && b[i + 1] !== 10) return false;
    if (b[i] === 10 && b[i - 1] !== 13) return false;
  }
  return true;
}

const smuggling: Array<[string, string]> = [
  ['bare LF', 'Subject: a\r\n\r\nline one\nline two\r\n'],
  ['\\n.\\n', 'Subject: a\r\n\r\nhello\n.\nMAIL FROM:<x@y>\r\n'],
  ['\\r\\n.\\n', 'Subject: a\r\n\r\nhello\r\n.\nRCPT TO:<x@y>\r\n'],
  ['\\n.\\r\\n', 'Subject: a\r\n\r\nhello\n.\r\nDATA\r\n'],
  ['\\r.\\r', 'Subject: a\r\n\r\nhello\r.\rQUIT\r\n'],
  ['\\r.\\r\\n', 'Subject: a\r\n\r\nhello\r.\r\nQUIT\r\n'],
  ['bare LF in the header', 'Subject: a\nX-B: c\r\n\r\nbody\r\n'],
  ['bare CR at the very end', 'Subject: a\r\n\r\nbody\r'],
  ['bare LF at the very start', '\nSubject: a\r\n\r\nbody\r\n'],
  ['CR CR LF', 'Subject: a\r\n\r\nbody\r\r\n'],
  ['LF LF', 'Subject: a\r\n\r\nbody\n\n'],
];

test("bare newlines under 'reject': a violation under every chunking, bytes kept as they were", async () => {
  for (const [label, text] of smuggling) {
    const input = Buffer.from(text, 'latin1');
    for (const [name, chunks] of chunkings(input)) {
      const { spool, msg } = await feed(chunks);
      const kinds = spool.violations.map((v) => v.kind);
      assert.deepEqual(kinds, ['bare_newline'], `${label} / ${name}`);
      assert.match(spool.violations[0].detail, /^bare (CR|LF) at offset \d+$/);
      assert.ok((await collect(msg.stream())).equals(input), `${label} / ${name}: unchanged`);
      await msg.dispose();
    }
  }
});

test("bare newlines under 'normalize': no violation, CRLF only, same result under every chunking", async () => {
  for (const [label, text] of smuggling) {
    const input = Buffer.from(text, 'latin1');
    const expected = normalizeSlowly(input);
    for (const [name, chunks] of chunkings(input)) {
      const { spool, msg } = await feed(chunks, { bareNewline: 'normalize' });
      assert.deepEqual(spool.violations, [], `${label} / ${name}`);
      assert.ok(spool.normalized.count > 0);
      const out = await collect(msg.stream());
      assert.ok(onlyCrlf(out), `${label} / ${name}: only CRLF`);
      assert.equal(out.toString('latin1'), expected.toString('latin1'), `${label} / ${name}`);
      assert.equal(msg.size(), out.length);
      await msg.dispose();
    }
  }
  // The smuggled end-of-data now is an ordinary "." line that a dot-stuffer stuffs.
  const m = await spoolBuffer(Buffer.from('Subject: a\r\n\r\nhello\n.\nMAIL FROM:<x@y>\r\n'), { bareNewline: 'normalize' });
  assert.equal((await collect(m.bodyStream())).toString(), 'hello\r\n.\r\nMAIL FROM:<x@y>\r\n');
});

test('CRLF split by a chunk boundary is not a violation; CR then a non-LF in the next chunk is', async () => {
  const split = await feed([Buffer.from('Subject: a\r\n\r\nline\r'), Buffer.from('\nnext\r'), Buffer.from('\n')]);
  assert.deepEqual(split.spool.violations, []);
  assert.equal((await collect(split.msg.stream())).toString(), 'Subject: a\r\n\r\nline\r\nnext\r\n');

  const bad = await feed([Buffer.from('Subject: a\r\n\r\nline\r'), Buffer.from('.\r\n')]);
  assert.deepEqual(bad.spool.violations, [{ kind: 'bare_newline', detail: 'bare CR at offset 18' }]);

  const fixed = await feed([Buffer.from('Subject: a\r\n\r\nline\r'), Buffer.from('.\r'), Buffer.from('\r\n')], {
    bareNewline: 'normalize',
  });
  assert.deepEqual(fixed.spool.violations, []);
  assert.equal(fixed.spool.normalized.count, 2);
  assert.equal((await collect(fixed.msg.stream())).toString(), 'Subject: a\r\n\r\nline\r\n.\r\n\r\n');

  // The boundary state survives a chunk that is a lone CR.
  const lone = await feed([Buffer.from('a: b\r\n\r\nx'), Buffer.from('\r'), Buffer.from('\n')]);
  assert.deepEqual(lone.spool.violations, []);
});

test('random messages with random bare newlines: reject detection and normalize output match the reference', async () => {
  const next = rng(99);
  const alphabet = [13, 10, 46, 97, 98, 32];
  for (let round = 0; round < 150; round++) {
    const len = 1 + Math.floor(next() * 60);
    const b = Buffer.alloc(len);
    for (let i = 0; i < len; i++) b[i] = alphabet[Math.floor(next() * alphabet.length)];
    const clean = onlyCrlf(b) && b[b.length - 1] !== 13;
    for (const chunks of [[b], randomChunks(b, round, 4)]) {
      const r = await feed(chunks, { nul: 'keep' });
      assert.equal(r.spool.violations.length === 0, clean, JSON.stringify(b.toString('latin1')));
      const n = await feed(chunks, { bareNewline: 'normalize' });
      assert.equal((await collect(n.msg.stream())).toString('latin1'), normalizeSlowly(b).toString('latin1'));
    }
  }
});

// ---------------------------------------------------------------------------
// NUL, line length, header size, oversize

test("NUL: 'reject' records it with its offset, 'keep' keeps the byte", async () => {
  const input = Buffer.from('Subject: a\r\n\r\nab\0c\r\n', 'latin1');
  for (const [name, chunks] of chunkings(input)) {
    const r = await feed(chunks, { nul: 'reject' });
    assert.deepEqual(r.spool.violations, [{ kind: 'nul', detail: 'NUL byte at offset 16' }], name);
    const k = await feed(chunks, { nul: 'keep' });
    assert.deepEqual(k.spool.violations, [], name);
    assert.ok((await collect(k.msg.stream())).equals(input));
  }
});

test('line length limit, across chunk boundaries', async () => {
  const limit = 10;
  const ok = Buffer.from('a: 4567890\r\n\r\n1234567890\r\n' + '\r\n' + '1234567890');
  const long = Buffer.from('a: b\r\n\r\nshort\r\n12345678901\r\nshort\r\n');
  const longLast = Buffer.from('a: b\r\n\r\n12345678901');
  const longHeader = Buffer.from('a: 45678901\r\n\r\n');
  for (const [name, chunks] of chunkings(ok)) {
    assert.deepEqual((await feed(chunks, { maxLineLength: limit })).spool.violations, [], name);
  }
  for (const input of [long, longLast, longHeader]) {
    for (const [name, chunks] of chunkings(input)) {
      const { spool } = await feed(chunks, { maxLineLength: limit });
      assert.deepEqual(spool.violations, [{ kind: 'line_length', detail: 'line longer than 10 bytes' }], name);
    }
  }
  // Exactly the limit with the CR ending one chunk and the LF starting the next.
  const edge = await feed([Buffer.from('a: b\r\n\r\n1234567890\r'), Buffer.from('\n')], { maxLineLength: limit });
  assert.deepEqual(edge.spool.violations, []);
  // 0 means unlimited.
  assert.deepEqual((await feed([Buffer.from('x'.repeat(100_000) + '\r\n')])).spool.violations, []);
});

test('oversize: storing stops at maxSize, counting goes on, memory stays bounded', async () => {
  const chunk = Buffer.from('y'.repeat(1022) + '\r\n');
  for (const threshold of [1 << 20, 300]) {
    const spool = new Spool({ maxSize: 1000, memoryThreshold: threshold, tmpDir: tmp });
    const done = spool.finish();
    spool.write(Buffer.from('Subject: big\r\n\r\n'));
    for (let i = 0; i < 100; i++) {
      if (!spool.write(chunk)) await new Promise((r) => spool.once('drain', r));
      assert.ok(spool.storedSize <= 1000);
    }
    spool.end();
    const msg = await done;
    assert.equal(spool.size, 16 + 100 * 1024);
    assert.deepEqual(spool.violations, [{ kind: 'oversize', detail: 'message exceeds 1000 bytes' }]);
    assert.equal(spool.storedSize, 1000);
    assert.equal(msg.truncated, true);
    assert.equal(msg.receivedSize, 1000);
    if (spool.tempPath) assert.equal(statSync(spool.tempPath).size, 1000);
    assert.equal(msg.headers.get('subject'), 'big');
    await msg.dispose();
  }
  // Exactly maxSize is fine.
  const input = Buffer.from('a: b\r\n\r\n12\r\n');
  const exact = await spoolBuffer(input, { maxSize: input.length });
  assert.deepEqual(exact.violations, []);
});

test('header block over maxHeaderSize is a violation; the bytes stay intact', async () => {
  const input = Buffer.from('A: ' + 'x'.repeat(200) + '\r\nB: y\r\n\r\nbody\r\n');
  for (const [name, chunks] of chunkings(input)) {
    const { spool, msg } = await feed(chunks, { maxHeaderSize: 100 });
    assert.deepEqual(spool.violations.map((v) => v.kind), ['header_size'], name);
    assert.ok((await collect(msg.stream())).equals(input), name);
  }
  const fine = await feed([input], { maxHeaderSize: 300 });
  assert.deepEqual(fine.spool.violations, []);
});

test('several violations: the first of each kind is kept', async () => {
  const input = Buffer.from('a: b\r\n\r\n\0x\ny\n\0' + 'z'.repeat(20) + '\r\n', 'latin1');
  const { spool } = await feed([input], { maxLineLength: 10, maxSize: 30 });
  assert.deepEqual(
    spool.violations.map((v) => v.kind),
    ['nul', 'bare_newline', 'line_length', 'oversize'],
  );
  assert.equal(spool.violations[1].detail, 'bare LF at offset 10');
});

// ---------------------------------------------------------------------------
// 'headers' event

test("'headers' fires once, before the end, as soon as the header block is complete", async () => {
  const spool = new Spool();
  let seen: HeaderBlock | undefined;
  let fired = 0;
  spool.on('headers', (h) => {
    seen = h;
    fired++;
  });
  const done = spool.finish();
  spool.write(Buffer.from('Subject: early\r\nFrom: a@b\r\n'));
  await new Promise((r) => setImmediate(r));
  assert.equal(fired, 0, 'not before the empty line');
  spool.write(Buffer.from('\r'));
  await new Promise((r) => setImmediate(r));
  assert.equal(fired, 0, 'a CR alone does not end the block yet');
  spool.write(Buffer.from('\nbody starts'));
  await new Promise((r) => setImmediate(r));
  assert.equal(fired, 1);
  assert.equal(seen!.get('subject'), 'early');
  // Edits made at header time are kept in the message.
  seen!.prepend('X-Early', 'yes');
  spool.end(Buffer.from(' and ends\r\n'));
  const msg = await done;
  assert.equal(fired, 1);
  assert.equal(msg.headers, seen);
  assert.equal(
    (await collect(msg.stream())).toString(),
    'X-Early: yes\r\nSubject: early\r\nFrom: a@b\r\n\r\nbody starts and ends\r\n',
  );
});

test("'headers' fires when a non-header line ends the block, and at the end for a header-only message", async () => {
  const spool = new Spool();
  let fired = 0;
  spool.on('headers', () => fired++);
  spool.write(Buffer.from('Subject: x\r\nthis is not a header\r\n'));
  await new Promise((r) => setImmediate(r));
  assert.equal(fired, 1);
  spool.end();
  await spool.finish();

  const only = new Spool();
  let h: HeaderBlock | undefined;
  only.on('headers', (x) => (h = x));
  only.write(Buffer.from('Subject: x\r\nTo: y\r\n'));
  await new Promise((r) => setImmediate(r));
  assert.equal(h, undefined);
  only.end();
  const msg = await only.finish();
  assert.equal(h!.count('to'), 1);
  assert.equal(msg.hasBody, false);
});

// ---------------------------------------------------------------------------
// Speed: a 5 MB message through the temp file path with the default threshold

test('5 MB message: spooled quickly, streamed back exactly', async (t) => {
  const line = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n');
  const body = Buffer.alloc(5 * 1024 * 1024);
  for (let i = 0; i + line.length <= body.length; i += line.length) line.copy(body, i);
  body.fill(0x41, body.length - (body.length % line.length));
  body[body.length - 2] = 13;
  body[body.length - 1] = 10;
  const input = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), body]);
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i += 65536) chunks.push(input.subarray(i, i + 65536));
  const opts: Partial<SpoolOptions> = { maxSize: 10 * 1024 * 1024, maxLineLength: 998, tmpDir: tmp };
  await (await feed(chunks, opts)).msg.dispose(); // warm-up
  const t0 = process.hrtime.bigint();
  const { spool, msg } = await feed(chunks, opts);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.diagnostic(`spooling 5 MB in 64 KiB chunks took ${ms.toFixed(1)} ms`);
  assert.deepEqual(spool.violations, []);
  assert.ok(spool.tempPath);
  const out = await collect(msg.stream());
  assert.ok(out.equals(input));
  await msg.dispose();
});

test('a spool destroyed with an error removes its temp file by itself', async () => {
  const spool = new Spool({ memoryThreshold: 10, tmpDir: tmp });
  const done = spool.finish();
  spool.write(Buffer.from('x'.repeat(100) + '\r\n'));
  await new Promise((r) => setImmediate(r));
  const path = spool.tempPath!;
  assert.ok(existsSync(path));
  spool.destroy(new Error('client went away'));
  await assert.rejects(done, /client went away/);
  await spool.dispose();
  assert.equal(existsSync(path), false);
});

test('a temp file that cannot be created fails the spool', async () => {
  const spool = new Spool({ memoryThreshold: 10, tmpDir: join(tmp, 'does-not-exist') });
  const done = spool.finish();
  spool.end(Buffer.from('x'.repeat(100) + '\r\n'));
  await assert.rejects(done, { code: 'ENOENT' });
});
