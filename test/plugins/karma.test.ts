/**
 * karma: the score from other plugins' results, rejections, verdicts
 * (reject, defer, limit recipients, tarpit), immunity for good karma, the
 * client history in the store (SQLite, and a real Redis); then over SMTP
 * through prequeue, including a history that survives a restart.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import plugin, { clock, historyPoints, type KarmaState } from '../../plugins/karma';
import type { KvStore } from '../../src/store/types';
import type { PluginEnv, PluginHooks } from '../../src/plugin/api';
import { Decision, deny, denysoft } from '../../src/plugin/decision';
import { SqliteStore } from '../../src/store/sqlite';
import { RedisStore } from '../../src/store/redis';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, loadPlugin, makeContext, memoryStore, type FakeContext } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { startRedisServer, type RedisServer } from '../helpers/redis-server';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom } from '../helpers/wire-clients';

const NO_TARPIT = { tarpit: false };

const load = (options: Record<string, unknown> = {}, env: Partial<PluginEnv> = {}) =>
  loadPlugin(plugin, options, { name: 'karma', store: memoryStore('karma'), ...env });

const karma = (ctx: FakeContext) => ctx.conn.notes.karma as KarmaState;

/** A connection from `ip` up to its connect hook. */
async function connect(hooks: PluginHooks, ip = '192.0.2.1', opts: Parameters<typeof makeContext>[0] = {}): Promise<FakeContext> {
  const ctx = makeContext({ name: 'karma', clientAddr: ip, ...opts });
  await callHook(hooks, 'connect', ctx);
  return ctx;
}

/** Another plugin's result, on the transaction if there is one (as the chain records it). */
function result(ctx: FakeContext, plugin: string, input: Record<string, unknown>): void {
  (ctx.txn?.results ?? ctx.conn.results).add(plugin, input);
}


describe('karma: score from results', () => {
  test('default rules: each plugin result adds or removes its points, once per connection and instance', async () => {
    const hooks = await load(NO_TARPIT);
    const ctx = await connect(hooks);
    result(ctx, 'dnsbl:spamhaus', { fail: 'zen.spamhaus.org' });
    result(ctx, 'dnsbl:spamcop', { fail: 'bl.spamcop.net' });
    result(ctx, 'fcrdns', { pass: 'fcrdns' });
    await callHook(hooks, 'ehlo', ctx, 'x.example');
    assert.equal(karma(ctx).score, -3 - 3 + 1);
    // The same results seen again at the next hook do not count twice.
    result(ctx, 'dnsbl:spamhaus', { fail: 'again' });
    ctx.newTransaction('a@example.net');
    await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    assert.equal(karma(ctx).score, -5);
    const r = ctx.conn.results.get('karma')!;
    assert.deepEqual([...r.fail].sort(), ['dnsbl:spamcop fail (-3)', 'dnsbl:spamhaus fail (-3)']);
    assert.deepEqual(r.pass, ['fcrdns pass (+1)']);
  });

  test('own rules replace the defaults; extra_rules add to them; match is exact or /regex/', async () => {
    const hooks = await load({
      ...NO_TARPIT,
      rules: [{ plugin: 'headers', kind: 'fail', match: '/^date/', points: -2, reason: 'bad date' }],
      extra_rules: [{ plugin: 'spf', kind: 'msg', match: 'softfail', points: -1 }],
    });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    result(ctx, 'dnsbl', { fail: 'zen' }); // not a rule any more
    result(ctx, 'headers', { fail: 'from: missing' }); // no match
    result(ctx, 'spf', { msg: 'softfail' });
    await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    assert.equal(karma(ctx).score, -1);
    result(ctx, 'headers', { fail: 'date: in the future' });
    await callHook(hooks, 'rcpt', ctx, addr('b@example.test'));
    assert.equal(karma(ctx).score, -3);
    assert.ok(ctx.txn!.results.get('karma')!.fail.includes('bad date (-2)'));
  });

  test('rejections by other plugins cost rejection_points (perm -1, temp 0 by default); its own do not', async () => {
    const hooks = await load({ ...NO_TARPIT, rejection_points: { perm: -2, temp: -1 } });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    await callHook(hooks, 'deny', ctx, { hook: 'rcpt', plugin: 'badrcptto', verdict: deny('no') });
    await callHook(hooks, 'deny', ctx, { hook: 'rcpt', plugin: 'greylisting', verdict: denysoft('later') });
    await callHook(hooks, 'deny', ctx, { hook: 'mail', plugin: 'karma', verdict: deny('karma') });
    assert.equal(karma(ctx).score, -3);
    assert.equal(karma(ctx).awards, -3);
  });

  test('rules for results recorded after karma\'s last hook in a transaction still count at the next hook and at disconnect', async () => {
    const hooks = await load({ ...NO_TARPIT, history: { min_connections: 1 } });
    const ctx = await connect(hooks, '192.0.2.77', { sender: 'a@example.net' });
    await callHook(hooks, 'data_post', ctx, undefined as never);
    // spamassassin, listed after karma, records its verdict; then the transaction ends: the core
    // runs reset_transaction while it still has the transaction, then forgets it.
    result(ctx, 'spamassassin', { fail: 'score 12' });
    await callHook(hooks, 'reset_transaction', ctx);
    ctx.txn = undefined;
    await callHook(hooks, 'disconnect', ctx);
    assert.equal(karma(ctx).score, -4);
    const next = await connect(hooks, '192.0.2.77');
    assert.equal(karma(next).historyRecord!.bad, 1, 'recorded as a bad connection');
  });
});

