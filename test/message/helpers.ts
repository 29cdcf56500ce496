import type { Readable } from 'node:stream';
import { Spool, type SpoolOptions } from '../../src/message/spool';
import type { SpooledMessage } from '../../src/message/message';

export async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Deterministic PRNG (mulberry32), so a failing chunking can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function bytewise(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i++) out.push(buf.subarray(i, i + 1));
  return out;
}

export function randomChunks(buf: Buffer, seed: number, max = 17): Buffer[] {
  const next = rng(seed);
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const n = 1 + Math.floor(next() * max);
    out.push(buf.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/** The chunkings every input is tried with. */
export function chunkings(buf: Buffer): Array<[string, Buffer[]]> {
  return [
    ['whole', [buf]],
    ['bytewise', bytewise(buf)],
    ['random1', randomChunks(buf, 1)],
    ['random2', randomChunks(buf, 2, 5)],
    ['random3', randomChunks(buf, 3, 200)],
  ];
}

/** Writes the chunks into a new spool, respecting backpressure, and returns the spool and its message. */
export async function feed(
  chunks: Buffer[],
  opts: Partial<SpoolOptions> = {},
): Promise<{ spool: Spool; msg: SpooledMessage }> {
  const spool = new Spool(opts);
  const done = spool.finish();
  for (const c of chunks) {
    if (!spool.write(c)) await new Promise((r) => spool.once('drain', r));
  }
  spool.end();
  const msg = await done;
  return { spool, msg };
}
