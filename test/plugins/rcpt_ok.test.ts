import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/rcpt_ok';
import { Decision } from '../../src/plugin/decision';
import { addr, callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';

test('rcpt_ok: OK for a listed domain, case-insensitive', async () => {
  const hooks = await loadPlugin(plugin, { domains: ['Example.COM'] });
  const ctx = makeContext({ sender: 'a@remote.test' });
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('Bob@EXAMPLE.com'))).decision, Decision.OK);
  assert.deepEqual(ctx.myResults()?.pass, ['example.com']);
});

test('rcpt_ok: denies relaying for other domains with "relaying denied"', async () => {
  const hooks = await loadPlugin(plugin, { domains: ['example.com'] });
  const ctx = makeContext({ sender: 'a@remote.test' });
  const v = await callHook(hooks, 'rcpt', ctx, addr('bob@elsewhere.test'));
  assert.equal(v.decision, Decision.DENY);
  assert.equal(v.message, 'relaying denied');
  assert.deepEqual(ctx.myResults()?.fail, ['elsewhere.test']);
});

test('rcpt_ok: relay clients get DECLINED for foreign domains, OK for ours', async () => {
  const hooks = await loadPlugin(plugin, { domains: ['example.com'] });
  const ctx = makeContext({ sender: 'a@example.com', relayClient: true });
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('x@elsewhere.test'))).decision, Decision.DECLINED);
  assert.deepEqual(ctx.myResults()?.skip, ['relay client']);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('x@example.com'))).decision, Decision.OK);
});

test('rcpt_ok: without domains it has no opinion', async () => {
  const hooks = await loadPlugin(plugin, {});
  const ctx = makeContext({ sender: 'a@remote.test' });
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('x@anything.test'))).decision, Decision.DECLINED);
  assert.deepEqual(ctx.myResults()?.skip, ['no domains configured']);
});

test('rcpt_ok: bare postmaster is always OK', async () => {
  for (const options of [{}, { domains: ['example.com'] }]) {
    const hooks = await loadPlugin(plugin, options);
    const ctx = makeContext({ sender: '' });
    assert.equal((await callHook(hooks, 'rcpt', ctx, addr('PostMaster'))).decision, Decision.OK);
  }
  // postmaster at a foreign domain is relaying like any other address
  const hooks = await loadPlugin(plugin, { domains: ['example.com'] });
  assert.equal((await callHook(hooks, 'rcpt', makeContext({ sender: '' }), addr('postmaster@other.test'))).decision, Decision.DENY);
});

test('rcpt_ok: a local part without domain (not postmaster) is denied', async () => {
  const hooks = await loadPlugin(plugin, { domains: ['example.com'] });
  const v = await callHook(hooks, 'rcpt', makeContext({ sender: 'a@b.test' }), addr('root'));
  assert.equal(v.decision, Decision.DENY);
});

test('rcpt_ok: sub-domains only with subdomains: true', async () => {
  const strict = await loadPlugin(plugin, { domains: ['example.com'] });
  const loose = await loadPlugin(plugin, { domains: ['example.com'], subdomains: true });
  const sub = addr('a@mx.Mail.example.com');
  assert.equal((await callHook(strict, 'rcpt', makeContext({ sender: 'a@b.test' }), sub)).decision, Decision.DENY);
  assert.equal((await callHook(loose, 'rcpt', makeContext({ sender: 'a@b.test' }), sub)).decision, Decision.OK);
  // a look-alike is not a sub-domain
  assert.equal((await callHook(loose, 'rcpt', makeContext({ sender: 'a@b.test' }), addr('a@badexample.com'))).decision, Decision.DENY);
});

test('rcpt_ok: domains_file relative to the config dir, with comments', async () => {
  const dir = configDir({ 'rcpthosts': '# our domains\nexample.org\n\n  Example.NET  # the other one\n' });
  const hooks = await loadPlugin(plugin, { domains_file: 'rcpthosts' }, { configDir: dir });
  const ctx = makeContext({ sender: 'a@b.test' });
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('a@example.org'))).decision, Decision.OK);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('a@example.net'))).decision, Decision.OK);
  assert.equal((await callHook(hooks, 'rcpt', ctx, addr('a@example.com'))).decision, Decision.DENY);
});

test('rcpt_ok: an empty domains_file still means "deny everything foreign"', async () => {
  const dir = configDir({ 'empty': '# nothing yet\n' });
  const hooks = await loadPlugin(plugin, { domains_file: 'empty' }, { configDir: dir });
  assert.equal((await callHook(hooks, 'rcpt', makeContext({ sender: 'a@b.test' }), addr('a@example.com'))).decision, Decision.DENY);
});

test('rcpt_ok: options are validated', async () => {
  assert.throws(() => plugin.options!.parse({ domain: ['x'] }));
  assert.throws(() => plugin.options!.parse({ domains: 'example.com' }));
  await assert.rejects(loadPlugin(plugin, { domains_file: 'missing' }, { configDir: configDir({}) }));
});
