import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderScanner, parseHeaderBlock } from '../../src/message/headers';
import { spoolBuffer } from '../../src/message/spool';
import { chunkings, collect } from './helpers';

const folded = Buffer.from(
  'Received: from a.example (a.example [192.0.2.1])\r\n' +
    '\tby mx.example.test (Postfix) with ESMTP;\r\n' +
    ' Sat, 22 Nov 2025 13:34:00 +0000\r\n' +
    'subject:   Hello   \r\n' +
    'RECEIVED: from b.example\r\n' +
    'X-Empty:\r\n' +
    'X-Obs  : obsolete syntax\r\n' +
    'To: a@example.test,\r\n' +
    '    b@example.test\r\n' +
    '\r\n' +
    'Body: not a header\r\n',
  'latin1',
);

test('parses folded fields; get/getAll/count ignore case; raw bytes kept', async () => {
  const msg = await spoolBuffer(folded);
  const h = msg.headers;
  assert.equal(h.fields().length, 6);
  assert.equal(
    h.get('received'),
    'from a.example (a.example [192.0.2.1])\tby mx.example.test (Postfix) with ESMTP; Sat, 22 Nov 2025 13:34:00 +0000',
  );
  assert.deepEqual(h.getAll('Received'), [h.get('received'), 'from b.example']);
  assert.equal(h.count('RECEIVED'), 2);
  assert.equal(h.get('Subject'), 'Hello');
  assert.equal(h.get('x-empty'), '');
  assert.equal(h.get('x-obs'), 'obsolete syntax');
  assert.equal(h.fields()[4].name, 'X-Obs');
  assert.equal(h.get('to'), 'a@example.test,    b@example.test');
  assert.equal(h.get('body'), undefined, 'after the empty line');
  assert.equal(h.count('nope'), 0);
  assert.deepEqual(h.getAll('nope'), []);
  assert.equal(
    h.fields()[0].raw.toString('latin1'),
    'Received: from a.example (a.example [192.0.2.1])\r\n\tby mx.example.test (Postfix) with ESMTP;\r\n Sat, 22 Nov 2025 13:34:00 +0000\r\n',
  );
  assert.ok(h.toBuffer().equals(folded.subarray(0, folded.indexOf('\r\n\r\n') + 4)));
  assert.equal(msg.hasBody, true);
  assert.equal((await collect(msg.bodyStream())).toString(), 'Body: not a header\r\n');
});

test('prepend / append / remove, and serialization keeps untouched fields byte for byte', async () => {
  const msg = await spoolBuffer(folded);
  const h = msg.headers;
  const untouched = h.fields().filter((f) => f.name.toLowerCase() !== 'subject').map((f) => f.raw);
  h.prepend('Received', 'from prequeue');
  h.append('X-Spam-Status', 'No, score=0.1');
  assert.equal(h.remove('SUBJECT'), 1);
  assert.equal(h.remove('subject'), 0);
  assert.equal(h.count('received'), 3);
  assert.equal(h.get('received'), 'from prequeue');
  const expected = Buffer.concat([
    Buffer.from('Received: from prequeue\r\n'),
    ...untouched,
    Buffer.from('X-Spam-Status: No, score=0.1\r\n'),
    Buffer.from('\r\n'),
  ]);
  assert.equal(h.toBuffer().toString('latin1'), expected.toString('latin1'));
  const out = await collect(msg.stream());
  assert.equal(out.toString('latin1'), expected.toString('latin1') + 'Body: not a header\r\n');
  assert.equal(msg.size(), out.length);
  assert.equal(h.modified, true);
});

test('new fields: no CR/LF in values, valid names only, 8-bit values round-trip', async () => {
  const msg = await spoolBuffer(Buffer.from('X-Latin: caf\xe9 \xc3\xa0\r\n\r\nb\r\n', 'latin1'));
  const h = msg.headers;
  assert.throws(() => h.append('X-A', 'one\r\nX-Injected: two'), /CR or LF/);
  assert.throws(() => h.prepend('X-A', 'one\ntwo'), /CR or LF/);
  assert.throws(() => h.append('X-A', 'one\rtwo'), /CR or LF/);
  assert.throws(() => h.append('Bad Name', 'v'), /invalid header field name/);
  assert.throws(() => h.append('Bad:Name', 'v'), /invalid header field name/);
  assert.throws(() => h.append('', 'v'), /empty/);
  assert.equal(h.fields().length, 1, 'failed edits change nothing');
  // A value read with get() and written back keeps its bytes (latin1 both ways);
  // U+00A0 survives too (the value is not trimmed with String#trim).
  const v = h.get('x-latin')!;
  assert.equal(v, 'caf\xe9 \xc3\xa0');
  h.append('X-Copy', v);
  assert.ok(h.fields()[1].raw.equals(Buffer.from('X-Copy: caf\xe9 \xc3\xa0\r\n', 'latin1')));
  // Beyond latin1 can only be UTF-8.
  h.append('X-Utf8', 'snow \u2603');
  assert.ok(h.fields()[2].raw.equals(Buffer.from('X-Utf8: snow \u2603\r\n', 'utf8')));
});

