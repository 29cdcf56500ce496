import { test, before, after, beforeEach, describe } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import plugin, { clientNetwork, clock, normalizeSender } from '../../plugins/greylisting';
import { Decision } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import type { Address } from '../../src/session/state';
import { RedisStore } from '../../src/store/redis';
import { SqliteStore } from '../../src/store/sqlite';
import type { KvStore } from '../../src/store/types';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, configDir, makeContext, memoryStore, type FakeContext } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { startRedisServer, type RedisServer } from '../helpers/redis-server';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom, postfixClient, transaction } from '../helpers/wire-clients';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const T0 = Date.UTC(2025, 0, 15, 12, 0, 0);
let now = T0;
const realNow = clock.now;
beforeEach(() => {
  now = T0;
  clock.now = () => now;
});
after(() => {
  clock.now = realNow;
});

let redis: RedisServer;
before(async () => {
  redis = await startRedisServer();
});
after(() => redis.destroy());

const NAME = 'greylisting';

/** A plugin instance and the store it writes to (in-memory SQLite unless given). */
async function load(options: Record<string, unknown> = {}, store?: KvStore) {
  const parsed = plugin.options!.parse(options);
  const storeFn = store ? () => store : memoryStore(NAME);
  const hooks = await plugin.create(parsed, {
    name: NAME,
    configDir: '/nonexistent',
    mode: 'standalone',
    log: makeContext().log,
    dns: undefined as never,
    store: storeFn,
  });
  return { hooks, store: storeFn() };
}

interface Attempt {
  client?: string;
  sender?: string;
  rcpts?: (string | Address)[];
}

/**
 * One transaction: MAIL, each RCPT (accepted ones added to txn.recipients as
 * the core does), then DATA if any was accepted. Returns each RCPT's decision
 * and DATA's.
 */
async function attempt(hooks: PluginHooks, a: Attempt = {}): Promise<{ rcpt: Decision[]; data?: Decision; ctx: FakeContext; messages: (string | undefined)[] }> {
  const ctx = makeContext({ name: NAME, clientAddr: a.client ?? '192.0.2.10', sender: a.sender ?? 'alice@sender.example' });
  const rcpt: Decision[] = [];
  const messages: (string | undefined)[] = [];
  for (const r of a.rcpts ?? ['bob@example.test']) {
    const address = typeof r === 'string' ? addr(r) : r;
    const v = await callHook(hooks, 'rcpt', ctx, address);
    rcpt.push(v.decision);
    messages.push(v.message);
    if (v.decision === Decision.DECLINED || v.decision === Decision.OK) ctx.txn!.recipients.push(address);
  }
  let data: Decision | undefined;
  if (ctx.txn!.recipients.length) {
    const v = await callHook(hooks, 'data', ctx);
    data = v.decision;
    messages.push(v.message);
  }
  return { rcpt, data, ctx, messages };
}

const D = Decision.DECLINED;
const S = Decision.DENYSOFT;

test('greylisting: defaults are qpsmtpd\'s periods; grey must outlast black', () => {
  const o = plugin.options!.parse({});
  assert.equal(o.black_timeout, 50 * 60);
  assert.equal(o.grey_timeout, 3 * 3600 + 20 * 60);
  assert.equal(o.white_timeout, 36 * 86400);
  assert.equal(o.defer_at, 'rcpt');
  assert.equal(o.on_store_error, 'defer');
  assert.throws(() => plugin.options!.parse({ black_timeout: 600, grey_timeout: 600 }), /grey_timeout/);
  assert.throws(() => plugin.options!.parse({ deny_late: true }));
});

test('greylisting: a first attempt is deferred (450 4.7.1), a retry within the black period too', async () => {
  const { hooks, store } = await load();
  const first = await attempt(hooks);
  assert.deepEqual(first.rcpt, [S]);
  assert.equal(first.data, undefined);
  assert.equal(first.messages[0], 'Greylisted, please try again later');
  assert.deepEqual(first.ctx.myResults()?.fail, ['greylisted']);
  const rec = JSON.parse((await store.get('192.0.2.0/24|alice@sender.example|bob@example.test'))!);
  assert.deepEqual(rec, { first: T0, last: T0, white: false, tries: 1, passes: 0 });

  now += 10 * MIN;
  assert.deepEqual((await attempt(hooks)).rcpt, [S]);
  now += 39 * MIN; // 49 minutes after the first attempt
  assert.deepEqual((await attempt(hooks)).rcpt, [S]);
  const again = JSON.parse((await store.get('192.0.2.0/24|alice@sender.example|bob@example.test'))!);
  assert.equal(again.first, T0, 'early retries do not restart the clock');
  assert.equal(again.tries, 3);
});

