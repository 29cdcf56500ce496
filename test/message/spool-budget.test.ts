import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool, SpoolMemoryBudget, spoolMemory, DEFAULT_MEMORY_BUDGET } from '../../src/message/spool';
import { readBackChunkSize } from '../../src/message/message';
import { collect, feed } from './helpers';

const tmp = mkdtempSync(join(tmpdir(), 'prequeue-spool-budget-test-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

const KiB = 1024;

/** A message of `size` bytes in 16 KiB chunks (kept as they are, so each counts its own length). */
function message(size: number, fill: string): Buffer[] {
  const body = Buffer.from(`Subject: ${fill}\r\n\r\n` + `${fill.repeat(77)}\r\n`.repeat(Math.ceil(size / 79)));
  const chunks: Buffer[] = [];
  for (let pos = 0; pos < body.length; pos += 16 * KiB) chunks.push(body.subarray(pos, pos + 16 * KiB));
  return chunks;
}

test('past the budget a spool goes to its file; its bytes come back intact either way', async () => {
  const budget = new SpoolMemoryBudget(100 * KiB);
  const aIn = message(60 * KiB, 'a');
  const bIn = message(60 * KiB, 'b');
  const a = await feed(aIn, { memoryBudget: budget, tmpDir: tmp });
  assert.equal(a.spool.tempPath, undefined, 'the first one fits in memory');
  assert.equal(budget.used, a.spool.storedSize);
  assert.equal(a.spool.memoryHeld, a.spool.storedSize);

  const b = await feed(bIn, { memoryBudget: budget, tmpDir: tmp });
  assert.ok(b.spool.tempPath, 'the second one does not fit next to the first: temp file');
  assert.ok(existsSync(b.spool.tempPath));
  assert.equal(b.spool.memoryHeld, 0, 'what it held in memory was given back when it moved to the file');
  assert.equal(budget.used, a.spool.storedSize);

  assert.ok((await collect(a.msg.stream())).equals(Buffer.concat(aIn)));
  assert.ok((await collect(b.msg.stream())).equals(Buffer.concat(bIn)));

  await a.msg.dispose();
  assert.equal(budget.used, 0, 'disposing the message gives its memory back');
  const c = await feed(message(60 * KiB, 'c'), { memoryBudget: budget, tmpDir: tmp });
  assert.equal(c.spool.tempPath, undefined, 'with the budget free again, memory again');
  await c.msg.dispose();
  const bPath = b.spool.tempPath;
  await b.msg.dispose();
  assert.equal(existsSync(bPath), false);
  assert.equal(budget.used, 0);
});

test('small chunks count the blocks they are copied into: a small first block, then 64 KiB ones', async () => {
  const budget = new SpoolMemoryBudget(1024 * KiB);
  const spool = new Spool({ memoryBudget: budget, tmpDir: tmp });
  const done = spool.finish();
  spool.write(Buffer.from('Subject: x\r\n\r\nhello\r\n'));
  await new Promise((r) => setImmediate(r));
  assert.equal(spool.memoryHeld, 4 * KiB);
  // 5000 more bytes do not fit in what is left of the 4 KiB block: one 64 KiB block more.
  spool.write(Buffer.from('y'.repeat(4998) + '\r\n'));
  await new Promise((r) => setImmediate(r));
  assert.equal(spool.memoryHeld, 4 * KiB + 64 * KiB);
  assert.equal(budget.used, spool.memoryHeld);
  spool.end();
  const msg = await done;
  assert.equal((await collect(msg.stream())).length, spool.storedSize);
  await msg.dispose();
  assert.equal(budget.used, 0);
});

test('a budget of 0 sends even a tiny message to a file, and it is delivered the same', async () => {
  const budget = new SpoolMemoryBudget(0);
  const input = Buffer.from('Subject: tiny\r\n\r\nbody\r\n');
  const { spool, msg } = await feed([input], { memoryBudget: budget, tmpDir: tmp });
  assert.ok(spool.tempPath);
  assert.equal(budget.used, 0);
  assert.ok((await collect(msg.stream())).equals(input));
  await msg.dispose();
});

test('the budget is given back when a spool fails or is disposed before its end', async () => {
  const budget = new SpoolMemoryBudget(1024 * KiB);
  const failed = new Spool({ memoryBudget: budget, tmpDir: tmp });
  const failedDone = failed.finish();
  failed.write(Buffer.alloc(32 * KiB, 0x61));
  await new Promise((r) => setImmediate(r));
  assert.equal(budget.used, 32 * KiB);
  failed.destroy(new Error('client went away'));
  await assert.rejects(failedDone, /client went away/);
  await failed.dispose();
  assert.equal(budget.used, 0, 'released after an error');

  const dropped = new Spool({ memoryBudget: budget, tmpDir: tmp });
  dropped.write(Buffer.alloc(20 * KiB, 0x61));
  await new Promise((r) => setImmediate(r));
  assert.equal(budget.used, 20 * KiB);
  await dropped.dispose();
  assert.equal(budget.used, 0, 'released by dispose() before the end');
  await dropped.dispose();
  assert.equal(budget.used, 0, 'dispose() twice gives nothing back twice');
});

test('over memoryThreshold the spool still goes to a file and gives its share back', async () => {
  const budget = new SpoolMemoryBudget(1024 * KiB);
  const input = message(100 * KiB, 't');
  const { spool, msg } = await feed(input, { memoryBudget: budget, memoryThreshold: 50 * KiB, tmpDir: tmp });
  assert.ok(spool.tempPath);
  assert.equal(budget.used, 0);
  assert.ok((await collect(msg.stream())).equals(Buffer.concat(input)));
  await msg.dispose();
});

test('a number sets the limit of the process-wide budget (the config value, reloadable)', async () => {
  const saved = spoolMemory.limit;
  try {
    assert.equal(saved, DEFAULT_MEMORY_BUDGET);
    const before = spoolMemory.used;
    const spool = new Spool({ memoryBudget: 12 * KiB, tmpDir: tmp });
    assert.equal(spoolMemory.limit, 12 * KiB);
    const done = spool.finish();
    spool.end(Buffer.concat(message(40 * KiB, 'p')));
    const msg = await done;
    assert.ok(spool.tempPath, '40 KiB does not fit in a 12 KiB process-wide budget');
    assert.equal(spoolMemory.used, before);
    await msg.dispose();
    assert.throws(() => new Spool({ memoryBudget: -1 }), RangeError);
  } finally {
    spoolMemory.limit = saved;
  }
});

test('read-back chunks: 96 KiB (under glibc\'s mmap threshold) while few messages stream at once, smaller (never under 64 KiB) when many do', () => {
  assert.equal(readBackChunkSize(1), 96 * KiB);
  assert.equal(readBackChunkSize(50), 96 * KiB);
  const at100 = readBackChunkSize(100);
  assert.equal(at100, 64 * KiB);
  assert.ok(readBackChunkSize(120) * 120 <= 8 * 1024 * KiB);
  assert.equal(readBackChunkSize(10_000), 64 * KiB);
});
