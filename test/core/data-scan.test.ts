/**
 * The front end's DATA parser (src/smtp/data-scan.ts) against smtp-server's
 * own: fed the same bytes in the same chunks, both must emit the same message
 * bytes, end it at the same place and hand the same commands on after it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SMTPStream } from 'smtp-server/lib/smtp-stream';
import { feedDataStream } from '../../src/smtp/data-scan';
import { bytewise, randomChunks, rng } from '../message/helpers';

interface Parsed {
  messages: string[];
  commands: string[];
  byteLengths: number[];
}

/** Runs one parser over `chunks`: every DATA line starts data mode; the message is collected, then the parser continues. */
async function parse(chunks: Buffer[], ours: boolean, maxBytes?: number): Promise<Parsed> {
  const parser = new SMTPStream();
  if (ours) parser._feedDataStream = feedDataStream;
  const out: Parsed = { messages: [], commands: [], byteLengths: [] };
  parser.oncommand = (command: Buffer, callback?: () => void) => {
    const line = command.toString('binary');
    out.commands.push(line);
    if (line === 'DATA') {
      const stream = parser.startDataMode(maxBytes);
      const parts: Buffer[] = [];
      stream.on('data', (d: Buffer) => parts.push(d));
      stream.on('end', () => {
        out.messages.push(Buffer.concat(parts).toString('binary'));
        out.byteLengths.push(stream.byteLength);
        // Later, as smtp-server's connection does (after the application's callback).
        setImmediate(() => parser.continue());
      });
      // smtp-server's own parser loses its place if a message ends inside continue() (a whole
      // pipelined DATA in one chunk, which RFC 2920 forbids); its connection answers DATA
      // asynchronously, so this does too.
      setImmediate(() => callback?.());
      return;
    }
    callback?.();
  };
  for (const c of chunks) await new Promise<void>((resolve, reject) => parser.write(c, (err) => (err ? reject(err) : resolve())));
  await new Promise<void>((resolve) => parser.end(resolve));
  return out;
}

async function same(input: Buffer, chunks: Buffer[], label: string): Promise<Parsed> {
  const theirs = await parse(chunks, false);
  const mine = await parse(chunks, true);
  assert.deepEqual(mine, theirs, `${label}: ${JSON.stringify(input.toString('binary').slice(0, 200))}`);
  return mine;
}

const session = (...bodies: string[]): Buffer =>
  Buffer.from(bodies.map((b) => `DATA\r\n${b}\r\n.\r\nNOOP\r\n`).join('') + 'QUIT\r\n', 'binary');

test('plain messages, dot-stuffed lines and a message of one dot line are parsed as smtp-server does', async () => {
  const input = session('Subject: a\r\n\r\nbody\r\n..leading dot\r\n...\r\n..', '..\r\nfirst line was a dot', '', 'x');
  for (const [label, chunks] of [
    ['whole', [input]],
    ['bytewise', bytewise(input)],
    ['random', randomChunks(input, 5, 9)],
  ] as [string, Buffer[]][]) {
    const r = await same(input, chunks, label);
    // Not only equal to each other: right.
    assert.deepEqual(r.messages, ['Subject: a\r\n\r\nbody\r\n.leading dot\r\n..\r\n.\r\n', '.\r\nfirst line was a dot\r\n', '\r\n', 'x\r\n'], label);
    assert.deepEqual(r.commands, ['DATA', 'NOOP', 'DATA', 'NOOP', 'DATA', 'NOOP', 'DATA', 'NOOP', 'QUIT'], label);
  }
});

test('random messages full of dots, bare CRs and LFs and end-of-data lookalikes, in random chunks: same as smtp-server', async () => {
  const pieces = ['.', '..', '\r\n', '\r\n.', '\n', '\r', '\n.\n', '\r.\r', '\r\n.\n', '\n.\r\n', 'a', 'text ', '\r\n..\r\n', '\r\n.\r\nRSET\r\nDATA\r\n'];
  for (let round = 0; round < 300; round++) {
    const next = rng(1000 + round);
    const body = Array.from({ length: 1 + Math.floor(next() * 60) }, () => pieces[Math.floor(next() * pieces.length)]).join('');
    const input = session(body, body.split('').reverse().join(''));
    for (const chunks of [[input], randomChunks(input, round, 3), randomChunks(input, round + 7, 40)]) {
      await same(input, chunks, `round ${round}`);
    }
  }
});

test('a large message in socket-sized chunks, with a size limit: same bytes, byte count and end', async () => {
  const line = 'x'.repeat(70) + '\r\n';
  const body = Array.from({ length: 20000 }, (_, i) => (i % 97 === 0 ? '..' + line : line)).join('');
  const input = session(body);
  const chunks = randomChunks(input, 42, 65536);
  const theirs = await parse(chunks, false, 1000000);
  const mine = await parse(chunks, true, 1000000);
  assert.deepEqual(mine, theirs);
  assert.equal(mine.messages[0]!.length, body.length - Math.ceil(20000 / 97) + 2);
});
