import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RedisStore } from '../../src/store/redis';
import { StoreError } from '../../src/store/types';
import { startRedisServer, type RedisServer } from '../helpers/redis-server';
import { storeContract } from './contract';

let redis: RedisServer;
before(async () => {
  redis = await startRedisServer();
});
after(() => redis.destroy());

let seq = 0;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Each store gets its own prefix: tests share one server but not keys. */
function open(prefix = `t${++seq}:`, extra: Partial<ConstructorParameters<typeof RedisStore>[0]> = {}) {
  const warnings: string[] = [];
  const infos: string[] = [];
  const store = new RedisStore({
    port: redis.port,
    prefix,
    connectTimeoutMs: 1000,
    commandTimeoutMs: 500,
    onWarning: (m) => warnings.push(m),
    onInfo: (m) => infos.push(m),
    ...extra,
  });
  return { store, warnings, infos };
}

// Redis expires keys itself in real time: 250 ms units keep the contract quick and unambiguous.
storeContract(
  'redis',
  async () => {
    const { store } = open();
    return { store, pass: sleep, close: () => store.close() };
  },
  250,
);

test('redis store: two clients (two prequeue instances) share one view; other prefixes do not see it', async () => {
  const a = open('shared:').store;
  const b = open('shared:').store;
  const other = open('elsewhere:').store;
  await a.namespace('greylisting').set('192.0.2.0/24|a@b|c@d', '{"first":1}', 60);
  assert.equal(await b.namespace('greylisting').get('192.0.2.0/24|a@b|c@d'), '{"first":1}');
  await Promise.all([
    ...Array.from({ length: 50 }, () => a.incrBy('n', 1)),
    ...Array.from({ length: 50 }, () => b.mincrBy([['n', 1]])),
  ]);
  assert.equal(await a.get('n'), '100');
  assert.equal(await other.get('n'), undefined);
  await Promise.all([a.close(), b.close(), other.close()]);
});

test('redis store: keys carry the prefix and the TTL on the server (PTTL)', async () => {
  const { store } = open('pfx:');
  await store.namespace('karma').incrBy('192.0.2.1|good', 1, 3600);
  await store.set('plain', 'v');
  const raw = open('').store;
  assert.equal(await raw.get('pfx:karma|192.0.2.1|good'), '1');
  // Read the TTL with a plain client: the server, not prequeue, expires the key.
  const { default: Redis } = await import('ioredis');
  const client = new Redis({ port: redis.port, lazyConnect: true });
  await client.connect();
  const pttl = await client.pttl('pfx:karma|192.0.2.1|good');
  assert.ok(pttl > 3_590_000 && pttl <= 3_600_000, `pttl ${pttl}`);
  assert.equal(await client.pttl('pfx:plain'), -1);
  client.disconnect();
  await Promise.all([store.close(), raw.close()]);
});

test('redis store: with the server down, operations fail fast with StoreError; they work again once it is back', async () => {
  const { store, warnings, infos } = open();
  await store.set('k', 'before');
  await redis.stop();
  try {
    for (const op of [() => store.get('k'), () => store.set('k', 'v'), () => store.incrBy('n', 1), () => store.mget(['a', 'b']), () => store.mincrBy([['x', 1]])]) {
      const t0 = Date.now();
      await assert.rejects(op(), (e: unknown) => e instanceof StoreError && e.unavailable && /unavailable/.test(e.message));
      assert.ok(Date.now() - t0 < 600, `failed after ${Date.now() - t0} ms`);
    }
    assert.equal(warnings.filter((w) => /unavailable/.test(w)).length, 1, `one warning per outage: ${warnings.join(' | ')}`);
  } finally {
    await redis.start();
  }
  // The client reconnects on its own (back-off at most 2 s).
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      await store.set('k', 'after');
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
  assert.equal(await store.get('k'), 'after');
  assert.ok(infos.some((m) => /available again/.test(m)), infos.join(' | '));
  await store.close();
});

test('redis store: a server that is not there from the start fails the first operation within the connect timeout', async () => {
  const { port } = redis;
  await redis.stop();
  try {
    const { store } = open('x:', { port, connectTimeoutMs: 300 });
    const t0 = Date.now();
    await assert.rejects(store.get('k'), (e: unknown) => e instanceof StoreError && e.unavailable);
    assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    await store.close();
  } finally {
    await redis.start();
  }
});

test('redis store: a url with a database number selects that database', async () => {
  const db0 = open('u:').store;
  const db3 = new RedisStore({ url: `${redis.url}/3`, prefix: 'u:' });
  await db3.set('k', 'in db 3');
  assert.equal(await db3.get('k'), 'in db 3');
  assert.equal(await db0.get('k'), undefined);
  assert.equal(db3.where, `redis://127.0.0.1:${redis.port}/3`);
  await Promise.all([db0.close(), db3.close()]);
});

test('redis store: after close, operations are refused', async () => {
  const { store } = open();
  await store.set('k', 'v');
  await store.close();
  await assert.rejects(store.get('k'), (e: unknown) => e instanceof StoreError && /closed/.test(e.message));
});