test('greylisting: a retry after the black period passes and the triplet is white for 36 days, refreshed on use', async () => {
  const { hooks, store } = await load();
  await attempt(hooks);
  now += 51 * MIN;
  const retry = await attempt(hooks);
  assert.deepEqual(retry.rcpt, [D]);
  assert.equal(retry.data, D);
  assert.deepEqual(retry.ctx.myResults()?.pass, ['retried']);

  now += 35 * DAY;
  const later = await attempt(hooks);
  assert.deepEqual(later.rcpt, [D]);
  assert.deepEqual(later.ctx.myResults()?.pass, ['white']);
  now += 35 * DAY; // 70 days after becoming white, but only 35 since the last use
  assert.deepEqual((await attempt(hooks)).rcpt, [D]);
  const rec = JSON.parse((await store.get('192.0.2.0/24|alice@sender.example|bob@example.test'))!);
  assert.equal(rec.passes, 3);
  assert.equal(rec.last, now);

  now += 37 * DAY; // unused for longer than white_timeout: greylisted again
  assert.deepEqual((await attempt(hooks)).rcpt, [S]);
});

test('greylisting: a triplet not retried within the grey period starts over', async () => {
  const { hooks } = await load();
  await attempt(hooks);
  now += 4 * HOUR; // past 3 h 20 min
  const late = await attempt(hooks);
  assert.deepEqual(late.rcpt, [S], 'treated as a new first attempt');
  now += 30 * MIN;
  assert.deepEqual((await attempt(hooks)).rcpt, [S], 'and the black period counts from the new first attempt');
  now += 25 * MIN;
  assert.deepEqual((await attempt(hooks)).rcpt, [D]);
});

test('greylisting: the store expires entries by itself (grey after grey_timeout, white after white_timeout)', async () => {
  // Short periods against the store's own expiry, with the real clock.
  clock.now = Date.now;
  const sqlite = new SqliteStore({ path: ':memory:', sweepIntervalMs: 0 });
  const { hooks, store } = await load({ black_timeout: 0.05, grey_timeout: 0.3, white_timeout: 0.6 }, sqlite.namespace(NAME));
  const key = '192.0.2.0/24|alice@sender.example|bob@example.test';
  await attempt(hooks);
  assert.ok(await store.get(key));
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(await store.get(key), undefined, 'the grey entry is gone');
  await attempt(hooks);
  await new Promise((r) => setTimeout(r, 80));
  assert.deepEqual((await attempt(hooks)).rcpt, [D]);
  assert.equal(JSON.parse((await store.get(key))!).white, true);
  await new Promise((r) => setTimeout(r, 400));
  assert.ok(await store.get(key), 'white lasts longer than grey');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await store.get(key), undefined, 'the white entry is gone');
  await sqlite.close();
});