describe('karma: verdicts', () => {
  test('below reject_below: DENY 5.7.1 at MAIL with the score in the message', async () => {
    const hooks = await load(NO_TARPIT);
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    result(ctx, 'dnsbl', { fail: 'zen' });
    result(ctx, 'uribl', { fail: 'x' });
    result(ctx, 'badmailfrom', { fail: 'y' });
    const v = await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    assert.equal(v.decision, Decision.DENY);
    assert.equal(v.enhanced, '5.7.1');
    assert.equal(v.message, 'Your reputation here is too poor (karma -9)');
  });

  test('between reject_below and defer_below: DENYSOFT; above both: no opinion', async () => {
    const hooks = await load({ ...NO_TARPIT, reject_below: -8, defer_below: -2 });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED);
    result(ctx, 'dnsbl', { fail: 'zen' });
    const v = await callHook(hooks, 'rcpt', ctx, addr('b@example.test'));
    assert.equal(v.decision, Decision.DENYSOFT);
    assert.equal(v.enhanced, '4.7.1');
    await assert.rejects(load({ reject_below: -2, defer_below: -5 }), /defer_below/);
  });

  test('reject_at decides where: data_post only leaves MAIL and RCPT alone', async () => {
    const hooks = await load({ ...NO_TARPIT, reject_at: ['data_post'], limit_recipients: false });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    result(ctx, 'clamav', { fail: 'Eicar' });
    result(ctx, 'dnsbl', { fail: 'zen' });
    assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED);
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('b@example.test'))).decision, Decision.DECLINED);
    assert.equal((await callHook(hooks, 'data_post', ctx, undefined as never)).decision, Decision.DENY);
  });

  test('limit_recipients: below its score, recipients past max get 452 4.5.3', async () => {
    const hooks = await load({ ...NO_TARPIT, limit_recipients: { below: -2, max: 2 } });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    result(ctx, 'dnsbl', { fail: 'zen' });
    for (const r of ['b1@example.test', 'b2@example.test']) {
      assert.equal((await callHook(hooks, 'rcpt', ctx, addr(r))).decision, Decision.DECLINED);
      ctx.txn!.recipients.push(addr(r));
    }
    const v = await callHook(hooks, 'rcpt', ctx, addr('b3@example.test'));
    assert.equal(v.decision, Decision.DENYSOFT);
    assert.equal(v.code, 452);
    assert.equal(v.enhanced, '4.5.3');
  });

  test('tarpit: each reply is delayed by the points below `below`, at most `max`', async () => {
    const hooks = await load({ tarpit: { below: 0, seconds_per_point: 0.1, max: 0.5 }, reject_below: null });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    let t0 = Date.now();
    await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    assert.ok(Date.now() - t0 < 80, 'score 0: no delay');
    result(ctx, 'dnsbl', { fail: 'zen' });
    t0 = Date.now();
    await callHook(hooks, 'rcpt', ctx, addr('b@example.test'));
    const d1 = Date.now() - t0;
    assert.ok(d1 >= 290 && d1 < 450, `score -3: 0.3 s (${d1} ms)`);
    result(ctx, 'clamav', { fail: 'virus' });
    t0 = Date.now();
    await callHook(hooks, 'rcpt', ctx, addr('c@example.test'));
    const d2 = Date.now() - t0;
    assert.ok(d2 >= 490 && d2 < 700, `score -11: capped at 0.5 s (${d2} ms)`);
  });

  test('relay clients, authenticated users and allow-listed senders are scored but never refused or slowed', async () => {
    const hooks = await load({ tarpit: { below: 0, seconds_per_point: 1, max: 5 } });
    const relay = await connect(hooks, '192.0.2.1', { relayClient: true, sender: 'a@example.net' });
    result(relay, 'dnsbl', { fail: 'zen' });
    result(relay, 'clamav', { fail: 'x' });
    const t0 = Date.now();
    assert.equal((await callHook(hooks, 'mail', relay, relay.txn!.sender!)).decision, Decision.DECLINED);
    assert.ok(Date.now() - t0 < 200);
    assert.equal(karma(relay).score, -11);
    const listed = await connect(hooks, '192.0.2.2', { sender: 'boss@partner.example' });
    listed.txn!.immunity.all = true;
    result(listed, 'clamav', { fail: 'x' });
    assert.equal((await callHook(hooks, 'mail', listed, listed.txn!.sender!)).decision, Decision.DECLINED);
  });
});

