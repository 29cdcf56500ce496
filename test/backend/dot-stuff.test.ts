import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { DotStuffer, DotStuffTransform, dotStuff } from '../../src/backend/dot-stuff';

/** Obviously-correct reference: byte by byte, a dot at the start or right after CRLF is doubled. */
function referenceStuff(msg: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < msg.length; i++) {
    const lineStart = i === 0 || (i >= 2 && msg[i - 2] === 0x0d && msg[i - 1] === 0x0a);
    if (lineStart && msg[i] === 0x2e) out.push(0x2e);
    out.push(msg[i]);
  }
  return Buffer.from(out);
}

function referenceTerminator(msg: Buffer): Buffer {
  const endsCrlf = msg.length === 0 || (msg.length >= 2 && msg[msg.length - 2] === 0x0d && msg[msg.length - 1] === 0x0a);
  return Buffer.from(endsCrlf ? '.\r\n' : '\r\n.\r\n');
}

function stuffInChunks(msg: Buffer, cuts: number[]): { out: Buffer; terminator: Buffer } {
  const s = new DotStuffer();
  const parts: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, msg.length]) {
    parts.push(s.push(msg.subarray(prev, c)));
    prev = c;
  }
  return { out: Buffer.concat(parts), terminator: s.terminator() };
}

/** A small deterministic PRNG so that failures are reproducible. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const SAMPLES: Buffer[] = [
  Buffer.from('.leading dot\r\nline\r\n'),
  Buffer.from('a\r\n.\r\nb\r\n..\r\n.x\r\n'),
  Buffer.from('.\r\n'),
  Buffer.from('.'),
  Buffer.from(''),
  Buffer.from('\r\n.\r\n.\r\n'),
  Buffer.from('no final crlf\r\n.dot'),
  Buffer.from('bare\n.lf and bare\r.cr are not line starts\r\n'),
  Buffer.from('\r\r\n.\n\r\n\r.\r\n'),
  Buffer.concat([Buffer.from('Subject: 8bit \xe9\xff\x00\r\n', 'latin1'), Buffer.from('.' + 'x'.repeat(989) + '\r\n')]),
];

describe('DotStuffer', () => {
  it('doubles a dot at the very start and after CRLF only', () => {
    assert.equal(dotStuff(Buffer.from('.a\r\n.b\r\nc.d\r\n')).toString(), '..a\r\n..b\r\nc.d\r\n');
    assert.equal(dotStuff(Buffer.from('x\n.y\r.z\r\n')).toString(), 'x\n.y\r.z\r\n');
    assert.equal(dotStuff(Buffer.from('.\r\n.\r\n')).toString(), '..\r\n..\r\n');
  });

  it('passes a chunk without a line-leading dot through without copying', () => {
    const chunk = Buffer.from('hello\r\nworld\r\n');
    assert.equal(new DotStuffer().push(chunk), chunk);
  });

  it('matches the reference on every sample as one chunk', () => {
    for (const msg of SAMPLES) {
      const { out, terminator } = stuffInChunks(msg, []);
      assert.deepEqual(out, referenceStuff(msg), JSON.stringify(msg.toString('latin1')));
      assert.deepEqual(terminator, referenceTerminator(msg));
    }
  });

  it('matches the reference when fed byte by byte', () => {
    for (const msg of SAMPLES) {
      const cuts = Array.from({ length: Math.max(0, msg.length - 1) }, (_, i) => i + 1);
      const { out, terminator } = stuffInChunks(msg, cuts);
      assert.deepEqual(out, referenceStuff(msg), JSON.stringify(msg.toString('latin1')));
      assert.deepEqual(terminator, referenceTerminator(msg));
    }
  });

  it('matches the reference with a single cut at every position', () => {
    const msg = Buffer.from('.a\r\n.\r\nb.\r\n\r\n..c\r\n.');
    for (let cut = 0; cut <= msg.length; cut++) {
      const { out, terminator } = stuffInChunks(msg, [cut]);
      assert.deepEqual(out, referenceStuff(msg), `cut at ${cut}`);
      assert.deepEqual(terminator, referenceTerminator(msg), `cut at ${cut}`);
    }
  });

  it('matches the reference with random messages and random chunkings', () => {
    const rand = rng(12345);
    const alphabet = Buffer.from('..\r\n\r\nab\n\r\xff', 'latin1');
    for (let round = 0; round < 500; round++) {
      const len = Math.floor(rand() * 60);
      const msg = Buffer.alloc(len);
      for (let i = 0; i < len; i++) msg[i] = alphabet[Math.floor(rand() * alphabet.length)];
      const cuts: number[] = [];
      for (let i = 1; i < len; i++) if (rand() < 0.3) cuts.push(i);
      const { out, terminator } = stuffInChunks(msg, cuts);
      assert.deepEqual(out, referenceStuff(msg), `round ${round}: ${JSON.stringify(msg.toString('latin1'))} cuts ${cuts}`);
      assert.deepEqual(terminator, referenceTerminator(msg), `round ${round}`);
    }
  });

  it('adds CRLF before the terminator only when the message does not end with one', () => {
    const s = new DotStuffer();
    assert.equal(s.terminator().toString(), '.\r\n', 'empty message');
    s.push(Buffer.from('abc'));
    assert.equal(s.atLineStart, false);
    assert.equal(s.terminator().toString(), '\r\n.\r\n');
    s.push(Buffer.from('\r'));
    assert.equal(s.terminator().toString(), '\r\n.\r\n', 'a lone CR is not a line end');
    s.push(Buffer.from('\n'));
    assert.equal(s.atLineStart, true);
    assert.equal(s.terminator().toString(), '.\r\n');
    assert.equal(s.bytesIn, 5);
  });
});

describe('DotStuffTransform', () => {
  async function collect(r: Readable): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of r) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  it('stuffs a stream and, with terminate, ends it with CRLF + ".\\r\\n" when needed', async () => {
    const src = Readable.from([Buffer.from('.a\r'), Buffer.from('\n.b'), Buffer.from('\r\n.'), Buffer.from('c')]);
    const out = await collect(src.pipe(new DotStuffTransform({ terminate: true })));
    assert.equal(out.toString(), '..a\r\n..b\r\n..c\r\n.\r\n');
  });

  it('without terminate it only stuffs; string chunks are accepted', async () => {
    const src = Readable.from(['.x\r\n', '.y\r\n'], { objectMode: false });
    const out = await collect(src.pipe(new DotStuffTransform()));
    assert.equal(out.toString(), '..x\r\n..y\r\n');
  });
});
