/** Configuration errors name the file, the key and (where it exists) the line. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfigFile, parseConfig } from '../../src/config/load';
import { MemoryLogger } from '../../src/log';
import { buildRuntime } from '../../src/runtime';
import { FIXTURE_PLUGINS } from '../helpers/proxy';

const FILE = '/etc/prequeue/test.yaml';

function problemsOf(text: string): ConfigError['problems'] {
  try {
    parseConfig(text, FILE);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.ok(err.message.startsWith(FILE), err.message);
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

async function pluginProblems(text: string): Promise<ConfigError['problems']> {
  try {
    const rt = await buildRuntime(parseConfig(text, FILE), new MemoryLogger('error'));
    await rt.chain.shutdown();
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

test('an empty file is a valid config with the documented defaults', () => {
  const { config, plugins } = parseConfig('', FILE);
  assert.equal(config.mode, 'postfix');
  assert.deepEqual(config.listen, { host: '127.0.0.1', port: 10025 });
  assert.deepEqual(config.downstream.address, { host: '127.0.0.1', port: 10026 });
  assert.deepEqual(config.trusted_proxies, ['127.0.0.1', '::1']);
  assert.deepEqual(plugins, []);
});

test('YAML syntax errors give the line', () => {
  const [p] = problemsOf('mode: postfix\nlisten: [127.0.0.1\nplugins: []\n');
  assert.equal(p!.key, 'YAML');
  assert.ok(p!.line && p!.line >= 2);
});

test('an unknown key is named with its line', () => {
  const [p] = problemsOf('mode: postfix\nlimits:\n  mesage_size: 10\n');
  assert.equal(p!.key, 'limits.mesage_size');
  assert.equal(p!.line, 3);
  assert.match(p!.message, /unknown key/);
});

test('a wrong type is named with its key', () => {
  const [p] = problemsOf('limits:\n  message_size: big\n');
  assert.equal(p!.key, 'limits.message_size');
  assert.equal(p!.line, 2);
});

test('bad enum, bad address and bad CIDR', () => {
  const problems = problemsOf('mode: sideways\nlisten: "nowhere"\nrelay_clients: [10.0.0.0/33]\n');
  assert.deepEqual(
    problems.map((p) => p.key).sort(),
    ['listen', 'mode', 'relay_clients[0]'],
  );
});

test("downstream timeouts must stay under Postfix's smtpd_proxy_timeout", () => {
  const problems = problemsOf('downstream:\n  timeouts:\n    eod: 120\n');
  assert.equal(problems[0]!.key, 'downstream.timeouts.eod');
  assert.match(problems[0]!.message, /smtpd_proxy_timeout/);
  const [deadline] = problemsOf('reply_deadline: 120\n');
  assert.equal(deadline!.key, 'reply_deadline');
  const [budget] = problemsOf('reply_deadline: 20\ndata_post_budget: 30\n');
  assert.equal(budget!.key, 'data_post_budget');
});

test('CLI overrides replace the file values and are validated too', () => {
  const { config } = parseConfig('listen: 127.0.0.1:25\n', FILE, { listen: '[::1]:2525', downstream: '192.0.2.1:26' });
  assert.deepEqual(config.listen, { host: '::1', port: 2525 });
  assert.deepEqual(config.downstream.address, { host: '192.0.2.1', port: 26 });
  assert.throws(() => parseConfig('', FILE, { listen: 'localhost:99999' }), /listen: port must be 1-65535/);
});

test('plugin entries: a name, a one-key map, name:instance; duplicates need an instance name', () => {
  const { plugins } = parseConfig('plugins:\n  - headers\n  - rcpt_ok: { domains: [example.test] }\n  - rcpt_ok:second\n', FILE);
  assert.deepEqual(
    plugins.map((p) => [p.id, p.module]),
    [
      ['headers', 'headers'],
      ['rcpt_ok', 'rcpt_ok'],
      ['rcpt_ok:second', 'rcpt_ok'],
    ],
  );
  const [dup] = problemsOf('plugins:\n  - headers\n  - headers\n');
  assert.equal(dup!.key, 'plugins[1].headers');
  assert.match(dup!.message, /twice/);
  const [bad] = problemsOf('plugins:\n  - { a: 1, b: 2 }\n');
  assert.equal(bad!.key, 'plugins[0]');
});

test('an unknown plugin is named with its position', async () => {
  const [p] = await pluginProblems('plugins:\n  - headers\n  - no_such_plugin\n');
  assert.equal(p!.key, 'plugins[1].no_such_plugin');
  assert.equal(p!.line, 3);
  assert.match(p!.message, /no plugin "no_such_plugin"/);
});

test("a plugin's own option is validated at load, with key and line", async () => {
  const [p] = await pluginProblems('plugins:\n  - count_denies:\n      max: -3\n');
  assert.equal(p!.key, 'plugins[0].count_denies.max');
  assert.equal(p!.line, 3);
  const [u] = await pluginProblems('plugins:\n  - badmailfrom:\n      adresses: [x@y.example]\n');
  assert.equal(u!.key, 'plugins[0].badmailfrom.adresses');
  assert.match(u!.message, /unknown key/);
});

test('common options are validated for every plugin', async () => {
  const [p] = await pluginProblems('plugins:\n  - headers:\n      reject_type: sometimes\n');
  assert.equal(p!.key, 'plugins[0].headers.reject_type');
  const [t] = await pluginProblems('plugins:\n  - headers:\n      timeout: 0\n');
  assert.equal(t!.key, 'plugins[0].headers.timeout');
});

test('a plugin that fails to start is a config error naming it', async () => {
  const [p] = await pluginProblems('plugins:\n  - badmailfrom:\n      file: /nonexistent/badmailfrom\n');
  assert.equal(p!.key, 'plugins[0].badmailfrom');
  assert.match(p!.message, /failed to start/);
});

test('plugin_dirs are searched before the built-in plugins', async () => {
  const rt = await buildRuntime(parseConfig(`plugin_dirs: [${JSON.stringify(FIXTURE_PLUGINS)}]\nplugins: [scripted]\n`, FILE), new MemoryLogger('error'));
  assert.equal(rt.chain.plugins[0]!.id, 'scripted');
  assert.match(rt.chain.describe(), /connect: scripted/);
  await rt.chain.shutdown();
});

test('the shipped configs are valid and their plugins load', async () => {
  for (const file of ['prequeue.yaml', 'example.yaml', 'mx.yaml']) {
    const path = require('node:path').resolve(__dirname, '../../../config', file);
    const rt = await buildRuntime(loadConfigFile(path), new MemoryLogger('error'));
    assert.ok(rt.chain.plugins.length > 0, file);
    await rt.chain.shutdown();
  }
});