describe('karma: immunity for good karma', () => {
  test('above immunity.above the named plugins skip the connection; taken back when the score falls', async () => {
    const hooks = await load({ ...NO_TARPIT, immunity: { above: 1, plugins: ['greylisting', 'dnsbl'] } });
    const ctx = await connect(hooks, '192.0.2.1', { sender: 'a@example.net' });
    result(ctx, 'spf', { pass: 'example.net' });
    result(ctx, 'fcrdns', { pass: 'fcrdns' });
    await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    assert.equal(karma(ctx).score, 2);
    assert.deepEqual([...ctx.conn.immunity.plugins].sort(), ['dnsbl', 'greylisting']);
    await callHook(hooks, 'deny', ctx, { hook: 'rcpt', plugin: 'badrcptto', verdict: deny('no') });
    assert.equal(karma(ctx).score, 1);
    assert.deepEqual([...ctx.conn.immunity.plugins], []);
  });

  test('immunity granted by someone else (whitelist) is not taken back by karma', async () => {
    const hooks = await load({ ...NO_TARPIT, immunity: { above: 0, plugins: ['greylisting'] } });
    const ctx = makeContext({ name: 'karma', sender: 'a@example.net' });
    ctx.conn.immunity.plugins.add('greylisting');
    await callHook(hooks, 'connect', ctx);
    result(ctx, 'spf', { pass: 'x' });
    await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
    await callHook(hooks, 'deny', ctx, { hook: 'rcpt', plugin: 'badrcptto', verdict: deny('no') });
    await callHook(hooks, 'deny', ctx, { hook: 'rcpt', plugin: 'badrcptto', verdict: deny('no') });
    assert.ok(karma(ctx).score < 0);
    assert.ok(ctx.conn.immunity.plugins.has('greylisting'));
  });
});

/** A connection with the given results, start to disconnect. */
async function session(hooks: PluginHooks, ip: string, results: Record<string, Record<string, unknown>> = {}, opts: Parameters<typeof makeContext>[0] = {}): Promise<FakeContext> {
  const ctx = await connect(hooks, ip, { sender: 'a@example.net', ...opts });
  for (const [p, r] of Object.entries(results)) result(ctx, p, r);
  await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
  ctx.txn = undefined;
  await callHook(hooks, 'disconnect', ctx);
  return ctx;
}