test('greylisting: clients are grouped by /24 (IPv4) and /64 (IPv6), configurable', async () => {
  assert.equal(clientNetwork('192.0.2.77', 24, 64), '192.0.2.0/24');
  assert.equal(clientNetwork('::ffff:192.0.2.77', 24, 64), '192.0.2.0/24');
  assert.equal(clientNetwork('192.0.2.77', 32, 64), '192.0.2.77/32');
  assert.equal(clientNetwork('2001:db8:1:2:aaaa::9', 24, 64), '2001:db8:1:2:0:0:0:0/64');
  assert.equal(clientNetwork('2001:db8:1:2:aaaa::9', 24, 48), '2001:db8:1:0:0:0:0:0/48');

  const { hooks } = await load();
  await attempt(hooks, { client: '192.0.2.10' });
  now += 51 * MIN;
  assert.deepEqual((await attempt(hooks, { client: '192.0.2.200' })).rcpt, [D], 'a retry from another host of the /24');
  assert.deepEqual((await attempt(hooks, { client: '192.0.3.10' })).rcpt, [S], 'another /24 is another client');

  await attempt(hooks, { client: '2001:db8:1:2::25' });
  now += 51 * MIN;
  assert.deepEqual((await attempt(hooks, { client: '2001:db8:1:2:ffff::26' })).rcpt, [D]);
  assert.deepEqual((await attempt(hooks, { client: '2001:db8:1:3::25' })).rcpt, [S]);

  const exact = (await load({ ipv4_prefix: 32 })).hooks;
  await attempt(exact, { client: '198.51.100.1' });
  now += 51 * MIN;
  assert.deepEqual((await attempt(exact, { client: '198.51.100.2' })).rcpt, [S]);
});

test('greylisting: sender and recipient are part of the triplet; VERP/BATV senders are normalized', async () => {
  assert.equal(normalizeSender('Bounce-12345-67@Lists.Example'), 'bounce-#-#@lists.example');
  assert.equal(normalizeSender('prvs=1234abcd=Alice@example.org'), 'alice@example.org');
  assert.equal(normalizeSender('alice+news@example.org'), 'alice@example.org');

  const { hooks } = await load();
  await attempt(hooks, { sender: 'bounce-1001@lists.example', rcpts: ['bob@example.test'] });
  now += 51 * MIN;
  assert.deepEqual((await attempt(hooks, { sender: 'bounce-1002@lists.example', rcpts: ['bob@example.test'] })).rcpt, [D]);
  assert.deepEqual((await attempt(hooks, { sender: 'other@lists.example', rcpts: ['bob@example.test'] })).rcpt, [S], 'another sender');
  assert.deepEqual((await attempt(hooks, { sender: 'bounce-1003@lists.example', rcpts: ['carol@example.test'] })).rcpt, [S], 'another recipient');

  const literal = (await load({ normalize_sender: false })).hooks;
  await attempt(literal, { sender: 'bounce-1001@lists.example' });
  now += 51 * MIN;
  assert.deepEqual((await attempt(literal, { sender: 'bounce-1002@lists.example' })).rcpt, [S]);
});

test('greylisting: with sender and recipient off, a client network is checked once per transaction and then white for all', async () => {
  const { hooks, store } = await load({ sender: false, recipient: false });
  const first = await attempt(hooks, { rcpts: ['a@example.test', 'b@example.test', 'c@example.test'] });
  assert.deepEqual(first.rcpt, [S, S, S]);
  assert.deepEqual(first.ctx.myResults()?.fail, ['greylisted'], 'recorded once');
  assert.equal(JSON.parse((await store.get('192.0.2.0/24'))!).tries, 1, 'one attempt, however many recipients');
  now += 51 * MIN;
  assert.deepEqual((await attempt(hooks, { sender: 'x@y.example', rcpts: ['z@example.test'] })).rcpt, [D]);
});

test('greylisting: per_recipient greylists only recipients whose options carry denysoft_greylist', async () => {
  const { hooks } = await load({ per_recipient: true });
  const optIn: Address = { ...addr('careful@example.test'), options: { denysoft_greylist: true } };
  const optInValue: Address = { ...addr('also@example.test'), options: { denysoft_greylist: '1' } };
  const r = await attempt(hooks, { rcpts: ['plain@example.test', optIn, optInValue] });
  assert.deepEqual(r.rcpt, [D, S, S]);
  assert.deepEqual(r.ctx.myResults()?.skip, ['not opted in']);

  // Without per_recipient everyone is greylisted except an explicit opt-out.
  const all = (await load()).hooks;
  const optOut: Address = { ...addr('vip@example.test'), options: { denysoft_greylist: 'no' } };
  const r2 = await attempt(all, { rcpts: ['plain@example.test', optOut] });
  assert.deepEqual(r2.rcpt, [S, D]);
  assert.deepEqual(r2.ctx.myResults()?.skip, ['opted out']);
});

