import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/badrcptto';
import { Decision } from '../../src/plugin/decision';
import { addr, callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';

test('badrcptto: exact, @domain and /regex/ entries', async () => {
  const hooks = await loadPlugin(plugin, { addresses: ['Root@Example.com', '@old.example', '/^test\\d+@/'] });
  const ctx = makeContext({ sender: 'a@b.test' });
  for (const r of ['root@example.COM', 'anyone@OLD.example', 'test7@example.com']) {
    const v = await callHook(hooks, 'rcpt', ctx, addr(r));
    assert.equal(v.decision, Decision.DENY, r);
    assert.equal(v.message, `mail to ${r} not accepted here`);
  }
  assert.deepEqual(ctx.myResults()?.fail, ['Root@Example.com', '@old.example', '/^test\\d+@/']);

  const fine = await callHook(hooks, 'rcpt', ctx, addr('alice@example.com'));
  assert.equal(fine.decision, Decision.DECLINED);
  assert.deepEqual(ctx.myResults()?.pass, ['alice@example.com']);
});

test('badrcptto: file with reasons', async () => {
  const dir = configDir({ 'bad': '# closed mailboxes\nsales@example.com  this mailbox is closed, write to info@example.com\n' });
  const hooks = await loadPlugin(plugin, { file: 'bad' }, { configDir: dir });
  const v = await callHook(hooks, 'rcpt', makeContext({ sender: 'a@b.test' }), addr('Sales@example.com'));
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, 'this mailbox is closed, write to info@example.com');
});

test('badrcptto: unknown options are rejected', () => {
  assert.throws(() => plugin.options!.parse({ addresses: [], reject_at: 'rcpt' }));
});