const BAD = { dnsbl: { fail: 'zen' } };
const GOOD = { spf: { pass: 'x' }, dkim: { pass: 'y' } };

describe('karma: history in the store', () => {
  test('from min_connections on: all bad -3, all good +2, mostly good +1, mostly bad -1', async () => {
    const hooks = await load({ ...NO_TARPIT, reject_below: null, history: { min_connections: 3 } });
    for (let i = 0; i < 2; i++) await session(hooks, '192.0.2.10', BAD);
    assert.equal(karma(await connect(hooks, '192.0.2.10')).history, 0, 'two connections: not yet');
    await session(hooks, '192.0.2.10', BAD);
    const bad = await connect(hooks, '192.0.2.10');
    assert.equal(karma(bad).history, -3);
    assert.equal(karma(bad).score, -3);
    assert.deepEqual(karma(bad).historyRecord, { good: 0, bad: 3, total: 3, last: karma(bad).historyRecord!.last });
    assert.ok(bad.conn.results.get('karma')!.fail.includes('history all bad (-3)'));

    for (let i = 0; i < 3; i++) await session(hooks, '192.0.2.11', GOOD);
    const good = await connect(hooks, '192.0.2.11');
    assert.equal(karma(good).history, 2);

    for (const r of [GOOD, GOOD, BAD]) await session(hooks, '192.0.2.12', r);
    assert.equal(karma(await connect(hooks, '192.0.2.12')).history, 1);
    for (const r of [BAD, BAD, GOOD]) await session(hooks, '192.0.2.13', r);
    assert.equal(karma(await connect(hooks, '192.0.2.13')).history, -1);
    // Neutral connections count in total only.
    for (let i = 0; i < 3; i++) await session(hooks, '192.0.2.14');
    const neutral = await connect(hooks, '192.0.2.14');
    assert.equal(karma(neutral).history, 0);
    assert.equal(karma(neutral).historyRecord!.total, 3);
  });

  test('history points never decide whether a connection was good or bad', async () => {
    const hooks = await load({ ...NO_TARPIT, reject_below: null, history: { min_connections: 1 } });
    await session(hooks, '192.0.2.20', BAD);
    // Score -3 from history alone; nothing bad this time: recorded neutral, not bad.
    const ctx = await session(hooks, '192.0.2.20');
    assert.equal(karma(ctx).score, -3);
    const next = await connect(hooks, '192.0.2.20');
    assert.deepEqual({ ...karma(next).historyRecord!, last: 0 }, { good: 0, bad: 1, total: 2, last: 0 });
  });

  test('relay, authenticated and allow-listed connections are not recorded', async () => {
    const hooks = await load({ ...NO_TARPIT, history: { min_connections: 1 } });
    await session(hooks, '192.0.2.30', BAD, { relayClient: true });
    const listed = await connect(hooks, '192.0.2.30', { sender: 'a@example.net' });
    listed.txn!.immunity.all = true;
    result(listed, 'dnsbl', { fail: 'zen' });
    await callHook(hooks, 'mail', listed, listed.txn!.sender!);
    listed.txn = undefined;
    await callHook(hooks, 'disconnect', listed);
    assert.equal(karma(await connect(hooks, '192.0.2.30')).historyRecord!.total, 0);
  });

  test('history expires expire_days after the last connection; last seen is recorded', async () => {
    let now = Date.UTC(2024, 0, 1);
    const db = new SqliteStore({ path: ':memory:', sweepIntervalMs: 0, now: () => now });
    const saved = clock.now;
    clock.now = () => now;
    try {
      const hooks = await load({ ...NO_TARPIT, history: { min_connections: 1, expire_days: 2 } }, { store: (ns = 'karma') => db.namespace(ns) });
      await session(hooks, '192.0.2.40', BAD);
      now += 86400_000;
      const seen = await connect(hooks, '192.0.2.40');
      assert.equal(karma(seen).history, -3);
      assert.equal(karma(seen).historyRecord!.last, Date.UTC(2024, 0, 1));
      now += 3 * 86400_000;
      assert.equal(karma(await connect(hooks, '192.0.2.40')).historyRecord!.total, 0, 'forgotten');
    } finally {
      clock.now = saved;
      await db.close();
    }
  });

  test('a failing store: err recorded, no history points (never a good reputation)', async () => {
    const broken: KvStore = {
      get: () => Promise.reject(new Error('disk on fire')),
      mget: () => Promise.reject(new Error('disk on fire')),
      set: () => Promise.reject(new Error('disk on fire')),
      del: () => Promise.reject(new Error('disk on fire')),
      incrBy: () => Promise.reject(new Error('disk on fire')),
      mincrBy: () => Promise.reject(new Error('disk on fire')),
      namespace: () => broken,
    };
    const hooks = await load(NO_TARPIT, { store: () => broken });
    const ctx = await connect(hooks);
    assert.equal(karma(ctx).history, 0);
    assert.deepEqual(ctx.conn.results.get('karma')!.err, ['history: disk on fire']);
    await callHook(hooks, 'disconnect', ctx); // a failed write is logged, not thrown
  });

  test('historyPoints: below min_connections and ties give none', () => {
    const cfg = { expire_days: 60, min_connections: 5, good_above: 1, bad_below: -1, points: { all_good: 2, good: 1, bad: -1, all_bad: -3 } };
    assert.equal(historyPoints({ good: 4, bad: 0, total: 4, last: 0 }, cfg), undefined);
    assert.equal(historyPoints({ good: 2, bad: 2, total: 5, last: 0 }, cfg), undefined);
    assert.deepEqual(historyPoints({ good: 5, bad: 0, total: 5, last: 0 }, cfg), { points: 2, label: 'all good' });
  });
});