test('greylisting: defer_at data records recipients at RCPT and defers the whole message once at DATA', async () => {
  const { hooks } = await load({ defer_at: 'data' });
  // Make one triplet white first.
  await attempt(hooks, { rcpts: ['known@example.test'] });
  now += 51 * MIN;
  await attempt(hooks, { rcpts: ['known@example.test'] });

  const mixed = await attempt(hooks, { rcpts: ['known@example.test', 'new@example.test'] });
  assert.deepEqual(mixed.rcpt, [D, D], 'every recipient gets 250 at RCPT');
  assert.equal(mixed.data, S, 'one deferral for the message');
  assert.deepEqual(mixed.ctx.myResults()?.pass, ['white']);
  assert.deepEqual(mixed.ctx.myResults()?.fail, ['greylisted']);

  // A greylisted recipient that was refused later (another plugin, the downstream) has no say.
  const ctx = makeContext({ name: NAME, clientAddr: '192.0.2.10', sender: 'alice@sender.example' });
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('unknown@example.test'))).decision, D);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('known@example.test'))).decision, D);
  ctx.txn!.recipients.push(addr('known@example.test'));
  assert.equal((await callHook(hooks, 'data', ctx)).decision, D);

  now += 51 * MIN;
  assert.equal((await attempt(hooks, { rcpts: ['known@example.test', 'new@example.test'] })).data, D);
});

test('greylisting: the null sender is greylisted by client network alone and deferred at DATA (callouts get 250 at RCPT)', async () => {
  const { hooks, store } = await load();
  const bounce = await attempt(hooks, { sender: '', rcpts: ['a@example.test', 'b@example.test'] });
  assert.deepEqual(bounce.rcpt, [D, D]);
  assert.equal(bounce.data, S);
  assert.ok(await store.get('192.0.2.0/24|<>|*'));
  now += 51 * MIN;
  assert.equal((await attempt(hooks, { sender: '', rcpts: ['c@example.test'] })).data, D, 'another recipient: the client is what counts');
});

test('greylisting: a store failure defers by default (451 4.3.0), with skip it lets mail through; never silently white', async () => {
  const redisStore = new RedisStore({ port: redis.port, prefix: 'gl-down:', connectTimeoutMs: 500, commandTimeoutMs: 500 });
  const ns = redisStore.namespace(NAME);
  const defer = (await load({}, ns)).hooks;
  const deferData = (await load({ defer_at: 'data' }, ns)).hooks;
  const skip = (await load({ on_store_error: 'skip' }, ns)).hooks;
  assert.deepEqual((await attempt(defer)).rcpt, [S], 'works while Redis is up');
  await redis.stop();
  try {
    const r = await attempt(defer);
    assert.deepEqual(r.rcpt, [S]);
    assert.equal(r.messages[0], 'Temporary local problem, please try again later');
    assert.match(r.ctx.myResults()!.err[0]!, /^store: .*unavailable/);

    const d = await attempt(deferData, { rcpts: ['x@example.test', 'y@example.test'] });
    assert.deepEqual(d.rcpt, [D, D]);
    assert.equal(d.data, S);

    const s = await attempt(skip);
    assert.deepEqual(s.rcpt, [D]);
    assert.equal(s.data, D);
    assert.deepEqual(s.ctx.myResults()?.skip, ['store error']);
    assert.equal(s.ctx.myResults()?.pass.length, 0, 'not recorded as a pass');
  } finally {
    await redis.start();
  }
  await redisStore.close();
});

test('greylisting: two instances sharing Redis share one view (first attempt on one, retry on the other)', async () => {
  const a = new RedisStore({ port: redis.port, prefix: 'gl-shared:' });
  const b = new RedisStore({ port: redis.port, prefix: 'gl-shared:' });
  const mx1 = (await load({}, a.namespace(NAME))).hooks;
  const mx2 = (await load({}, b.namespace(NAME))).hooks;
  assert.deepEqual((await attempt(mx1)).rcpt, [S]);
  now += 20 * MIN;
  assert.deepEqual((await attempt(mx2)).rcpt, [S], 'mx2 knows it is too early');
  now += 31 * MIN;
  assert.deepEqual((await attempt(mx2)).rcpt, [D]);
  assert.deepEqual((await attempt(mx1)).rcpt, [D], 'and mx1 knows it is white');
  await Promise.all([a.close(), b.close()]);
});

