import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load';
import { storeSchema } from '../../src/config/schema';
import { MemoryLogger } from '../../src/log';
import { buildRuntime, closeRuntime } from '../../src/runtime';
import { defaultSqlitePath, StoreService, DEFAULT_DB_NAME } from '../../src/store';
import { SqliteStore } from '../../src/store/sqlite';
import { StoreError } from '../../src/store/types';

const dir = mkdtempSync(join(tmpdir(), 'pq-store-service-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const log = () => new MemoryLogger('debug');

test('store config: defaults, and errors that name the key', () => {
  const c = parseConfig('', join(dir, 'prequeue.yaml')).config.store;
  assert.equal(c.backend, 'sqlite');
  assert.equal(c.path, undefined);
  assert.equal(c.busy_timeout, 2);
  assert.deepEqual(c.redis, { host: '127.0.0.1', port: 6379, db: 0, prefix: 'prequeue:', connect_timeout: 2, command_timeout: 1 });
  const r = parseConfig('store:\n  backend: redis\n  redis:\n    url: redis://10.0.0.5:6380/2\n    prefix: "mx1:"\n', join(dir, 'p.yaml')).config.store;
  assert.equal(r.backend, 'redis');
  assert.equal(r.redis.url, 'redis://10.0.0.5:6380/2');
  assert.equal(r.redis.prefix, 'mx1:');
  assert.throws(() => parseConfig('store:\n  backend: mysql\n', join(dir, 'p.yaml')), /p\.yaml:2: store\.backend/);
  assert.throws(() => parseConfig('store:\n  redis:\n    url: http://x\n', join(dir, 'p.yaml')), /store\.redis\.url: expected redis:\/\//);
  assert.throws(() => parseConfig('store:\n  redis:\n    hots: x\n', join(dir, 'p.yaml')), /store\.redis\.hots: unknown key/);
  assert.throws(() => storeSchema.parse({ busy_timeout: 0 }));
});

test('store service: nothing is opened until a plugin operates; a relative path is under the config dir', async () => {
  const configDir = join(dir, 'lazy');
  mkdirSync(configDir);
  const service = new StoreService(storeSchema.parse({ path: 'state/pq.db' }), { configDir, spoolDir: dir, log: log() });
  const grey = service.namespace('greylisting');
  assert.equal(service.opened, false);
  assert.equal(existsSync(join(configDir, 'state')), false);
  await grey.set('k', 'v');
  assert.equal(service.opened, true);
  assert.ok(existsSync(join(configDir, 'state', 'pq.db')));
  await service.close();
  await assert.rejects(grey.get('k'), (e: unknown) => e instanceof StoreError && e.unavailable);
  // What it wrote is in the file, under the namespace.
  const again = new SqliteStore({ path: join(configDir, 'state', 'pq.db'), sweepIntervalMs: 0 });
  assert.equal(await again.get('greylisting|k'), 'v');
  await again.close();
});

test('store service: a store that cannot open fails the operation (StoreError) and is tried again at the next', async () => {
  let attempts = 0;
  let fail = true;
  const path = join(dir, 'retry.db');
  const service = new StoreService(storeSchema.parse({}), { configDir: dir, spoolDir: dir, log: log() }, () => {
    attempts++;
    if (fail) throw new StoreError('sqlite: cannot open: disk on fire', true);
    return new SqliteStore({ path, sweepIntervalMs: 0 });
  });
  const s = service.namespace('karma');
  await assert.rejects(s.incrBy('n', 1), (e: unknown) => e instanceof StoreError && /disk on fire/.test(e.message));
  await assert.rejects(s.get('n'), StoreError);
  assert.equal(attempts, 2);
  fail = false;
  assert.equal(await s.incrBy('n', 1), 1);
  assert.equal(await s.incrBy('n', 1), 2);
  assert.equal(attempts, 3, 'opened once it could, then kept');
  await service.close();
});

test('store: default SQLite location: $STATE_DIRECTORY, then /var/lib/prequeue if writable, else a private dir under the spool dir', () => {
  assert.deepEqual(defaultSqlitePath(dir, { STATE_DIRECTORY: '/var/lib/prequeue:/var/lib/other' }), {
    path: `/var/lib/prequeue/${DEFAULT_DB_NAME}`,
    persistent: true,
  });
  const system = join(dir, 'varlib');
  mkdirSync(system);
  assert.deepEqual(defaultSqlitePath(dir, {}, system), { path: join(system, DEFAULT_DB_NAME), persistent: true });
  const spool = join(dir, 'spool');
  mkdirSync(spool);
  const fallback = defaultSqlitePath(spool, {}, join(dir, 'missing'));
  assert.equal(fallback.persistent, false);
  assert.match(fallback.path, new RegExp(`^${spool}/prequeue-[^/]+/${DEFAULT_DB_NAME}$`));
  const st = statSync(join(fallback.path, '..'));
  assert.equal(st.mode & 0o777, 0o700);
  // A file squatting on the private directory's name is refused.
  const squat = join(dir, 'squat');
  mkdirSync(squat);
  writeFileSync(join(fallback.path, '..').replace(spool, squat), '');
  assert.throws(() => defaultSqlitePath(squat, {}, join(dir, 'missing')));
});

test('store: the runtime opens the store only when a plugin uses it, and closes it with the runtime', async () => {
  const configDir = join(dir, 'rt');
  mkdirSync(configDir);
  const rt = await buildRuntime(parseConfig('store:\n  path: rt.db\n', join(configDir, 'prequeue.yaml')), log());
  assert.equal(rt.store.opened, false);
  assert.equal(existsSync(join(configDir, 'rt.db')), false);
  await rt.store.namespace('x').set('k', 'v');
  assert.ok(existsSync(join(configDir, 'rt.db')));
  await closeRuntime(rt);
  await assert.rejects(rt.store.namespace('x').get('k'), StoreError);
});