describe('karma: history in a real Redis', () => {
  let redis: RedisServer;
  before(async () => {
    redis = await startRedisServer();
  });
  after(() => redis.destroy());

  test('connections are counted in Redis and read back by a new plugin instance', async () => {
    const open = () => new RedisStore({ port: redis.port, prefix: 'pq-test:' });
    const first = open();
    try {
      const hooks = await load({ ...NO_TARPIT, reject_below: null, history: { min_connections: 2 } }, { store: (ns = 'karma') => first.namespace(ns) });
      await session(hooks, '192.0.2.50', BAD);
      await session(hooks, '192.0.2.50', BAD);
    } finally {
      await first.close();
    }
    const second = open();
    try {
      assert.equal(await second.get('karma|192.0.2.50|bad'), '2');
      const hooks = await load({ ...NO_TARPIT, history: { min_connections: 2 }, defer_below: -2 }, { store: (ns = 'karma') => second.namespace(ns) });
      const ctx = await connect(hooks, '192.0.2.50', { sender: 'a@example.net' });
      assert.equal(karma(ctx).history, -3);
      assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DENYSOFT);
    } finally {
      await second.close();
    }
  });

  test('Redis down: the score goes on without history, recorded as err', async () => {
    await redis.stop();
    const store = new RedisStore({ port: redis.port, prefix: 'pq-test:', connectTimeoutMs: 300, commandTimeoutMs: 300 });
    try {
      const hooks = await load(NO_TARPIT, { store: (ns = 'karma') => store.namespace(ns) });
      const ctx = await connect(hooks, '192.0.2.51');
      assert.equal(karma(ctx).history, 0);
      assert.equal(ctx.conn.results.get('karma')!.err.length, 1);
    } finally {
      await store.close();
      await redis.start();
    }
  });
});

// ---- over SMTP through prequeue ----