// ---- over the wire ----

async function session(port: number, rcpts: string[]): Promise<{ rcpt: number[]; data?: number; eod?: number }> {
  const t = await SmtpTalk.connect(port);
  try {
    const r = await t.send('alice@sender.example', rcpts, 'From: alice@sender.example\r\nSubject: hi\r\n\r\nhello\r\n');
    return { rcpt: r.rcpt.map((x) => x.code), data: r.data?.code, eod: r.eod?.code };
  } finally {
    await t.quit();
  }
}

test('greylisting over the wire (SQLite file): 450 at RCPT, 250 after the black period, then delivered', async () => {
  clock.now = Date.now; // the proxy loads its own copy of the plugin: real time, a 1 s black period
  const downstream = await FakeSmtpServer.start();
  const proxy = await startProxy({
    mode: 'standalone',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    store: { path: 'state/greylist.db' },
    plugins: [{ greylisting: { black_timeout: 1 } }],
  });
  try {
    const first = await session(proxy.port, ['bob@example.test']);
    assert.deepEqual(first.rcpt, [450]);
    assert.equal(downstream.messages.length, 0);
    const early = await session(proxy.port, ['bob@example.test']);
    assert.deepEqual(early.rcpt, [450]);
    await new Promise((r) => setTimeout(r, 1100));
    const retry = await session(proxy.port, ['bob@example.test']);
    assert.deepEqual(retry.rcpt, [250]);
    assert.equal(retry.eod, 250);
    assert.equal(downstream.messages.length, 1);
    const transactions = proxy.log.lines.filter((l) => l.msg === 'transaction');
    const results = transactions.map((l) => (l.meta.results as Record<string, string>).greylisting);
    assert.deepEqual(results, ['fail=greylisted', 'fail=greylisted', 'pass=retried'], 'the transaction log lines show each outcome');
  } finally {
    await proxy.close();
    await downstream.close();
  }
});

test('greylisting over the wire, two proxies sharing Redis, defer_at data: 451 at DATA on one, delivered through the other', async () => {
  clock.now = Date.now;
  const downstream = await FakeSmtpServer.start();
  const config = {
    mode: 'standalone',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    store: { backend: 'redis', redis: { port: redis.port, prefix: 'wire:' } },
    plugins: [{ greylisting: { black_timeout: 1, defer_at: 'data' } }],
  };
  const mx1 = await startProxy(config);
  const mx2 = await startProxy(config);
  try {
    const first = await session(mx1.port, ['bob@example.test', 'carol@example.test']);
    assert.deepEqual(first.rcpt, [250, 250]);
    assert.equal(first.data, 451);
    assert.equal(downstream.messages.length, 0);
    await new Promise((r) => setTimeout(r, 1100));
    const retry = await session(mx2.port, ['bob@example.test', 'carol@example.test']);
    assert.deepEqual(retry.rcpt, [250, 250]);
    assert.equal(retry.eod, 250);
    assert.equal(downstream.messages.length, 1);
    assert.deepEqual(downstream.messages[0]!.rcptTo, ['<bob@example.test>', '<carol@example.test>']);
  } finally {
    await mx1.close();
    await mx2.close();
    await downstream.close();
  }
});

// ---- end to end: state across restarts and instances, XFORWARD, immunity, aliases' per-recipient opt-in ----

