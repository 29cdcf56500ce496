/**
 * whitelist: entry syntax (inline and files, errors with their place), what
 * each hook grants and records, file reloads; and over the wire through the
 * real chain: host (XFORWARD ADDR in Postfix mode), HELO, sender and recipient
 * immunity making a denying plugin be skipped, named-plugin immunity,
 * per-recipient scope, and held-back rejections judged after the whitelist.
 */
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import plugin from '../../plugins/whitelist';
import { Decision, deny, denysoft } from '../../src/plugin/decision';
import type { HookContext } from '../../src/plugin/api';
import type { Address } from '../../src/session/state';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, configDir, loadPlugin, makeContext, memoryLogger } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { startDnsServer, type DnsServer } from '../helpers/dns-server';
import { connectFrom, pluginResults, postfixClient, transaction } from '../helpers/wire-clients';
import { scripted } from '../fixtures/plugins/scripted';

const plugins = (s: Set<string>): string[] => [...s].sort();

describe('whitelist entries and grants', () => {
  test('hosts: addresses and networks, IPv4 and IPv6; all plugins or the named ones; every match adds up', async () => {
    const hooks = await loadPlugin(plugin, {
      hosts: ['192.0.2.7', { net: '198.51.100.0/24', plugins: ['greylisting'] }, { net: '198.51.0.0/16', plugins: ['dnsbl', 'spf'] }, '2001:db8::/32'],
    });
    const one = makeContext({ name: 'whitelist', clientAddr: '192.0.2.7' });
    await callHook(hooks, 'connect', one);
    assert.equal(one.conn.immunity.all, true);
    assert.deepEqual(one.myResults()?.pass, ['host 192.0.2.7']);

    const farm = makeContext({ name: 'whitelist', clientAddr: '198.51.100.25' });
    assert.equal((await callHook(hooks, 'connect', farm)).decision, Decision.DECLINED, 'never decides anything');
    assert.equal(farm.conn.immunity.all, false);
    assert.deepEqual(plugins(farm.conn.immunity.plugins), ['dnsbl', 'greylisting', 'spf']);
    assert.deepEqual(farm.myResults()?.pass, ['host 198.51.100.0/24 (greylisting)', 'host 198.51.0.0/16 (dnsbl,spf)']);

    for (const [a, all] of [['2001:db8:1::5', true], ['::ffff:192.0.2.7', true], ['192.0.2.8', false], ['2001:db9::1', false]] as const) {
      const ctx = makeContext({ clientAddr: a });
      await callHook(hooks, 'connect', ctx);
      assert.equal(ctx.conn.immunity.all, all, a);
    }
    const none = makeContext({ name: 'whitelist', clientAddr: '203.0.113.1' });
    await callHook(hooks, 'connect', none);
    assert.equal(none.myResults(), undefined, 'nothing recorded when nothing matched');
  });

  test('HELO names: exact, or .domain for the names below it; case and trailing dot ignored', async () => {
    const hooks = await loadPlugin(plugin, { helos: ['MX.Partner.example', { name: '.farm.example', plugins: ['greylisting'] }] });
    const check = async (helo: string): Promise<[boolean, string[]]> => {
      const ctx = makeContext();
      await callHook(hooks, 'ehlo', ctx, helo);
      return [ctx.conn.immunity.all, plugins(ctx.conn.immunity.plugins)];
    };
    assert.deepEqual(await check('mx.partner.example.'), [true, []]);
    assert.deepEqual(await check('other.partner.example'), [false, []]);
    assert.deepEqual(await check('out-7.farm.example'), [false, ['greylisting']]);
    assert.deepEqual(await check('farm.example'), [false, []], '.farm.example means the names below it');
    const ctx = makeContext();
    await callHook(hooks, 'helo', ctx, 'MX.PARTNER.EXAMPLE');
    assert.equal(ctx.conn.immunity.all, true, 'HELO as well as EHLO');
  });

  test('senders: user@domain, @domain, domain, @.domain; the transaction only; never the null sender', async () => {
    const hooks = await loadPlugin(plugin, {
      senders: ['Boss@Corp.example', '@partner.example', 'friends.example', { address: '@.lists.example', plugins: ['headers'] }, 'noreply@.shop.example'],
    });
    const check = async (sender: string): Promise<[boolean, string[]]> => {
      const ctx = makeContext({ sender });
      await callHook(hooks, 'mail', ctx, ctx.txn!.sender!);
      assert.equal(ctx.conn.immunity.all, false, 'the connection is not exempted');
      return [ctx.txn!.immunity.all, plugins(ctx.txn!.immunity.plugins)];
    };
    assert.deepEqual(await check('boss@corp.example'), [true, []]);
    assert.deepEqual(await check('clerk@corp.example'), [false, []]);
    assert.deepEqual(await check('anyone@PARTNER.example'), [true, []]);
    assert.deepEqual(await check('anyone@sub.partner.example'), [false, []]);
    assert.deepEqual(await check('x@friends.example'), [true, []]);
    assert.deepEqual(await check('bounces@eu.lists.example'), [false, ['headers']]);
    assert.deepEqual(await check('bounces@lists.example'), [false, []]);
    assert.deepEqual(await check('noreply@eu.shop.example'), [true, []]);
    assert.deepEqual(await check('sales@eu.shop.example'), [false, []]);
    assert.deepEqual(await check(''), [false, []]);
  });

  test('recipients: the immunity goes on that recipient only, never on the transaction', async () => {
    const hooks = await loadPlugin(plugin, { recipients: ['postmaster@', 'abuse@example.com', { address: '@lists.example.com', plugins: ['greylisting'] }] });
    const ctx = makeContext({ name: 'whitelist', sender: 'x@sender.example' });
    const rcpts: Address[] = ['postmaster', 'Postmaster@any.example', 'abuse@example.com', 'abuse@other.example', 'list@lists.example.com', 'user@example.com'].map((a) =>
      addr(a),
    );
    for (const r of rcpts) await callHook(hooks, 'rcpt', ctx, r);
    assert.deepEqual(
      rcpts.map((r) => r.immunity && [r.immunity.all, plugins(r.immunity.plugins)]),
      [[true, []], [true, []], [true, []], undefined, [false, ['greylisting']], undefined],
    );
    assert.equal(ctx.txn!.immunity.all, false);
    assert.equal(ctx.txn!.immunity.plugins.size, 0);
    assert.deepEqual(ctx.myResults()?.pass, [
      'recipient postmaster@',
      'recipient postmaster@',
      'recipient abuse@example.com',
      'recipient @lists.example.com (greylisting)',
    ]);
  });

  test('bad entries are config errors that say where', async () => {
    await assert.rejects(loadPlugin(plugin, { hosts: ['192.0.2.1', '192.0.2.300'] }), /^Error: hosts\[1\]: not an IP address or network: "192.0.2.300"$/);
    await assert.rejects(loadPlugin(plugin, { hosts: ['10.0.0.0/33'] }), /not an IP address or network/);
    await assert.rejects(loadPlugin(plugin, { helos: ['two words'] }), /helos\[0\]: not a host name/);
    await assert.rejects(loadPlugin(plugin, { senders: ['<>'] }), /senders\[0\]: not an address/);
    await assert.rejects(loadPlugin(plugin, { senders: ['boss@'] }), /senders\[0\]: not an address/, 'user@ makes no sense for senders');
    await assert.rejects(loadPlugin(plugin, { recipients: ['@'] }), /recipients\[0\]: not an address/);
    await assert.rejects(loadPlugin(plugin, { recipients: ['localhost'] }), /recipients\[0\]: not an address/);
    assert.throws(() => plugin.options!.parse({ hosts: [{ net: '192.0.2.1', plugins: [] }] }), 'an empty plugin list is a mistake');
    assert.throws(() => plugin.options!.parse({ hosts: [{ address: '192.0.2.1' }] }));
    assert.throws(() => plugin.options!.parse({ host: [] }));
    const dir = configDir({ hosts: '192.0.2.1\n\n# fine\nnot-an-ip greylisting\n10.0.0.0/8\n::1/129\n' });
    await assert.rejects(
      loadPlugin(plugin, { hosts_file: 'hosts' }, { configDir: dir }),
      (err: Error) => err.message === `${join(dir, 'hosts')}:4: not an IP address or network: "not-an-ip"\n${join(dir, 'hosts')}:6: not an IP address or network: "::1/129"`,
    );
  });

  test('files: entry, then plugin names; comments; inline entries too; re-read when changed', async () => {
    const dir = configDir({
      hosts: ['# our partners', '203.0.113.0/24   greylisting, dnsbl   # the sender farm', '192.0.2.25', ''].join('\n'),
      recipients: 'postmaster@\nabuse@example.com  spamassassin\n',
    });
    const log = memoryLogger();
    const hooks = await loadPlugin(plugin, { hosts: ['198.51.100.1'], hosts_file: 'hosts', recipients_file: 'recipients', check_interval: 0 }, { configDir: dir, log });
    const grants = async (ip: string): Promise<[boolean, string[]]> => {
      const ctx = makeContext({ clientAddr: ip });
      await callHook(hooks, 'connect', ctx);
      return [ctx.conn.immunity.all, plugins(ctx.conn.immunity.plugins)];
    };
    assert.deepEqual(await grants('203.0.113.9'), [false, ['dnsbl', 'greylisting']]);
    assert.deepEqual(await grants('192.0.2.25'), [true, []]);
    assert.deepEqual(await grants('198.51.100.1'), [true, []]);
    const abuse = addr('abuse@example.com');
    await callHook(hooks, 'rcpt', makeContext({ txn: true }), abuse);
    assert.deepEqual(plugins(abuse.immunity!.plugins), ['spamassassin']);

    const path = join(dir, 'hosts');
    writeFileSync(path, '192.0.2.26\n');
    utimesSync(path, new Date(), new Date(Date.now() + 2000));
    assert.deepEqual(await grants('192.0.2.25'), [false, []], 'removed from the file');
    assert.deepEqual(await grants('192.0.2.26'), [true, []], 'added to the file');
    assert.deepEqual(await grants('198.51.100.1'), [true, []], 'inline entries stay');

    writeFileSync(path, '192.0.2.26\n192.0.2.x\n');
    utimesSync(path, new Date(), new Date(Date.now() + 4000));
    assert.deepEqual(await grants('192.0.2.26'), [true, []], 'a broken change keeps the previous version');
    assert.ok(log.entries.some((e) => e.level === 'error' && e.msg.startsWith(`${path}:2: not an IP address or network: "192.0.2.x"`)));
  });
});

