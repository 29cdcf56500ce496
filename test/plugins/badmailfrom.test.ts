import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/badmailfrom';
import { parseAddressEntry } from '../../src/plugin/address-list';
import { Decision } from '../../src/plugin/decision';
import { addr, callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';

const mailAt = { reject_at: 'mail' } as const;

test('badmailfrom: exact address, case-insensitive, rejected at MAIL', async () => {
  const hooks = await loadPlugin(plugin, { addresses: ['Spammer@Example.com'], ...mailAt });
  const ctx = makeContext({ sender: 'spammer@example.COM' });
  const v = await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, 'Your envelope sender is in my badmailfrom list');
  assert.deepEqual(ctx.myResults()?.fail, ['Spammer@Example.com']);

  const ok = makeContext({ sender: 'other@example.com' });
  assert.equal((await callHook(hooks, 'mail', ok, ok.txn!.sender!)).decision, Decision.DECLINED);
  assert.deepEqual(ok.myResults()?.pass, ['not listed']);
});

test('badmailfrom: @domain matches any user at exactly that domain', async () => {
  const hooks = await loadPlugin(plugin, { addresses: ['@spam.example'], ...mailAt });
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('anyone@SPAM.example'))).decision, Decision.DENY);
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('anyone@sub.spam.example'))).decision, Decision.DECLINED);
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('spam.example@other.test'))).decision, Decision.DECLINED);
});

test('badmailfrom: /regex/flags entries', async () => {
  const hooks = await loadPlugin(plugin, { addresses: ['/^bounce-\\d+@/i', '/\\.top$/'], ...mailAt });
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('BOUNCE-42@x.test'))).decision, Decision.DENY);
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('a@b.top'))).decision, Decision.DENY);
  // no i flag: case matters
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('a@b.TOP'))).decision, Decision.DECLINED);
});

test('badmailfrom: the null sender only matches <>', async () => {
  const broad = await loadPlugin(plugin, { addresses: ['/.*/', '@x.test'], ...mailAt });
  assert.equal((await callHook(broad, 'mail', makeContext({ txn: true }), addr(''))).decision, Decision.DECLINED);
  const nullEntry = await loadPlugin(plugin, { addresses: ['<>  no bounces here'], ...mailAt });
  const v = await callHook(nullEntry, 'mail', makeContext({ txn: true }), addr(''));
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, 'no bounces here');
});

test('badmailfrom: file entries with reasons and comments, relative to the config dir', async () => {
  const dir = configDir({
    badmailfrom: [
      '# senders we refuse',
      '@spam.example  we don\'t take mail from you',
      '<Bad@Example.org>',
      '/^x\\/y@/ slashes escaped',
      '',
    ].join('\n'),
  });
  const hooks = await loadPlugin(plugin, { file: 'badmailfrom', ...mailAt }, { configDir: dir });
  const v = await callHook(hooks, 'mail', makeContext({ txn: true }), addr('joe@spam.example'));
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, "we don't take mail from you");
  assert.equal((await callHook(hooks, 'mail', makeContext({ txn: true }), addr('bad@example.org'))).decision, Decision.DENY);
  const r = await callHook(hooks, 'mail', makeContext({ txn: true }), addr('x/y@z.test'));
  assert.equal(r.message, 'slashes escaped');
});

test('badmailfrom: by default the rejection waits for RCPT; postmaster and abuse stay reachable', async () => {
  const hooks = await loadPlugin(plugin, { addresses: ['@spam.example why not'] });
  const ctx = makeContext({ name: 'badmailfrom', sender: 'joe@spam.example' });
  assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED);
  assert.deepEqual(ctx.myResults()?.fail, ['@spam.example']);
  assert.deepEqual(ctx.txn!.notes.badmailfrom, { entry: '@spam.example', reason: 'why not' });

  const v = await callHook(hooks, 'rcpt', ctx, addr('user@example.com'));
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, 'why not');
  for (const r of ['postmaster', 'Postmaster@example.com', 'abuse@example.com']) {
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr(r))).decision, Decision.DECLINED, r);
  }
  assert.deepEqual(ctx.myResults()?.skip, ['rcpt postmaster', 'rcpt Postmaster@example.com', 'rcpt abuse@example.com']);

  // the next transaction starts clean
  ctx.newTransaction('fine@example.net');
  assert.equal((await callHook(hooks, 'mail', ctx, ctx.txn!.sender!)).decision, Decision.DECLINED);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('user@example.com'))).decision, Decision.DECLINED);
});

test('badmailfrom: bad entries are config errors', async () => {
  assert.throws(() => parseAddressEntry('/unterminated', 'x'), /not a \/regex\//);
  assert.throws(() => parseAddressEntry('/a(/', 'x'), /Invalid regular expression/);
  assert.throws(() => parseAddressEntry('@', 'x'), /empty domain/);
  await assert.rejects(loadPlugin(plugin, { addresses: ['/(/'] }));
  assert.throws(() => plugin.options!.parse({ reject_at: 'data' }));
  assert.throws(() => plugin.options!.parse({ address: [] }));
});
