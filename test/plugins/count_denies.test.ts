import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/count_denies';
import type { HookContext, MetaInfo, PluginHooks } from '../../src/plugin/api';
import { Decision } from '../../src/plugin/decision';
import { addr, callHook, loadPlugin, makeContext } from '../helpers/plugin-context';

const denied = (decision: Decision, hook: MetaInfo['hook'] = 'rcpt'): MetaInfo => ({ hook, plugin: 'other', verdict: { decision } });

async function denyTimes(hooks: PluginHooks, ctx: HookContext, n: number, decision = Decision.DENY): Promise<void> {
  for (let i = 0; i < n; i++) await callHook(hooks, 'deny', ctx, denied(decision));
}

test('count_denies: the command after the max-th rejection gets a temporary disconnect', async () => {
  const hooks = await loadPlugin(plugin, { max: 3 });
  const ctx = makeContext({ sender: 'a@b.test' });
  await denyTimes(hooks, ctx, 2);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('x@example.com'))).decision, Decision.DECLINED);
  await denyTimes(hooks, ctx, 1);
  assert.deepEqual(ctx.myResults()?.fail, ['3 rejections']);

  const v = await callHook(hooks, 'rcpt', ctx, addr('x@example.com'));
  assert.deepEqual(v, { decision: Decision.DENYSOFT_DISCONNECT, message: 'too many errors', enhanced: '4.7.0' });
  for (const [hook, args] of [
    ['helo', ['h']],
    ['ehlo', ['h']],
    ['mail', [addr('a@b.test')]],
    ['data', []],
    ['vrfy', ['x']],
    ['noop', []],
    ['unrecognized_command', ['FOO', '']],
  ] as const) {
    const r = await (callHook as (...a: unknown[]) => ReturnType<typeof callHook>)(hooks, hook, ctx, ...args);
    assert.equal(r.decision, Decision.DENYSOFT_DISCONNECT, hook);
  }
});

test('count_denies: default max is 10, counted per connection', async () => {
  const hooks = await loadPlugin(plugin, {});
  const ctx = makeContext();
  await denyTimes(hooks, ctx, 9);
  assert.equal((await callHook(hooks, 'helo', ctx, 'h')).decision, Decision.DECLINED);
  const other = makeContext();
  await denyTimes(hooks, other, 1);
  assert.equal((await callHook(hooks, 'noop', other)).decision, Decision.DECLINED);
  await denyTimes(hooks, ctx, 1, Decision.DENY_DISCONNECT);
  assert.equal((await callHook(hooks, 'helo', ctx, 'h')).decision, Decision.DENYSOFT_DISCONNECT);
  assert.equal((await callHook(hooks, 'noop', other)).decision, Decision.DECLINED);
});

test('count_denies: temporary rejections count only with include_temp', async () => {
  const plain = await loadPlugin(plugin, { max: 2 });
  const ctx = makeContext();
  await denyTimes(plain, ctx, 5, Decision.DENYSOFT);
  await denyTimes(plain, ctx, 5, Decision.DENYSOFT_DISCONNECT);
  assert.equal((await callHook(plain, 'mail', ctx, addr('a@b.test'))).decision, Decision.DECLINED);

  const withTemp = await loadPlugin(plugin, { max: 2, include_temp: true });
  const ctx2 = makeContext();
  await denyTimes(withTemp, ctx2, 1, Decision.DENYSOFT);
  await denyTimes(withTemp, ctx2, 1, Decision.DENY);
  assert.equal((await callHook(withTemp, 'mail', ctx2, addr('a@b.test'))).decision, Decision.DENYSOFT_DISCONNECT);
});

test('count_denies: options are validated', () => {
  assert.throws(() => plugin.options!.parse({ max: -1 }));
  assert.throws(() => plugin.options!.parse({ include_temp: 'yes' }));
  assert.throws(() => plugin.options!.parse({ hard_limit: 20 }));
});
