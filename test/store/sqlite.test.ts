import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStore } from '../../src/store/sqlite';
import { StoreError } from '../../src/store/types';
import { storeContract } from './contract';

const dir = mkdtempSync(join(tmpdir(), 'pq-sqlite-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;
const freshPath = (): string => join(dir, `t${++seq}`, 'store.db');

function clocked(path = freshPath()) {
  let now = 1_700_000_000_000;
  const store = new SqliteStore({ path, now: () => now, sweepIntervalMs: 0 });
  return {
    store,
    path,
    advance: (ms: number) => void (now += ms),
    async pass(ms: number) {
      now += ms;
    },
    close: () => store.close(),
  };
}

storeContract('sqlite', async () => clocked(), 60_000);

test('sqlite store: the file is in WAL mode with the schema created on open (directory too)', async () => {
  const s = clocked();
  await s.store.set('k', 'v');
  const db = new Database(s.path, { readonly: true });
  try {
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    const cols = db.prepare("SELECT name FROM pragma_table_info('kv')").all() as { name: string }[];
    assert.deepEqual(cols.map((c) => c.name), ['key', 'value', 'expires']);
    assert.equal(db.pragma('user_version', { simple: true }), 1);
  } finally {
    db.close();
    await s.close();
  }
});

test('sqlite store: values and expiry survive closing and reopening the file', async () => {
  const path = freshPath();
  let now = 1_700_000_000_000;
  const first = new SqliteStore({ path, now: () => now, sweepIntervalMs: 0 });
  await first.set('persistent', 'yes');
  await first.set('expiring', 'soon', 60);
  await first.namespace('karma').incrBy('192.0.2.1|good', 3);
  await first.close();
  await assert.rejects(first.get('persistent'), (e: unknown) => e instanceof StoreError && e.unavailable);

  const second = new SqliteStore({ path, now: () => now, sweepIntervalMs: 0 });
  assert.equal(await second.get('persistent'), 'yes');
  assert.equal(await second.get('expiring'), 'soon');
  assert.equal(await second.namespace('karma').incrBy('192.0.2.1|good', 1), 4);
  now += 61_000;
  assert.equal(await second.get('expiring'), undefined, 'the expiry time was stored, not a countdown');
  await second.close();
});

test('sqlite store: the sweep deletes expired rows (and only those), in batches', async () => {
  const s = clocked();
  await s.store.mincrBy(
    Array.from({ length: 2500 }, (_, i) => [`tok${i}`, 1] as const),
    10,
  );
  await s.store.set('keep', 'v', 3600);
  await s.store.set('keep-forever', 'v');
  const count = () => {
    const db = new Database(s.path, { readonly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM kv').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  assert.equal(count(), 2502);
  assert.equal(s.store.sweep(), 0, 'nothing has expired yet');
  s.advance(11_000);
  assert.equal(await s.store.get('tok1'), undefined, 'expired rows are invisible before the sweep');
  assert.equal(s.store.sweep(), 2500);
  assert.equal(count(), 2);
  assert.equal(await s.store.get('keep'), 'v');
  await s.close();
});

test('sqlite store: two connections to one file see each other (workers sharing the file)', async () => {
  const path = freshPath();
  const a = new SqliteStore({ path, sweepIntervalMs: 0 });
  const b = new SqliteStore({ path, sweepIntervalMs: 0 });
  await a.set('from-a', '1');
  assert.equal(await b.get('from-a'), '1');
  await b.incrBy('n', 2);
  assert.equal(await a.incrBy('n', 3), 5);
  await a.close();
  await b.close();
});

test('sqlite store: increments from several processes at once are all counted (busy_timeout, immediate transactions)', async () => {
  const path = freshPath();
  const init = new SqliteStore({ path, sweepIntervalMs: 0 });
  await init.set('seed', '1');
  const script = `
    const { SqliteStore } = require(${JSON.stringify(require.resolve('../../src/store/sqlite'))});
    (async () => {
      const s = new SqliteStore({ path: ${JSON.stringify(path)}, busyTimeoutMs: 5000, sweepIntervalMs: 0 });
      for (let i = 0; i < 300; i++) {
        await s.incrBy('shared', 1);
        if (i % 50 === 0) await s.mincrBy([['batch', 1], ['batch', 1]], 3600);
      }
      await s.close();
    })().catch((e) => { console.error(e); process.exit(1); });
  `;
  const run = () =>
    new Promise<number>((resolve) => {
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit'] });
      child.on('exit', (code) => resolve(code ?? 1));
    });
  const codes = await Promise.all([run(), run(), run()]);
  assert.deepEqual(codes, [0, 0, 0]);
  assert.equal(await init.get('shared'), '900');
  assert.equal(await init.get('batch'), String(3 * 6 * 2));
  await init.close();
});

test('sqlite store: a file from a newer prequeue is refused, not misread', () => {
  const path = freshPath();
  new SqliteStore({ path, sweepIntervalMs: 0 }).close();
  const db = new Database(path);
  db.pragma('user_version = 99');
  db.close();
  assert.throws(() => new SqliteStore({ path, sweepIntervalMs: 0 }), (e: unknown) => e instanceof StoreError && /schema version 99/.test(e.message));
});

test('sqlite store: a location that cannot hold the file fails to open with a StoreError naming it', () => {
  // Under a regular file: no directory can be made there, whoever runs the test.
  const blocker = join(dir, 'not-a-dir');
  writeFileSync(blocker, '');
  const path = join(blocker, 'sub', 'store.db');
  assert.throws(() => new SqliteStore({ path, sweepIntervalMs: 0 }), (e: unknown) => e instanceof StoreError && e.unavailable && e.message.includes(path));
  assert.equal(existsSync(path), false);
});
