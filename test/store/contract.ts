/**
 * The behaviour every store backend must have, as node:test subtests. Each
 * backend's test file calls `storeContract` with a way to open a fresh,
 * empty store and a way to let time pass (a clock for SQLite, real time for
 * Redis, whose server does the expiring).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StoreError, type KvStore } from '../../src/store/types';

export interface ContractSubject {
  store: KvStore;
  /** Lets `ms` of store time pass. */
  pass(ms: number): Promise<void>;
  close(): Promise<void>;
}

export function storeContract(backend: string, open: () => Promise<ContractSubject>, ttlUnitMs: number): void {
  const ttl = ttlUnitMs / 1000;
  const withStore = (name: string, fn: (s: ContractSubject) => Promise<void>) =>
    test(`${backend} store: ${name}`, async () => {
      const s = await open();
      try {
        await fn(s);
      } finally {
        await s.close();
      }
    });

  withStore('set, get, overwrite, del', async ({ store }) => {
    assert.equal(await store.get('a'), undefined);
    await store.set('a', 'one');
    assert.equal(await store.get('a'), 'one');
    await store.set('a', 'two');
    assert.equal(await store.get('a'), 'two');
    await store.set('b', '{"json":["é",1]}');
    assert.deepEqual(JSON.parse((await store.get('b'))!), { json: ['é', 1] });
    await store.set('empty', '');
    assert.equal(await store.get('empty'), '', 'the empty string is a value, not an absence');
    await store.del('a');
    assert.equal(await store.get('a'), undefined);
    await store.del(['b', 'empty', 'never-there']);
    assert.deepEqual(await store.mget(['a', 'b', 'empty']), [undefined, undefined, undefined]);
  });

  withStore('set with a TTL expires; set without one keeps the key for good', async ({ store, pass }) => {
    await store.set('short', 'x', ttl);
    await store.set('long', 'y', ttl * 4);
    await store.set('forever', 'z', ttl);
    await store.set('forever', 'z2'); // no TTL: the earlier expiry is gone
    assert.equal(await store.get('short'), 'x');
    await pass(ttlUnitMs * 2);
    assert.equal(await store.get('short'), undefined);
    assert.equal(await store.get('long'), 'y');
    assert.equal(await store.get('forever'), 'z2');
    assert.deepEqual(await store.mget(['short', 'long', 'forever']), [undefined, 'y', 'z2']);
    // An expired key is free for a new value.
    await store.set('short', 'again');
    assert.equal(await store.get('short'), 'again');
  });

  withStore('incrBy counts from 0, returns the new value, goes negative, reads back as a string', async ({ store }) => {
    assert.equal(await store.incrBy('n', 1), 1);
    assert.equal(await store.incrBy('n', 41), 42);
    assert.equal(await store.incrBy('n', -50), -8);
    assert.equal(await store.get('n'), '-8');
    await store.set('m', '10');
    assert.equal(await store.incrBy('m', 5), 15);
  });

  withStore('incrBy on a non-integer, bad increments and bad TTLs are StoreErrors', async ({ store }) => {
    await store.set('text', 'hello');
    await assert.rejects(store.incrBy('text', 1), StoreError);
    assert.equal(await store.get('text'), 'hello');
    await assert.rejects(store.incrBy('n', 1.5), StoreError);
    await assert.rejects(store.incrBy('n', Number.NaN), StoreError);
    await assert.rejects(store.set('k', 'v', 0), StoreError);
    await assert.rejects(store.set('k', 'v', -1), StoreError);
    await assert.rejects(store.incrBy('n', 1, Number.POSITIVE_INFINITY), StoreError);
    assert.equal(await store.get('k'), undefined);
    assert.equal(await store.get('n'), undefined);
  });

  withStore('incrBy with a TTL refreshes the expiry; without one keeps it; an expired counter restarts at 0', async ({ store, pass }) => {
    assert.equal(await store.incrBy('c', 5, ttl * 2), 5);
    await pass(ttlUnitMs);
    assert.equal(await store.incrBy('c', 1, ttl * 2), 6); // expiry pushed back by 2 units from now
    await pass(ttlUnitMs * 1.5);
    assert.equal(await store.get('c'), '6', 'refreshed, so still there');
    assert.equal(await store.incrBy('c', 1), 7); // keeps the expiry set by the last call
    await pass(ttlUnitMs * 1.5);
    assert.equal(await store.get('c'), undefined);
    assert.equal(await store.incrBy('c', 1), 1);
    // ... and now it has no expiry at all
    await pass(ttlUnitMs * 3);
    assert.equal(await store.get('c'), '1');
  });

  withStore('mget keeps the order, repeats duplicates, and takes an empty list', async ({ store }) => {
    await store.set('x', '1');
    await store.set('z', '3');
    assert.deepEqual(await store.mget(['z', 'y', 'x', 'z']), ['3', undefined, '1', '3']);
    assert.deepEqual(await store.mget([]), []);
  });

  withStore('mincrBy applies a batch in order (a key twice counts twice) with one TTL for all', async ({ store, pass }) => {
    await store.incrBy('spam|viagra', 10);
    const values = await store.mincrBy(
      [
        ['spam|viagra', 1],
        ['spam|meeting', 1],
        ['spam|viagra', 2],
        ['ham|meeting', -1],
      ],
      ttl * 2,
    );
    assert.deepEqual(values, [11, 1, 13, -1]);
    assert.deepEqual(await store.mget(['spam|viagra', 'spam|meeting', 'ham|meeting']), ['13', '1', '-1']);
    assert.deepEqual(await store.mincrBy([]), []);
    await pass(ttlUnitMs * 3);
    assert.deepEqual(await store.mget(['spam|viagra', 'spam|meeting', 'ham|meeting']), [undefined, undefined, undefined]);
  });

  withStore('a batch with one bad counter applies none of its increments', async ({ store }) => {
    await store.set('good', '1');
    await store.set('bad', 'not a number');
    await assert.rejects(
      store.mincrBy([
        ['good', 1],
        ['bad', 1],
        ['new', 1],
      ]),
      StoreError,
    );
    assert.deepEqual(await store.mget(['good', 'bad', 'new']), ['1', 'not a number', undefined]);
  });

  withStore('concurrent increments are not lost', async ({ store }) => {
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.incrBy('hits', i % 2 ? 1 : 2)));
    assert.equal(await store.get('hits'), String(100 * 1 + 100 * 2));
  });

  withStore('namespaces keep plugins apart, nest, and apply to every operation', async ({ store }) => {
    const grey = store.namespace('greylisting');
    const karma = store.namespace('karma');
    await grey.set('k', 'grey');
    await karma.set('k', 'karma');
    assert.equal(await grey.get('k'), 'grey');
    assert.equal(await karma.get('k'), 'karma');
    assert.equal(await store.get('k'), undefined);
    assert.equal(await store.get('greylisting|k'), 'grey', 'the namespace is a key prefix with "|"');
    assert.deepEqual(await karma.mincrBy([['n', 2]]), [2]);
    assert.equal(await karma.incrBy('n', 1), 3);
    assert.deepEqual(await grey.mget(['k', 'n']), ['grey', undefined]);
    const inner = grey.namespace('white');
    await inner.set('k', 'nested');
    assert.equal(await store.get('greylisting|white|k'), 'nested');
    assert.equal(await grey.get('k'), 'grey');
    await grey.del(['k']);
    assert.equal(await grey.get('k'), undefined);
    assert.equal(await karma.get('k'), 'karma');
  });
}