describe('karma over SMTP', () => {
  let downstream: FakeSmtpServer;
  let redis: RedisServer;
  const dirs: string[] = [];
  before(async () => {
    downstream = await FakeSmtpServer.start();
    redis = await startRedisServer();
  });
  after(async () => {
    await downstream.close();
    await redis.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const config = (store: Record<string, unknown>, karmaOptions: Record<string, unknown> = {}, plugins: Record<string, unknown>[] = []) => ({
    mode: 'standalone',
    received_header: 'never',
    downstream: { address: `127.0.0.1:${downstream.port}` },
    store,
    plugins: [
      ...plugins,
      { badmailfrom: { addresses: ['@spam.example'] } },
      { karma: { tarpit: false, reject_below: -10, defer_below: -2, history: { min_connections: 2 }, ...karmaOptions } },
    ],
  });

  /**
   * A session with a sender badmailfrom lists: badmailfrom records its fail at MAIL (-3),
   * so karma, after it, already defers the MAIL (-3 is below defer_below): a bad connection.
   */
  async function spamSession(proxy: TestProxy): Promise<void> {
    const t = await SmtpTalk.connect(proxy.port);
    await t.cmd('EHLO bot.example');
    const mail = await t.cmd('MAIL FROM:<x@spam.example>');
    assert.equal(mail.code, 450);
    assert.match(mail.lines.join(' '), /karma -3/);
    await t.quit();
  }

  async function cleanSession(proxy: TestProxy): Promise<{ mail: number; enhanced?: string; text: string; eod?: number }> {
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const r = await t.send('a@example.net', ['b@example.test'], 'Subject: hi\r\n\r\nhi\r\n');
      return { mail: r.mail.code, enhanced: r.mail.enhanced, text: r.mail.lines.join(' '), eod: r.eod?.code };
    } finally {
      await t.quit();
    }
  }

  for (const backend of ['sqlite', 'redis'] as const) {
    test(`${backend}: the history survives a prequeue restart and changes the verdict`, async () => {
      let store: Record<string, unknown>;
      let path = '';
      if (backend === 'sqlite') {
        const dir = mkdtempSync(join(tmpdir(), 'pq-karma-'));
        dirs.push(dir);
        path = join(dir, 'state', 'karma.db');
        store = { backend: 'sqlite', path };
      } else {
        store = { backend: 'redis', redis: { port: redis.port, prefix: `karma-e2e-${Date.now()}:` } };
      }
      // A fresh store: a clean session is accepted.
      const first = await startProxy(config(store));
      try {
        assert.equal((await cleanSession(first)).eod, 250);
        await spamSession(first);
        await spamSession(first);
      } finally {
        await first.close();
      }
      if (backend === 'sqlite') {
        const db = new SqliteStore({ path, sweepIntervalMs: 0 });
        try {
          const [good, bad, total] = await db.namespace('karma').mget(['127.0.0.1|good', '127.0.0.1|bad', '127.0.0.1|total']);
          assert.deepEqual([good, bad, total], ['0', '2', '3'], 'in the file: one neutral, two bad connections');
        } finally {
          await db.close();
        }
      }
      // Restarted on the same store: two bad connections and no good one are "all bad" (-3), below defer_below (-2).
      const second = await startProxy(config(store));
      try {
        const r = await cleanSession(second);
        assert.equal(r.mail, 450);
        assert.equal(r.enhanced, '4.7.1');
        assert.match(r.text, /Your reputation here is too poor \(karma -3\)/);
        // Another client address has no history: the same session from it is accepted.
        const t = await connectFrom('127.0.0.2', second.port);
        assert.equal((await t.send('a@example.net', ['b@example.test'], 'Subject: hi\r\n\r\nhi\r\n')).eod?.code, 250);
        await t.quit();
      } finally {
        await second.close();
      }
    });
  }

  test('postfix mode: each XFORWARD client on one connection gets its own history', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pq-karma-'));
    dirs.push(dir);
    const cfg = { ...config({ backend: 'sqlite', path: join(dir, 'k.db') }, { history: { min_connections: 1 } }), mode: 'postfix' };
    const proxy = await startProxy(cfg);
    const mail = async (t: SmtpTalk, client: string, sender: string): Promise<number> => {
      assert.equal((await t.cmd(`XFORWARD ADDR=${client} NAME=[UNAVAILABLE] HELO=x.example PROTO=ESMTP`)).code, 250);
      const code = (await t.cmd(`MAIL FROM:<${sender}>`)).code;
      await t.cmd('RSET');
      return code;
    };
    try {
      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO mx.example.test');
      assert.equal(await mail(t, '192.0.2.60', 'x@spam.example'), 450, 'karma -3 from badmailfrom');
      assert.equal(await mail(t, '192.0.2.61', 'a@example.net'), 250);
      await t.quit();
      // The next Postfix connection: 192.0.2.60's bad connection was recorded when 192.0.2.61 took over.
      const u = await SmtpTalk.connect(proxy.port);
      await u.cmd('EHLO mx.example.test');
      assert.equal(await mail(u, '192.0.2.60', 'a@example.net'), 450, 'history all bad (-3)');
      assert.equal(await mail(u, '192.0.2.61', 'a@example.net'), 250, 'a neutral history');
      await u.quit();
    } finally {
      await proxy.close();
    }
  });

  test('positive karma grants immunity over SMTP: a polite client passes badmailfrom, a rude one does not', async () => {
    const ordered = await startProxy({
      mode: 'standalone',
      received_header: 'never',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      store: { backend: 'sqlite', path: join(mkdtempSync(join(tmpdir(), 'pq-karma-')), 'k.db') },
      plugins: [
        { earlytalker: { wait: 0.1, reject: false } },
        { karma: { tarpit: false, extra_rules: [{ plugin: 'earlytalker', kind: 'pass', match: 'connect', points: 3 }], immunity: { above: 2, plugins: ['badmailfrom'] } } },
        { badmailfrom: { addresses: ['@spam.example'] } },
      ],
    });
    try {
      const before = downstream.messages.length;
      const polite = await SmtpTalk.connect(ordered.port);
      const r = await polite.send('x@spam.example', ['b@example.test'], 'Subject: hi\r\n\r\nhi\r\n', 'mx.example.net');
      assert.equal(r.rcpt[0]!.code, 250, 'immune to badmailfrom');
      assert.equal(r.eod?.code, 250);
      await polite.quit();
      assert.equal(downstream.messages.length, before + 1);

      const rude = await SmtpTalk.connect(ordered.port, '127.0.0.1', false);
      rude.write('EHLO bot.example\r\n');
      assert.equal((await rude.reply()).code, 220);
      assert.equal((await rude.reply()).code, 250);
      assert.equal((await rude.cmd('MAIL FROM:<x@spam.example>')).code, 250);
      assert.equal((await rude.cmd('RCPT TO:<b@example.test>')).code, 550, 'no immunity: refused');
      await rude.quit();
    } finally {
      await ordered.close();
    }
  });

  test('negative karma tarpits over SMTP: the MAIL reply is delayed by the score', async () => {
    const proxy = await startProxy({
      mode: 'standalone',
      received_header: 'never',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      store: { backend: 'sqlite', path: join(mkdtempSync(join(tmpdir(), 'pq-karma-')), 'k.db') },
      plugins: [
        { earlytalker: { wait: 0.1, reject: false } },
        { karma: { reject_below: null, tarpit: { below: 0, seconds_per_point: 0.2, max: 2, hooks: ['mail'] } } },
      ],
    });
    try {
      const rude = await SmtpTalk.connect(proxy.port, '127.0.0.1', false);
      rude.write('EHLO bot.example\r\n');
      await rude.reply();
      await rude.reply();
      const t0 = Date.now();
      assert.equal((await rude.cmd('MAIL FROM:<a@example.net>')).code, 250);
      const ms = Date.now() - t0;
      assert.ok(ms >= 550 && ms < 1500, `earlytalker fail -3: 0.6 s at MAIL (${ms} ms)`);
      await rude.quit();
      const polite = await SmtpTalk.connect(proxy.port);
      await polite.cmd('EHLO mx.example.net');
      const t1 = Date.now();
      assert.equal((await polite.cmd('MAIL FROM:<a@example.net>')).code, 250);
      assert.ok(Date.now() - t1 < 300, 'no delay at score 0');
      await polite.quit();
    } finally {
      await proxy.close();
    }
  });
});
