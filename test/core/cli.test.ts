/**
 * The prequeue command as an operator uses it: --check, --version, --help,
 * overrides, the embedded defaults, SIGHUP reload (good and bad config),
 * SIGTERM drain, and workers sharing the listen socket.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { freePort } from '../helpers/postfix';
import { writeConfig } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';

const CLI = resolve(__dirname, '../../src/cli.js');
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20000 });

class Daemon {
  output = '';
  readonly exited: Promise<number | null>;
  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d) => (this.output += d));
    child.stderr!.on('data', (d) => (this.output += d));
    this.exited = new Promise((r) => child.on('exit', (code) => r(code)));
  }
  static start(args: string[]): Daemon {
    return new Daemon(spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  }
  async waitFor(re: RegExp, ms = 10000): Promise<void> {
    const until = Date.now() + ms;
    while (!re.test(this.output)) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${re}; output:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  count(re: RegExp): number {
    return (this.output.match(new RegExp(re, 'g')) ?? []).length;
  }
}

let downstream: FakeSmtpServer;
before(async () => {
  downstream = await FakeSmtpServer.start();
});
after(async () => {
  await downstream.close();
});

describe('one-shot commands', () => {
  test('--version and --help', () => {
    const v = run('--version');
    assert.equal(v.status, 0);
    assert.match(v.stdout.trim(), /^\d+\.\d+\.\d+$/);
    const h = run('--help');
    assert.equal(h.status, 0);
    for (const flag of ['--config', '--listen', '--downstream', '--check', '--version', '--help']) assert.ok(h.stdout.includes(flag), flag);
  });

  test('an unknown option exits 2 with the usage', () => {
    const r = run('--frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /Usage: prequeue/);
  });

  test('--check on the embedded defaults prints the plugin order per hook', () => {
    const r = run('--check');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /config\/prequeue\.yaml: OK/);
    assert.match(r.stdout, /mode postfix, listen 127\.0\.0\.1:10025, downstream 127\.0\.0\.1:10026/);
    assert.match(r.stdout, /unrecognized_command: count_unrecognized_commands -> count_denies/);
    assert.match(r.stdout, /data_post: headers/);
  });

  test('--check on config/mx.yaml prints the inbound MX set in its order', () => {
    const r = run('--check', '--config', require('node:path').resolve(__dirname, '../../../config/mx.yaml'));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /config\/mx\.yaml: OK/);
    assert.match(r.stdout, /plugins \(\d+\):/);
    // Exemptions first, counters, client checks, karma before greylisting, rcpt_ok last among the deciders at RCPT.
    assert.match(r.stdout, /connect: whitelist -> dnsbl -> fcrdns -> geoip -> karma/);
    assert.match(r.stdout, /rcpt: whitelist -> count_denies -> dnsbl -> helo -> rhsbl -> resolvable_fromhost -> karma -> greylisting -> rcpt_ok/);
    // Verify before anything changes the message; scanners after the cheap checks.
    assert.match(r.stdout, /data_post: karma -> headers -> spf -> dkim -> dmarc -> uribl -> clamav -> spamassassin -> bayes -> auth_results/);
  });

  test('--check with overrides shows them', () => {
    const r = run('--check', '--listen', '127.0.0.1:2525', '--downstream', '127.0.0.1:2526');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /listen 127\.0\.0\.1:2525, downstream 127\.0\.0\.1:2526/);
  });

  test('--check on a bad config exits 1 naming file, line and key', () => {
    const file = writeConfig({ mode: 'postfix', plugins: [{ headers: { reject_type: 'maybe' } }] });
    const r = run('--check', '--config', file);
    assert.equal(r.status, 1);
    assert.ok(r.stderr.includes(`${file}:`), r.stderr);
    assert.match(r.stderr, /plugins\[0\]\.headers\.reject_type/);
    const missing = run('--check', '--config', '/nonexistent/prequeue.yaml');
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /\/nonexistent\/prequeue\.yaml: \(top level\): cannot read/);
  });
});

describe('the daemon', () => {
  test('starts on the embedded defaults (with --listen/--downstream) and relays', async () => {
    const port = await freePort();
    const d = Daemon.start(['--listen', `127.0.0.1:${port}`, '--downstream', `127.0.0.1:${downstream.port}`]);
    try {
      await d.waitFor(/listening on 127\.0\.0\.1:\d+ \(postfix mode\)/);
      const t = await SmtpTalk.connect(port);
      const before = downstream.messages.length;
      const r = await t.send('a@example.net', ['b@example.test'], 'From: a@example.net\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nSubject: x\r\n\r\nhi\r\n', 'mx.example.test');
      assert.equal(r.eod?.code, 250);
      await t.quit();
      assert.equal(downstream.messages.length, before + 1);
      // Postfix mode adds no Received header of its own.
      assert.ok(!downstream.messages[before]!.data.toString().startsWith('Received:'));
      await d.waitFor(/info transaction .*sender=<a@example\.net> recipients=b@example\.test size=\d+/);
    } finally {
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0);
    }
  });

  test('SIGHUP reloads plugins for new sessions, keeps sessions in progress, survives a bad config', async () => {
    const port = await freePort();
    const base = { mode: 'standalone', listen: `127.0.0.1:${port}`, downstream: { address: `127.0.0.1:${downstream.port}` } };
    const file = writeConfig({ ...base, plugins: [] });
    const d = Daemon.start(['--config', file]);
    try {
      await d.waitFor(/listening on/);
      const old = await SmtpTalk.connect(port);
      await old.cmd('EHLO c.example');
      writeFileSync(file, JSON.stringify({ ...base, plugins: [{ badmailfrom: { addresses: ['@spam.example'], reject_at: 'mail' } }] }));
      d.child.kill('SIGHUP');
      await d.waitFor(/configuration reloaded/);
      // The session that started before the reload finishes on the old plugins.
      assert.equal((await old.cmd('MAIL FROM:<x@spam.example>')).code, 250);
      await old.quit();
      const fresh = await SmtpTalk.connect(port);
      await fresh.cmd('EHLO c.example');
      assert.equal((await fresh.cmd('MAIL FROM:<x@spam.example>')).code, 550);
      await fresh.quit();
      writeFileSync(file, 'mode: standalone\nplugins:\n  - badmailfrom: { nonsense: 1 }\n');
      d.child.kill('SIGHUP');
      await d.waitFor(/reload failed, keeping the running configuration: .*plugins\[0\]\.badmailfrom\.nonsense/);
      const still = await SmtpTalk.connect(port);
      await still.cmd('EHLO c.example');
      assert.equal((await still.cmd('MAIL FROM:<x@spam.example>')).code, 550, 'the previous good config still runs');
      await still.quit();
    } finally {
      d.child.kill('SIGTERM');
      await d.exited;
    }
  });

  test('SIGTERM: new connections refused, a transaction in flight finishes, then exit 0', async () => {
    const port = await freePort();
    const file = writeConfig({ mode: 'standalone', listen: `127.0.0.1:${port}`, downstream: { address: `127.0.0.1:${downstream.port}` } });
    const d = Daemon.start(['--config', file]);
    await d.waitFor(/listening on/);
    const t = await SmtpTalk.connect(port);
    await t.cmd('EHLO c.example');
    assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
    const idle = await SmtpTalk.connect(port);
    d.child.kill('SIGTERM');
    await d.waitFor(/shutting down/);
    // An idle session is told at once; a new connection is not accepted.
    const idleReply = await idle.reply();
    assert.equal(idleReply.code, 421);
    await assert.rejects(SmtpTalk.connect(port));
    const before = downstream.messages.length;
    assert.equal((await t.cmd('DATA')).code, 354);
    t.write('Subject: in flight\r\n\r\nstill delivered\r\n.\r\n');
    assert.equal((await t.reply()).code, 250);
    assert.equal(downstream.messages.length, before + 1);
    // The transaction is over: the next command is refused and the session closed.
    assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 421);
    assert.equal(await d.exited, 0);
  });

  test('workers share the listen socket', async () => {
    const port = await freePort();
    const file = writeConfig({ mode: 'standalone', workers: 2, listen: `127.0.0.1:${port}`, downstream: { address: `127.0.0.1:${downstream.port}` } });
    const d = Daemon.start(['--config', file]);
    try {
      await d.waitFor(/starting 2 workers/);
      await d.waitFor(/worker=1/);
      await d.waitFor(/worker=2/);
      assert.equal(d.count(/listening on/), 2);
      const before = downstream.messages.length;
      for (let i = 0; i < 6; i++) {
        const t = await SmtpTalk.connect(port);
        assert.equal((await t.send('a@example.net', ['b@example.test'], `Subject: ${i}\r\n\r\nx\r\n`)).eod?.code, 250);
        await t.quit();
      }
      assert.equal(downstream.messages.length, before + 6);
    } finally {
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0);
    }
  });
});