test('header-only message (no empty line)', async () => {
  const input = Buffer.from('Subject: only headers\r\nFrom: a@example.test\r\n');
  const msg = await spoolBuffer(input);
  assert.equal(msg.hasBody, false);
  assert.equal(msg.bodySize(), 0);
  assert.equal(msg.headers.count('from'), 1);
  assert.ok((await collect(msg.stream())).equals(input));
  // A new field keeps it header-only; a body gets a separator so it is not read as fields.
  msg.headers.append('X-A', 'b');
  assert.equal((await collect(msg.stream())).toString(), input.toString() + 'X-A: b\r\n');
  msg.appendBody('text\r\n');
  const out = (await collect(msg.stream())).toString();
  assert.equal(out, input.toString() + 'X-A: b\r\n\r\ntext\r\n');
  assert.equal(msg.size(), out.length);
});

test('header-only message whose last field has no CRLF', async () => {
  const msg = await spoolBuffer(Buffer.from('Subject: x\r\nTo: y'));
  assert.equal(msg.headers.get('to'), 'y');
  assert.equal((await collect(msg.stream())).toString(), 'Subject: x\r\nTo: y');
  msg.headers.append('X-A', 'b');
  assert.equal((await collect(msg.stream())).toString(), 'Subject: x\r\nTo: y\r\nX-A: b\r\n');
});

test('a message starting with a body line has no header fields', async () => {
  for (const text of ['just a body line\r\nmore\r\n', ' starts with a space\r\nA: b\r\n', ':colon first\r\n', 'From mbox line\r\n']) {
    const input = Buffer.from(text);
    const msg = await spoolBuffer(input);
    assert.equal(msg.headers.fields().length, 0, text);
    assert.equal(msg.hasBody, false);
    assert.equal(msg.bodySize(), input.length);
    assert.ok((await collect(msg.stream())).equals(input));
    // A field added on top must not swallow the first body line.
    msg.headers.prepend('Received', 'by prequeue');
    assert.equal((await collect(msg.stream())).toString(), 'Received: by prequeue\r\n\r\n' + text);
  }
});

test('a non-header line ends the block without being consumed', async () => {
  const input = Buffer.from('Subject: x\r\nnot a header line\r\nTo: y\r\n');
  const msg = await spoolBuffer(input);
  assert.equal(msg.headers.fields().length, 1);
  assert.equal(msg.hasBody, false);
  assert.equal((await collect(msg.bodyStream())).toString(), 'not a header line\r\nTo: y\r\n');
  assert.ok((await collect(msg.stream())).equals(input));
  msg.headers.remove('subject');
  msg.headers.append('Subject', 'y');
  assert.equal((await collect(msg.stream())).toString(), 'Subject: y\r\n\r\nnot a header line\r\nTo: y\r\n');
});

test('a message starting with the empty line: no fields, has a body', async () => {
  const msg = await spoolBuffer(Buffer.from('\r\nbody\r\n'));
  assert.equal(msg.headers.fields().length, 0);
  assert.equal(msg.hasBody, true);
  assert.equal((await collect(msg.bodyStream())).toString(), 'body\r\n');
  assert.equal(msg.headers.toBuffer().toString(), '\r\n');
});

test('empty message', async () => {
  const msg = await spoolBuffer(Buffer.alloc(0));
  assert.equal(msg.size(), 0);
  assert.equal(msg.hasBody, false);
  assert.equal((await collect(msg.stream())).length, 0);
});

test('the incremental scanner finds the same block under any chunking', () => {
  const inputs = [
    folded,
    Buffer.from('A: b\r\n c\r\nD : e\r\nnot header\r\n\r\n'),
    Buffer.from('A: b\r\n\r'),
    Buffer.from('A: b\r\nC'),
    Buffer.from('A: b\r\nC:'),
    Buffer.from('A: b\r\n\tcont'),
    Buffer.from('A: b\r\n\rX\r\n'),
  ];
  for (const input of inputs) {
    const whole = parseHeaderBlock(input);
    for (const [name, chunks] of chunkings(input)) {
      const s = new HeaderScanner();
      for (const c of chunks) if (s.feed(c)) break;
      const end = s.finish();
      assert.equal(end.bodyStart, whole.bodyStart, `${JSON.stringify(input.toString())} / ${name}`);
      assert.ok(s.headers().toBuffer().equals(whole.headers.toBuffer()));
    }
  }
  assert.equal(parseHeaderBlock(Buffer.from('A: b\r\n\r')).bodyStart, 6, 'a lone CR at the end is body');
  assert.equal(parseHeaderBlock(Buffer.from('A: b\r\nC')).bodyStart, 6, 'an unfinished line without colon is body');
  assert.equal(parseHeaderBlock(Buffer.from('A: b\r\nC:')).bodyStart, 8);
});
