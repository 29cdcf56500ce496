import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/count_unrecognized_commands';
import { Decision } from '../../src/plugin/decision';
import { callHook, loadPlugin, makeContext } from '../helpers/plugin-context';

test('count_unrecognized_commands: DECLINED below max, DENY_DISCONNECT at max (default 4)', async () => {
  const hooks = await loadPlugin(plugin, {});
  const ctx = makeContext({ name: 'count_unrecognized_commands' });
  for (let i = 1; i < 4; i++) {
    assert.equal((await callHook(hooks, 'unrecognized_command', ctx, 'FOO', '')).decision, Decision.DECLINED);
  }
  const v = await callHook(hooks, 'unrecognized_command', ctx, 'BAR', 'x');
  assert.equal(v.decision, Decision.DENY_DISCONNECT);
  assert.match(v.message!, /4 unrecognized commands/);
  assert.equal(ctx.conn.notes.count_unrecognized_commands, 4);
  assert.deepEqual(ctx.myResults()?.fail, ['4 unrecognized commands']);
  assert.deepEqual(ctx.myResults()?.msg, ['FOO', 'FOO', 'FOO']);
});

test('count_unrecognized_commands: counts per connection, across transactions', async () => {
  const hooks = await loadPlugin(plugin, { max: 2 });
  const a = makeContext();
  const b = makeContext();
  assert.equal((await callHook(hooks, 'unrecognized_command', a, 'X', '')).decision, Decision.DECLINED);
  assert.equal((await callHook(hooks, 'unrecognized_command', b, 'X', '')).decision, Decision.DECLINED);
  a.newTransaction('s@example.com');
  assert.equal((await callHook(hooks, 'unrecognized_command', a, 'X', '')).decision, Decision.DENY_DISCONNECT);
});

test('count_unrecognized_commands: max must be a positive integer', () => {
  assert.throws(() => plugin.options!.parse({ max: 0 }));
  assert.throws(() => plugin.options!.parse({ max: 2.5 }));
  assert.throws(() => plugin.options!.parse({ limit: 3 }));
});