describe('whitelist over the wire', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy | undefined;

  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    await downstream.close();
  });
  beforeEach(() => scripted.reset());
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
  });

  async function start(config: Record<string, unknown>): Promise<TestProxy> {
    proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${downstream.port}` }, ...config });
    return proxy;
  }

  /** A Postfix-mode session for client `addr` (XFORWARD, as Postfix's smtpd_proxy_filter sends it). */
  async function postfixClient(port: number, addr: string, helo = 'client.example.net'): Promise<SmtpTalk> {
    const t = await SmtpTalk.connect(port);
    assert.equal((await t.cmd('EHLO mx.example.test')).code, 250);
    assert.equal((await t.cmd(`XFORWARD NAME=[UNAVAILABLE] ADDR=${addr} PORT=4711 HELO=${helo} PROTO=ESMTP SOURCE=REMOTE`)).code, 250);
    return t;
  }

  const calls = (plugin: string, hook: string): number => scripted.calls.filter((c) => c.plugin === plugin && c.hook === hook).length;

  test('Postfix mode: the client XFORWARD names is what the host list is checked against', async () => {
    const p = await start({
      mode: 'postfix',
      plugins: [{ whitelist: { hosts: ['192.0.2.0/24'] } }, { 'scripted:checks': { prefix: 'c_', immune: true } }],
    });
    scripted.script['c_mail' as 'mail'] = deny('you are not welcome');
    const ok = await postfixClient(p.port, '192.0.2.7');
    assert.equal((await ok.cmd('MAIL FROM:<a@sender.example>')).code, 250, 'the whitelisted client skips the check');
    assert.equal((await ok.cmd('RCPT TO:<b@example.test>')).code, 250);
    assert.equal(calls('scripted:checks', 'mail'), 0, 'the immune plugin was not even called');
    await ok.quit();

    const other = await postfixClient(p.port, '198.51.100.9');
    const m = await other.cmd('MAIL FROM:<a@sender.example>');
    assert.equal(m.code, 550, 'the TCP peer is 127.0.0.1 here too: only XFORWARD ADDR counts');
    assert.match(m.lines.join(' '), /not welcome/);
    await other.quit();
    const logged = p.log.lines.find((l) => l.msg === 'transaction' && l.meta.client === '192.0.2.7');
    assert.equal((logged?.meta.results as Record<string, string>)?.whitelist, 'pass=host 192.0.2.0/24', 'what matched is in the transaction log');
  });

  test('named-plugin immunity: only the plugins named are skipped; a base name covers every instance', async () => {
    const grey = { 'scripted:greylisting': { prefix: 'g_', immune: true } };
    const dnsbl = { 'scripted:dnsbl': { prefix: 'd_', immune: true } };
    scripted.script['g_rcpt' as 'rcpt'] = denysoft('greylisted, try again later');
    scripted.script['d_rcpt' as 'rcpt'] = (_ctx: HookContext, ...args: unknown[]) =>
      (args[0] as Address).address.startsWith('trap@') ? deny('listed in a DNSBL') : undefined;

    let p = await start({ mode: 'postfix', plugins: [{ whitelist: { hosts: [{ net: '203.0.113.0/24', plugins: ['scripted:greylisting'] }] } }, grey, dnsbl] });
    const farm = await postfixClient(p.port, '203.0.113.50');
    assert.equal((await farm.cmd('MAIL FROM:<a@farm.example>')).code, 250);
    assert.equal((await farm.cmd('RCPT TO:<user@example.test>')).code, 250, 'greylisting skipped for the farm');
    const trap = await farm.cmd('RCPT TO:<trap@example.test>');
    assert.equal(trap.code, 550, 'the plugin not named still runs');
    assert.match(trap.lines.join(' '), /DNSBL/);
    await farm.quit();
    const stranger = await postfixClient(p.port, '198.51.100.9');
    assert.equal((await stranger.cmd('MAIL FROM:<a@else.example>')).code, 250);
    assert.equal((await stranger.cmd('RCPT TO:<user@example.test>')).code, 450, 'others are greylisted');
    await stranger.quit();
    await p.close();

    p = await start({ mode: 'postfix', plugins: [{ whitelist: { hosts: [{ net: '203.0.113.0/24', plugins: ['scripted'] }] } }, grey, dnsbl] });
    const both = await postfixClient(p.port, '203.0.113.50');
    assert.equal((await both.cmd('MAIL FROM:<a@farm.example>')).code, 250);
    assert.equal((await both.cmd('RCPT TO:<trap@example.test>')).code, 250, '"scripted" covers scripted:greylisting and scripted:dnsbl');
    await both.quit();
  });

  test('HELO immunity, in standalone mode', async () => {
    const p = await start({ plugins: [{ whitelist: { helos: ['.partner.example'] } }, { scripted: { immune: true } }] });
    scripted.script.rcpt = deny('no');
    const a = await SmtpTalk.connect(p.port);
    const r = await a.send('x@anything.example', ['b@example.test'], 'Subject: x\r\n\r\nhi\r\n', 'mx1.partner.example');
    assert.equal(r.rcpt[0]!.code, 250);
    assert.equal(r.eod?.code, 250);
    await a.quit();
    const b = await SmtpTalk.connect(p.port);
    assert.equal((await b.send('x@anything.example', ['b@example.test'], 'Subject: x\r\n\r\nhi\r\n', 'partner.example')).rcpt[0]!.code, 550);
    await b.quit();
  });

  test('sender immunity lasts for its transaction only', async () => {
    const p = await start({ plugins: [{ whitelist: { senders: ['@partner.example'] } }, { scripted: { immune: true } }] });
    scripted.script.rcpt = deny('no');
    const t = await SmtpTalk.connect(p.port);
    assert.equal((await t.cmd('EHLO client.example.net')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<boss@partner.example>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 250);
    assert.equal((await t.cmd('RSET')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<boss@elsewhere.example>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 550);
    await t.quit();
  });

  test('recipient immunity is per RCPT: it never leaks to the other recipients of the transaction', async () => {
    const p = await start({ plugins: [{ whitelist: { recipients: ['postmaster@', 'abuse@example.test'] } }, { scripted: { immune: true } }] });
    scripted.script.rcpt = deny('you are blocked');
    const before = downstream.messages.length;
    const t = await SmtpTalk.connect(p.port);
    const r = await t.send(
      'spammer@bad.example',
      ['user@example.test', 'postmaster@example.test', 'other@example.test', 'postmaster', 'abuse@example.test', 'abuse@other.test'],
      'Subject: complaint\r\n\r\nhi\r\n',
    );
    assert.deepEqual(
      r.rcpt.map((x) => x.code),
      [550, 250, 550, 250, 250, 550],
    );
    assert.equal(r.eod?.code, 250);
    assert.deepEqual(downstream.messages[before]!.rcptTo, ['<postmaster@example.test>', '<postmaster>', '<abuse@example.test>']);
    assert.equal(calls('scripted', 'rcpt'), 3, 'called for the three recipients not whitelisted only');
    await t.quit();
  });

  test('message checks after DATA still run for a message to whitelisted recipients only', async () => {
    const p = await start({ plugins: [{ whitelist: { recipients: ['postmaster@'] } }, { scripted: { immune: true } }] });
    scripted.script.data_post = deny('virus found');
    const t = await SmtpTalk.connect(p.port);
    const r = await t.send('a@sender.example', ['postmaster@example.test'], 'Subject: x\r\n\r\nhi\r\n');
    assert.equal(r.rcpt[0]!.code, 250);
    assert.equal(r.eod?.code, 550);
    await t.quit();
  });

  test('held-back rejections are judged after the whitelist: a listed client still reaches postmaster', async () => {
    const p = await start({
      mode: 'postfix',
      deferred_rejection: { stage: 'rcpt' },
      plugins: [{ whitelist: { recipients: ['postmaster@'] } }, { 'scripted:dnsbl': { prefix: 'd_', immune: true } }],
    });
    scripted.script['d_connect' as 'connect'] = (ctx: HookContext) => (ctx.conn.client.addr === '198.51.100.9' ? deny('listed in a DNSBL') : undefined);
    const t = await postfixClient(p.port, '198.51.100.9');
    assert.equal((await t.cmd('MAIL FROM:<a@listed.example>')).code, 250, 'stage rcpt');
    const user = await t.cmd('RCPT TO:<user@example.test>');
    assert.equal(user.code, 550);
    assert.match(user.lines.join(' '), /DNSBL/);
    assert.equal((await t.cmd('RCPT TO:<postmaster@example.test>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<other@example.test>')).code, 550, 'and the next recipient is refused again');
    await t.quit();
  });

  test('held-back rejections at MAIL: a whitelisted sender gets through, others do not', async () => {
    const p = await start({
      mode: 'postfix',
      plugins: [{ whitelist: { senders: ['@partner.example'] } }, { 'scripted:dnsbl': { prefix: 'd_', immune: true } }],
    });
    scripted.script['d_connect' as 'connect'] = deny('listed in a DNSBL');
    const t = await postfixClient(p.port, '198.51.100.9');
    assert.equal((await t.cmd('MAIL FROM:<boss@partner.example>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<user@example.test>')).code, 250);
    assert.equal((await t.cmd('RSET')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<someone@else.example>')).code, 550);
    await t.quit();
  });
});

// ---- end to end with the real plugins it exempts: dnsbl (real NSD) and greylisting (SQLite) ----

describe('whitelist end to end with real dnsbl and greylisting: accept, reject, defer, immunity', () => {
  let dns: DnsServer;
  let downstream: FakeSmtpServer;
  let proxy: TestProxy | undefined;
  before(async () => {
    dns = await startDnsServer({
      'bl.test': [
        '2.2.0.192 IN A 127.0.0.2',
        '3.2.0.192 IN A 127.0.0.2',
        '51.113.0.203 IN A 127.0.0.2',
        '7.0.0.127 IN A 127.0.0.2',
        '8.0.0.127 IN A 127.0.0.2',
      ].join('\n'),
    });
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    await downstream.close();
    await dns.stop();
  });
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
  });

  const start = async (mode: 'postfix' | 'standalone'): Promise<TestProxy> => {
    proxy = await startProxy({
      mode,
      downstream: { address: `127.0.0.1:${downstream.port}` },
      dns: { servers: [dns.server], timeout: 1, tries: 1 },
      store: { backend: 'sqlite', path: join(configDir({}), 'pq.db') },
      plugins: [
        {
          whitelist: {
            hosts: ['192.0.2.2', '127.0.0.7', { net: '203.0.113.0/24', plugins: ['greylisting'] }],
            helos: ['.partner.example'],
            senders: ['@partner.example'],
            recipients: ['postmaster@'],
          },
        },
        { dnsbl: { zones: ['bl.test'], exempt_recipients: [], skip_private: false } },
        { greylisting: { black_timeout: 60 } },
      ],
    });
    return proxy;
  };
  const MSG = 'From: <a@sender.example>\r\nSubject: e2e\r\n\r\nhello\r\n';
  const greyResult = async (p: TestProxy, client: string): Promise<string | undefined> => (await pluginResults(p, client, 'greylisting')).at(-1);

  test('postfix mode (XFORWARD ADDR/HELO): whitelisted host, HELO, sender and recipient accepted; others refused or greylisted', async () => {
    const p = await start('postfix');
    const before = downstream.messages.length;
    const run = async (addr: string, from: string, to: string[], helo = 'client.example.net') => {
      const t = await postfixClient(p.port, addr, helo);
      const r = await transaction(t, from, to, { message: MSG });
      await t.quit();
      return r;
    };
    // accept: listed and new (would be greylisted), but whitelisted by address
    const host = await run('192.0.2.2', 'a@sender.example', ['user@example.test']);
    assert.deepEqual([host.rcpt, host.eod], [[250], 250], host.texts.join(' | '));
    assert.match((await greyResult(p, '192.0.2.2')) ?? '', /^skip=rcpt: immune/, 'greylisting never looked at it');
    // reject: listed, not whitelisted
    const listed = await run('192.0.2.3', 'a@sender.example', ['user@example.test']);
    assert.deepEqual(listed.rcpt, [550], listed.texts.join(' | '));
    // defer: not listed, not whitelisted, new triplet
    const grey = await run('192.0.2.99', 'a@sender.example', ['user@example.test']);
    assert.deepEqual(grey.rcpt, [450], grey.texts.join(' | '));
    // a whitelisted XFORWARD HELO, a whitelisted sender, a whitelisted recipient
    assert.deepEqual((await run('192.0.2.3', 'a@sender.example', ['user@example.test'], 'mx1.partner.example')).rcpt, [250]);
    assert.deepEqual((await run('192.0.2.3', 'boss@partner.example', ['user@example.test'])).rcpt, [250]);
    const rcpt = await run('192.0.2.3', 'a@sender.example', ['user@example.test', 'postmaster@example.test']);
    assert.deepEqual(rcpt.rcpt, [550, 250], 'recipient immunity is for that recipient only');
    // named immunity: the farm skips greylisting, not the DNSBL
    assert.deepEqual((await run('203.0.113.50', 'a@sender.example', ['user@example.test'])).rcpt, [250], 'greylisting skipped for the farm');
    assert.deepEqual((await run('203.0.113.51', 'a@sender.example', ['user@example.test'])).rcpt, [550], 'dnsbl still applies to the farm');
    assert.equal(downstream.messages.length, before + 5);
  });

  test('standalone mode (direct TCP peer): host and HELO immunity from the peer itself', async () => {
    const p = await start('standalone');
    const before = downstream.messages.length;
    const run = async (from: string, helo = 'client.example.net') => {
      const t = await connectFrom(from, p.port);
      const r = await transaction(t, 'a@sender.example', ['user@example.test'], { helo, message: MSG });
      await t.quit();
      return r;
    };
    const host = await run('127.0.0.7');
    assert.deepEqual([host.rcpt, host.eod], [[250], 250], `listed, new, but whitelisted: ${host.texts.join(' | ')}`);
    assert.deepEqual((await run('127.0.0.8')).rcpt, [550], 'listed');
    assert.deepEqual((await run('127.0.0.9')).rcpt, [450], 'greylisted');
    assert.deepEqual((await run('127.0.0.8', 'mx1.partner.example')).rcpt, [250], 'whitelisted HELO');
    assert.equal(downstream.messages.length, before + 2);
  });
});