describe('greylisting end to end', () => {
  let downstream: FakeSmtpServer;
  const open: TestProxy[] = [];
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    for (const p of open.splice(0)) await p.close();
    await downstream.close();
  });
  beforeEach(() => {
    clock.now = Date.now; // the proxies run on real time, with a 1 s black period
  });

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const BLACK = 1;
  const start = async (config: Record<string, unknown>): Promise<TestProxy> => {
    const p = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${downstream.port}` }, ...config });
    open.push(p);
    return p;
  };
  const stop = async (p: TestProxy): Promise<void> => {
    open.splice(open.indexOf(p), 1);
    await p.close();
  };
  /** The greylisting result of each transaction logged, in order, once `count` are (refused ones are logged as the session ends). */
  const outcomes = async (p: TestProxy, count: number): Promise<string[]> => {
    const deadline = Date.now() + 3000;
    const lines = () => p.log.lines.filter((l) => l.msg === 'transaction');
    while (lines().length < count && Date.now() < deadline) await sleep(20);
    return lines().map((l) => (l.meta.results as Record<string, string>).greylisting ?? '');
  };
  const MSG = 'From: <alice@sender.example>\r\nSubject: grey\r\n\r\nhello\r\n';
  /** One standalone session from `from` (a loopback address of ours): the codes. */
  const direct = async (p: TestProxy, rcpts: string[], from = '127.0.0.1', sender = 'alice@sender.example') => {
    const t = await connectFrom(from, p.port);
    try {
      return await transaction(t, sender, rcpts, { helo: 'client.example.net', message: MSG });
    } finally {
      await t.quit();
    }
  };
  const viaPostfix = async (p: TestProxy, addr: string, rcpts: string[]) => {
    const t = await postfixClient(p.port, addr);
    try {
      return await transaction(t, 'alice@sender.example', rcpts, { message: MSG });
    } finally {
      await t.quit();
    }
  };

  test('the triplet state survives a prequeue restart (SQLite file)', async () => {
    const dbDir = mkdtempSync(join(tmpdir(), 'pq-grey-restart-'));
    const config = {
      store: { backend: 'sqlite', path: join(dbDir, 'pq.db') },
      plugins: [{ greylisting: { black_timeout: BLACK, grey_timeout: 60 } }],
    };
    const before = downstream.messages.length;
    const a = await start(config);
    assert.deepEqual((await direct(a, ['bob@example.test'])).rcpt, [450]);
    await stop(a);

    const b = await start(config);
    const early = await direct(b, ['bob@example.test']);
    assert.deepEqual(early.rcpt, [450], 'the restarted proxy knows it is too early');
    assert.ok(b.log.lines.some((l) => /retry too early \(attempt 2\)/.test(l.msg)), 'it counted the attempt before the restart');
    await sleep(BLACK * 1000 + 100);
    await stop(b);

    const c = await start(config);
    const retry = await direct(c, ['bob@example.test']);
    assert.deepEqual([retry.rcpt, retry.eod], [[250], 250], retry.texts.join(' | '));
    assert.deepEqual(await outcomes(c, 1), ['pass=retried'], 'a retry of the triplet recorded before the restarts, not a new one');
    await stop(c);

    const d = await start(config);
    assert.deepEqual((await direct(d, ['bob@example.test'])).eod, 250);
    assert.deepEqual(await outcomes(d, 1), ['pass=white']);
    assert.equal(downstream.messages.length, before + 2);
  });

  test('two prequeue instances sharing one redis-server agree on a triplet (defer at RCPT)', async () => {
    const config = {
      store: { backend: 'redis', redis: { port: redis.port, prefix: 'e2e-agree:' } },
      plugins: [{ greylisting: { black_timeout: BLACK, grey_timeout: 60 } }],
    };
    const a = await start(config);
    const b = await start(config);
    const before = downstream.messages.length;

    // A defers and records; B knows it is the same triplet, too early.
    assert.deepEqual((await direct(a, ['bob@example.test'])).rcpt, [450]);
    assert.deepEqual((await direct(b, ['bob@example.test'])).rcpt, [450]);
    assert.ok(b.log.lines.some((l) => /alice@sender\.example\|bob@example\.test: retry too early \(attempt 2\)/.test(l.msg)), 'B saw A\'s record');
    // Another triplet, deferred on A only.
    assert.deepEqual((await direct(a, ['carol@example.test'])).rcpt, [450]);
    await sleep(BLACK * 1000 + 100);

    // After the black period B accepts the retry of A's triplet...
    const retry = await direct(b, ['bob@example.test']);
    assert.deepEqual([retry.rcpt, retry.eod], [[250], 250]);
    // ...and a triplet made white through A is white on B.
    assert.deepEqual((await direct(a, ['carol@example.test'])).eod, 250);
    assert.deepEqual((await direct(b, ['carol@example.test'])).eod, 250);
    assert.deepEqual((await direct(a, ['bob@example.test'])).eod, 250);
    assert.deepEqual(await outcomes(a, 4), ['fail=greylisted', 'fail=greylisted', 'pass=retried', 'pass=white']);
    assert.deepEqual(await outcomes(b, 3), ['fail=greylisted', 'pass=retried', 'pass=white']);
    assert.equal(downstream.messages.length, before + 4);
  });

  test('postfix mode: the triplet is the XFORWARD client network, not the TCP peer (Postfix)', async () => {
    const p = await start({ mode: 'postfix', store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') }, plugins: [{ greylisting: { black_timeout: BLACK } }] });
    assert.deepEqual((await viaPostfix(p, '192.0.2.10', ['bob@example.test'])).rcpt, [450]);
    await sleep(BLACK * 1000 + 100);
    const retry = await viaPostfix(p, '192.0.2.200', ['bob@example.test']);
    assert.deepEqual([retry.rcpt, retry.eod], [[250], 250], 'a retry from another host of the /24 passes');
    assert.deepEqual((await viaPostfix(p, '198.51.100.10', ['bob@example.test'])).rcpt, [450], 'another network is another triplet, though the TCP peer is the same');
    assert.match(downstream.messages.at(-1)!.xforward.join(' '), /ADDR=192\.0\.2\.200/);
  });

  test('postfix mode: IPv6 clients (XFORWARD ADDR=IPv6:...) are grouped by /64', async () => {
    const p = await start({ mode: 'postfix', store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') }, plugins: [{ greylisting: { black_timeout: BLACK } }] });
    assert.deepEqual((await viaPostfix(p, 'IPv6:2001:db8:1:2::25', ['bob@example.test'])).rcpt, [450]);
    await sleep(BLACK * 1000 + 100);
    assert.deepEqual((await viaPostfix(p, 'IPv6:2001:db8:1:2:ffff::26', ['bob@example.test'])).eod, 250, 'same /64');
    assert.deepEqual((await viaPostfix(p, 'IPv6:2001:db8:1:3::25', ['bob@example.test'])).rcpt, [450], 'another /64');
  });

  test('standalone mode: the triplet is the direct TCP peer network', async () => {
    const p = await start({ store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') }, plugins: [{ greylisting: { black_timeout: BLACK } }] });
    assert.deepEqual((await direct(p, ['bob@example.test'], '127.0.0.10')).rcpt, [450]);
    await sleep(BLACK * 1000 + 100);
    assert.deepEqual((await direct(p, ['bob@example.test'], '127.0.1.10')).rcpt, [450], 'another /24');
    const retry = await direct(p, ['bob@example.test'], '127.0.0.20');
    assert.deepEqual([retry.rcpt, retry.eod], [[250], 250], 'same /24');
  });

  test('postfix mode, defer_at data (for speed_adjust): 250 to each RCPT, one 451 at DATA, then accepted', async () => {
    const p = await start({ mode: 'postfix', store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') }, plugins: [{ greylisting: { black_timeout: BLACK, defer_at: 'data' } }] });
    const before = downstream.messages.length;
    const first = await viaPostfix(p, '192.0.2.10', ['bob@example.test', 'carol@example.test']);
    assert.deepEqual([first.rcpt, first.data], [[250, 250], 451], first.texts.join(' | '));
    assert.match(first.texts.at(-1)!, /^451 4\.7\.1 Greylisted/);
    assert.equal(downstream.messages.length, before, 'nothing relayed');
    await sleep(BLACK * 1000 + 100);
    const retry = await viaPostfix(p, '192.0.2.10', ['bob@example.test', 'carol@example.test']);
    assert.deepEqual([retry.rcpt, retry.eod], [[250, 250], 250]);
    assert.deepEqual(downstream.messages.at(-1)!.rcptTo, ['<bob@example.test>', '<carol@example.test>']);
  });

  test('immunity: relay clients, whitelisted clients and immune senders are never greylisted, in both modes', async () => {
    const store = { backend: 'sqlite', path: join(configDir({}), 'pq.db') };
    const grey = { greylisting: { black_timeout: 3600 } };
    const s = await start({ store, relay_clients: ['127.0.0.30'], immune_senders: ['@friend.example'], plugins: [{ whitelist: { hosts: ['127.0.0.31'] } }, grey] });
    assert.deepEqual((await direct(s, ['bob@example.test'], '127.0.0.30')).eod, 250, 'relay client');
    assert.deepEqual((await direct(s, ['bob@example.test'], '127.0.0.31')).eod, 250, 'whitelisted host');
    assert.deepEqual((await direct(s, ['bob@example.test'], '127.0.0.32', 'boss@friend.example')).eod, 250, 'immune sender');
    assert.deepEqual((await direct(s, ['bob@example.test'], '127.0.0.32')).rcpt, [450], 'anyone else');
    assert.deepEqual((await outcomes(s, 4)).map((o) => o.replace(/,.*/, '')), ['skip=rcpt: immune', 'skip=rcpt: immune', 'skip=rcpt: immune', 'fail=greylisted']);

    const p = await start({ mode: 'postfix', store, relay_clients: ['192.0.2.30'], plugins: [{ whitelist: { hosts: ['192.0.2.31'] } }, grey] });
    assert.deepEqual((await viaPostfix(p, '192.0.2.30', ['bob@example.test'])).eod, 250, 'relay client by XFORWARD ADDR');
    assert.deepEqual((await viaPostfix(p, '192.0.2.31', ['bob@example.test'])).eod, 250, 'whitelisted by XFORWARD ADDR');
    assert.deepEqual((await viaPostfix(p, '198.51.100.32', ['bob@example.test'])).rcpt, [450]);
  });

  test('reject: false seeds the database without deferring anything', async () => {
    const p = await start({ store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') }, plugins: [{ greylisting: { black_timeout: 3600, reject: false } }] });
    const r = await direct(p, ['bob@example.test'], '127.0.0.40');
    assert.deepEqual([r.rcpt, r.eod], [[250], 250]);
    assert.match((await outcomes(p, 1))[0]!, /fail=greylisted/, 'recorded as greylisted all the same');
  });

  test("per-recipient opt-in from the aliases file (denysoft_greylist), over SMTP", async () => {
    const dir = configDir({
      aliases: [
        'careful@example.test: careful@mail.example.test (denysoft_greylist)',
        'plain@example.test: plain@mail.example.test',
        'vip@example.test: vip@mail.example.test (denysoft_greylist=no)',
      ].join('\n'),
    });
    const store = { backend: 'sqlite', path: join(dir, 'pq.db') };
    const aliases = { aliases: { file: join(dir, 'aliases') } };
    const before = downstream.messages.length;

    const optIn = await start({ store, plugins: [aliases, { greylisting: { black_timeout: 3600, per_recipient: true } }] });
    const r = await direct(optIn, ['careful@example.test', 'plain@example.test', 'vip@example.test', 'nobody@example.test'], '127.0.0.50');
    assert.deepEqual(r.rcpt, [450, 250, 250, 550], `only the opted-in recipient is greylisted; unknown ones refused: ${r.texts.join(' | ')}`);
    assert.equal(r.eod, 250);
    assert.deepEqual(downstream.messages.at(-1)!.rcptTo, ['<plain@mail.example.test>', '<vip@mail.example.test>']);

    const optOut = await start({ store, plugins: [aliases, { greylisting: { black_timeout: 3600 } }] });
    const o = await direct(optOut, ['careful@example.test', 'plain@example.test', 'vip@example.test'], '127.0.0.51');
    assert.deepEqual(o.rcpt, [450, 450, 250], 'by default everyone but the opted-out recipient');

    const atData = await start({ store, plugins: [aliases, { greylisting: { black_timeout: 3600, per_recipient: true, defer_at: 'data' } }] });
    const d = await direct(atData, ['plain@example.test', 'careful@example.test'], '127.0.0.52');
    assert.deepEqual([d.rcpt, d.data], [[250, 250], 451], 'one opted-in recipient defers the message at DATA');
    const d2 = await direct(atData, ['plain@example.test'], '127.0.0.52');
    assert.equal(d2.eod, 250, 'without it the message goes through');
    assert.equal(downstream.messages.length, before + 3);
  });
});
