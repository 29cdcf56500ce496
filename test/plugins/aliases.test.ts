/**
 * aliases: the parser (every syntax form, errors with file:line), resolution
 * (recursion, loops, depth, catch-all, any domain, details), the plugin at
 * RCPT, and over the wire: unknown users refused and never relayed, aliases
 * rewritten so the downstream gets the targets (with ORCPT), per-recipient
 * options seen by a later plugin.
 */
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import plugin from '../../plugins/aliases';
import { AliasFileError, parseAliases } from '../../plugins/aliases/parse';
import { AliasTable, type Resolution } from '../../plugins/aliases/table';
import { Decision } from '../../src/plugin/decision';
import type { HookContext } from '../../src/plugin/api';
import type { Address } from '../../src/session/state';
import { forwardedRcptArgument } from '../../src/session/transaction';
import { DEFAULT_CAPABILITIES, FakeSmtpServer } from '../helpers/fake-smtp-server';
import { addr, callHook, configDir, loadPlugin, makeContext, memoryLogger } from '../helpers/plugin-context';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { GTUBE, startSpamd, type Spamd } from '../helpers/spamd';
import { connectFrom, postfixClient, transaction } from '../helpers/wire-clients';
import { scripted } from '../fixtures/plugins/scripted';

const HJP = 'hjp,peter.holzer@wsr.ac.at,wifo.at: hjp@asherah.wsr.ac.at (denysoft_greylist, spamassassin_reject_threshold=10)';

function table(text: string, opts: Partial<{ detailSeparators: string; maxDepth: number }> = {}): AliasTable {
  return new AliasTable(parseAliases(text, 'aliases'), { detailSeparators: '+', maxDepth: 10, ...opts });
}

function targets(r: Resolution): string[] {
  assert.equal(r.kind, 'found', JSON.stringify(r));
  return (r as Extract<Resolution, { kind: 'found' }>).targets;
}

/** The problems of a file that must not parse (or check). */
function problems(text: string, check = false): string[] {
  try {
    const t = table(text);
    if (check) t.check();
  } catch (err) {
    assert.ok(err instanceof AliasFileError, String(err));
    return err.problems;
  }
  assert.fail('expected the file to be refused');
}

describe('aliases file syntax', () => {
  test("qpsmtpd's example: local parts before the single @, domains after it, every combination", () => {
    const { entries, domains } = parseAliases(HJP, '/etc/prequeue/aliases');
    assert.deepEqual([...entries.keys()].sort(), ['hjp@wifo.at', 'hjp@wsr.ac.at', 'peter.holzer@wifo.at', 'peter.holzer@wsr.ac.at']);
    assert.deepEqual([...domains].sort(), ['wifo.at', 'wsr.ac.at']);
    const e = entries.get('peter.holzer@wifo.at')!;
    assert.deepEqual(e.targets, ['hjp@asherah.wsr.ac.at']);
    assert.deepEqual(e.options, { denysoft_greylist: true, spamassassin_reject_threshold: '10' });
    assert.equal(e.where, '/etc/prequeue/aliases:1');
    assert.equal(e.pattern, 'hjp,peter.holzer@wsr.ac.at,wifo.at');
  });

  test('any domain, catch-all, several targets, options after the pattern, comments, case and trailing dots', () => {
    const text = [
      '# the postmaster of every domain',
      '',
      '  Postmaster , Abuse @ : <hjp@wsr.ac.at>   # comment after whitespace',
      '*@Lists.Example.COM.: listmaster@example.com',
      'office@example.com (Spam_Level = high , VIP): anna@example.com,bob@example.com , anna@EXAMPLE.com',
      'me#too@example.com: me@example.org',
    ].join('\r\n');
    const { entries, domains } = parseAliases(text, 'f');
    assert.deepEqual([...entries.keys()], ['postmaster@', 'abuse@', '*@lists.example.com', 'office@example.com', 'me#too@example.com']);
    assert.deepEqual([...domains].sort(), ['example.com', 'lists.example.com'], 'an any-domain pattern covers no domain');
    assert.deepEqual(entries.get('postmaster@')!.targets, ['hjp@wsr.ac.at']);
    assert.equal(entries.get('postmaster@')!.where, 'f:3');
    assert.deepEqual(entries.get('office@example.com')!.targets, ['anna@example.com', 'bob@example.com'], 'duplicates dropped');
    assert.deepEqual(entries.get('office@example.com')!.options, { spam_level: 'high', vip: true });
    assert.equal(entries.get('postmaster@')!.options, undefined);
  });

  test('errors name file and line, all of them at once', () => {
    const p = problems(
      [
        'ok@example.com: a@example.org',
        'no colon here',
        'postmaster: hjp@example.com',
        'a@b@c.example: x@y.example',
        'x@example.com:',
        'y@example.com: justalocalpart',
        'z@example.com: a@b.example (bad option!)',
        'w@example.com (a): b@c.example (d)',
        'ok@example.com: c@example.org',
        'v@example.com,,example.org: a@b.example',
        ',u@example.com: a@b.example',
        't@example.com: a@b.example (k=)',
        's@example.com: a@b.example (k=1, K=2)',
        'r@example.com: a(b)@c.example',
      ].join('\n'),
    );
    assert.deepEqual(p, [
      'aliases:2: expected "local parts@domains: targets"',
      'aliases:3: pattern "postmaster" has no @ (write "postmaster@" for any domain, "postmaster@example.com" for one)',
      'aliases:4: pattern "a@b@c.example" has more than one @: list the local parts before it and the domains after it',
      'aliases:5: empty target',
      'aliases:6: target "justalocalpart" is not a complete address (local@domain)',
      'aliases:7: bad option "bad option!" (expected flag or key=value)',
      'aliases:8: options given twice',
      'aliases:9: ok@example.com is already defined at aliases:1',
      'aliases:10: empty domain in "v@example.com,,example.org" (a pattern for any domain has nothing after the @)',
      'aliases:11: empty local part in ",u@example.com"',
      'aliases:12: option k has an empty value',
      'aliases:13: option k given twice',
      'aliases:14: parentheses only around the options, at the end of the line',
      'aliases:14: target "a(b)@c.example" is not a complete address (local@domain)',
    ]);
  });

  test('a loop between definite addresses is refused at load, with the line', () => {
    const p = problems(['a@example.com: b@example.com', 'b@example.com: c@example.com, a@example.com'].join('\n'), true);
    assert.deepEqual(p, [
      'aliases:1: alias loop: a@example.com -> b@example.com -> a@example.com',
      'aliases:2: alias loop: b@example.com -> a@example.com -> b@example.com',
    ]);
  });
});

describe('alias resolution', () => {
  const t = table(
    [
      HJP,
      'postmaster,sysadm@: hjp@wsr.ac.at',
      'hjp@asherah.wsr.ac.at: hjp@asherah.wsr.ac.at, hjp@hjp.at',
      'team@example.com: hjp@wsr.ac.at, anna@example.com, hjp@wifo.at',
      'anna@example.com: anna@example.com',
      '*@example.com: catchall@example.net',
      'info@: info-desk@example.net',
    ].join('\n'),
  );

  test('recursive: a target that is an alias is expanded; an address mapped to itself is a mailbox', () => {
    assert.deepEqual(targets(t.resolve('postmaster@anything.example')), ['hjp@asherah.wsr.ac.at', 'hjp@hjp.at']);
    assert.deepEqual(targets(t.resolve('Peter.Holzer@WIFO.at')), ['hjp@asherah.wsr.ac.at', 'hjp@hjp.at']);
    assert.deepEqual(targets(t.resolve('anna@example.com')), ['anna@example.com']);
  });

  test('duplicates reached by several paths are delivered once', () => {
    assert.deepEqual(targets(t.resolve('team@example.com')), ['hjp@asherah.wsr.ac.at', 'hjp@hjp.at', 'anna@example.com']);
  });

  test("options come from the recipient's own entry, not from its targets' entries", () => {
    const direct = t.resolve('hjp@wsr.ac.at');
    assert.deepEqual(direct.kind === 'found' && direct.options, { denysoft_greylist: true, spamassassin_reject_threshold: '10' });
    const viaPostmaster = t.resolve('postmaster@wsr.ac.at');
    assert.equal(viaPostmaster.kind === 'found' && viaPostmaster.options, undefined);
  });

  test('user@ (any domain) matches every domain and the bare <postmaster>', () => {
    assert.deepEqual(targets(t.resolve('postmaster')), ['hjp@asherah.wsr.ac.at', 'hjp@hjp.at']);
    assert.deepEqual(targets(t.resolve('info@foreign.example')), ['info-desk@example.net']);
  });

  test('catch-all: only where nothing more specific matches', () => {
    assert.deepEqual(targets(t.resolve('nobody@example.com')), ['catchall@example.net']);
    assert.deepEqual(targets(t.resolve('anna@example.com')), ['anna@example.com'], 'the explicit entry wins');
    assert.deepEqual(targets(t.resolve('info@example.com')), ['info-desk@example.net'], 'a named user at any domain beats the catch-all');
  });

  test('unknown in a covered domain, foreign elsewhere', () => {
    assert.deepEqual(t.resolve('nobody@wsr.ac.at'), { kind: 'unknown' });
    assert.deepEqual(t.resolve('nobody@wifo.at.'), { kind: 'unknown' });
    assert.deepEqual(t.resolve('hjp@other.example'), { kind: 'foreign' });
    assert.deepEqual(t.resolve('nobody'), { kind: 'foreign' });
  });

  test('a detail (+...) is kept through the expansion', () => {
    assert.deepEqual(targets(t.resolve('hjp+lists@wsr.ac.at')), ['hjp+lists@asherah.wsr.ac.at', 'hjp+lists@hjp.at']);
    assert.deepEqual(targets(t.resolve('anna+x@example.com')), ['anna+x@example.com'], 'a mailbox with a detail stays itself');
    const none = table('hjp@wsr.ac.at: hjp@asherah.wsr.ac.at', { detailSeparators: '' });
    assert.deepEqual(none.resolve('hjp+lists@wsr.ac.at'), { kind: 'unknown' });
    const dash = table('hjp@wsr.ac.at: hjp@asherah.wsr.ac.at', { detailSeparators: '-+' });
    assert.deepEqual(targets(dash.resolve('hjp-x@wsr.ac.at')), ['hjp-x@asherah.wsr.ac.at']);
  });

  test('a loop only catch-alls reach is an error when mail arrives, not at load', () => {
    const loop = table(['*@a.example: x@b.example', '*@b.example: y@a.example'].join('\n'));
    loop.check();
    const r = loop.resolve('someone@a.example');
    assert.equal(r.kind, 'error');
    assert.equal(r.kind === 'error' && r.message, 'alias loop: someone@a.example -> x@b.example -> y@a.example -> x@b.example');
    assert.equal(r.kind === 'error' && r.where, 'aliases:1');
  });

  test('expansion deeper than max_depth is refused (every entry looked up counts, the mailbox\'s own too)', () => {
    const chain = Array.from({ length: 6 }, (_, i) => `u${i}@example.com: u${i + 1}@example.com`).join('\n') + '\nu6@example.com: u6@example.com';
    assert.deepEqual(targets(table(chain, { maxDepth: 7 }).resolve('u0@example.com')), ['u6@example.com']);
    const r = table(chain, { maxDepth: 6 }).resolve('u0@example.com');
    assert.equal(r.kind, 'error');
    assert.equal(r.kind === 'error' && r.message, 'alias expansion of u0@example.com deeper than 6: ' + [0, 1, 2, 3, 4, 5, 6].map((i) => `u${i}@example.com`).join(' -> '));
    assert.throws(() => table(chain, { maxDepth: 6 }).check(), /aliases:1: alias expansion of u0@example.com deeper than 6/);
  });
});

describe('aliases plugin at RCPT', () => {
  const FILE = ['office@example.com: anna@example.com, bob@example.com (denysoft_greylist)', 'anna,bob@example.com: anna@mail.example.com, bob@mail.example.com'];
  // anna and bob each expand to both mailboxes: silly, but it shows the fan-out.

  test('unknown user in an aliased domain: DENY 5.1.1 "no such user"', async () => {
    const hooks = await loadPlugin(plugin, { file: 'aliases' }, { configDir: configDir({ aliases: FILE.join('\n') }) });
    const ctx = makeContext({ name: 'aliases', sender: 'x@sender.example' });
    const v = await callHook(hooks, 'rcpt', ctx, addr('carol@example.com'));
    assert.equal(v.decision, Decision.DENY);
    assert.equal(v.message, 'no such user');
    assert.equal(v.enhanced, '5.1.1');
    assert.deepEqual(ctx.myResults()?.fail, ['carol@example.com: no such user']);
  });

  test('other domains: DECLINED, untouched', async () => {
    const hooks = await loadPlugin(plugin, {}, { configDir: configDir({ aliases: FILE.join('\n') }) });
    const ctx = makeContext({ name: 'aliases', sender: 'x@sender.example' });
    const rcpt = addr('carol@elsewhere.example');
    assert.equal((await callHook(hooks, 'rcpt', ctx, rcpt)).decision, Decision.DECLINED);
    assert.equal(rcpt.forwardTo, undefined);
    assert.equal(rcpt.options, undefined);
    assert.deepEqual(ctx.myResults()?.skip, ['carol@elsewhere.example: not an aliased domain']);
  });

  test('an alias: DECLINED (later checks still run), targets in forwardTo, options on the recipient', async () => {
    const hooks = await loadPlugin(plugin, {}, { configDir: configDir({ aliases: FILE.join('\n') }) });
    const ctx = makeContext({ name: 'aliases', sender: 'x@sender.example' });
    const rcpt = addr('Office@Example.com');
    rcpt.options = { set_by_someone_else: 'kept' };
    assert.equal((await callHook(hooks, 'rcpt', ctx, rcpt)).decision, Decision.DECLINED);
    assert.deepEqual(rcpt.forwardTo, ['anna@mail.example.com', 'bob@mail.example.com']);
    assert.deepEqual(rcpt.options, { set_by_someone_else: 'kept', denysoft_greylist: true });
    assert.deepEqual(ctx.myResults()?.pass, ['Office@Example.com -> anna@mail.example.com,bob@mail.example.com']);
  });

  test('rewrite: false only validates: options set, nothing forwarded', async () => {
    const hooks = await loadPlugin(plugin, { rewrite: false }, { configDir: configDir({ aliases: FILE.join('\n') }) });
    const rcpt = addr('office@example.com');
    await callHook(hooks, 'rcpt', makeContext({ txn: true }), rcpt);
    assert.equal(rcpt.forwardTo, undefined);
    assert.deepEqual(rcpt.options, { denysoft_greylist: true });
  });

  test('a mailbox mapped to itself is relayed unchanged', async () => {
    const hooks = await loadPlugin(plugin, {}, { configDir: configDir({ aliases: 'anna@example.com: anna@example.com' }) });
    const rcpt = addr('anna@example.com');
    assert.equal((await callHook(hooks, 'rcpt', makeContext({ txn: true }), rcpt)).decision, Decision.DECLINED);
    assert.equal(rcpt.forwardTo, undefined);
  });

  test('a loop found as mail arrives: DENYSOFT 4.4.6, logged with the line', async () => {
    const hooks = await loadPlugin(plugin, {}, { configDir: configDir({ aliases: '*@a.example: x@b.example\n*@b.example: y@a.example' }) });
    const ctx = makeContext({ name: 'aliases', txn: true });
    const v = await callHook(hooks, 'rcpt', ctx, addr('z@a.example'));
    assert.equal(v.decision, Decision.DENYSOFT);
    assert.equal(v.enhanced, '4.4.6');
    assert.match(ctx.log.entries.find((e) => e.level === 'error')?.msg ?? '', /aliases:1: alias loop: z@a\.example -> x@b\.example/);
  });

  test('a broken file stops the start with file:line; a missing one too', async () => {
    const dir = configDir({ aliases: 'good@example.com: a@example.org\nbad line\n' });
    await assert.rejects(loadPlugin(plugin, {}, { configDir: dir }), (err: Error) => err.message === `${join(dir, 'aliases')}:2: expected "local parts@domains: targets"`);
    await assert.rejects(loadPlugin(plugin, { file: 'nonexistent' }, { configDir: dir }), /ENOENT/);
    assert.throws(() => plugin.options!.parse({ files: 'x' }));
    assert.throws(() => plugin.options!.parse({ max_depth: 0 }));
  });

  test('the file is re-read when it changes; a broken change is logged and the previous version kept', async () => {
    const dir = configDir({ aliases: 'anna@example.com: anna@mail.example.com\n' });
    const path = join(dir, 'aliases');
    const log = memoryLogger();
    const hooks = await loadPlugin(plugin, { check_interval: 0 }, { configDir: dir, log });
    const verdict = async (a: string): Promise<Decision> => (await callHook(hooks, 'rcpt', makeContext({ txn: true }), addr(a))).decision;
    assert.equal(await verdict('bob@example.com'), Decision.DENY);

    writeFileSync(path, 'anna@example.com: anna@mail.example.com\nbob@example.com: bob@mail.example.com\n');
    utimesSync(path, new Date(), new Date(Date.now() + 2000));
    assert.equal(await verdict('bob@example.com'), Decision.DECLINED, 'new entry in force');
    assert.ok(log.entries.some((e) => e.level === 'info' && e.msg === `reloaded ${path}`));

    writeFileSync(path, 'anna@example.com: anna@mail.example.com\nbroken\n');
    utimesSync(path, new Date(), new Date(Date.now() + 4000));
    assert.equal(await verdict('bob@example.com'), Decision.DECLINED, 'previous version kept');
    assert.equal(await verdict('bob@example.com'), Decision.DECLINED);
    const errors = log.entries.filter((e) => e.level === 'error');
    assert.equal(errors.length, 1, 'logged once, not at every RCPT');
    assert.equal(errors[0]!.msg, `${path}:2: expected "local parts@domains: targets"; keeping the previous version of ${path}`);
  });
});

describe('the downstream RCPT for a target (core: forwardedRcptArgument)', () => {
  const original = (raw: string, params: Record<string, string | true> = {}): Address => ({ ...addr(raw.replace(/^<([^>]*)>.*$/, '$1'), params), raw });

  test("the client's parameters as sent, and ORCPT naming the original, xtext-encoded", () => {
    const o = original('<hjp+lists@wsr.ac.at> NOTIFY=FAILURE,DELAY', { NOTIFY: 'FAILURE,DELAY' });
    assert.equal(forwardedRcptArgument(o, 'hjp+lists@asherah.wsr.ac.at', true), '<hjp+lists@asherah.wsr.ac.at> NOTIFY=FAILURE,DELAY ORCPT=rfc822;hjp+2Blists@wsr.ac.at');
  });

  test("the client's own ORCPT is kept; none is added without DSN downstream or for a non-ASCII original", () => {
    const withOrcpt = original('<a@example.com> ORCPT=rfc822;first@example.org', { ORCPT: 'rfc822;first@example.org' });
    assert.equal(forwardedRcptArgument(withOrcpt, 'b@example.net', true), '<b@example.net> ORCPT=rfc822;first@example.org');
    assert.equal(forwardedRcptArgument(original('<a@example.com>'), 'b@example.net', false), '<b@example.net>');
    assert.equal(forwardedRcptArgument(original('<jörg@example.com>'), 'b@example.net', true), '<b@example.net>');
  });
});

describe('aliases over the wire', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;
  const seen: { rcpt: string; options?: Address['options'] }[] = [];
  let atData: { address: string; options?: Address['options']; forwardTo?: string[] }[] = [];

  before(async () => {
    downstream = await FakeSmtpServer.start({
      script: {
        ehlo: [...DEFAULT_CAPABILITIES, 'DSN'],
        rcpt: (arg) => (arg.includes('<gone@') ? '550 5.1.1 <gone@mail.example.com>: Recipient address rejected' : arg.includes('<busy@') ? '450 4.2.1 mailbox busy' : undefined),
      },
    });
    const dir = configDir({
      aliases: [
        HJP,
        'postmaster@: hjp@wsr.ac.at',
        'hjp@asherah.wsr.ac.at: hjp@asherah.wsr.ac.at',
        'team@example.com: anna@mail.example.com, gone@mail.example.com (spamassassin_reject_threshold=5)',
        'ghost@example.com: gone@mail.example.com',
        'flaky@example.com: gone@mail.example.com, busy@mail.example.com',
      ].join('\n'),
    });
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      plugins: [{ aliases: { file: join(dir, 'aliases') } }, 'scripted'],
    });
  });
  after(async () => {
    await proxy.close();
    await downstream.close();
  });
  beforeEach(() => {
    scripted.reset();
    seen.length = 0;
    atData = [];
    scripted.script.rcpt = (_ctx: HookContext, ...args: unknown[]) => {
      const r = args[0] as Address;
      seen.push({ rcpt: r.address, ...(r.options ? { options: r.options } : {}) });
      return undefined;
    };
    scripted.script.data_post = (ctx: HookContext) => {
      atData = ctx.txn!.recipients.map((r) => ({ address: r.address, options: r.options, forwardTo: r.forwardTo }));
      return undefined;
    };
  });

  const MESSAGE = 'From: a@sender.example\r\nSubject: aliases\r\n\r\nhello\r\n';

  test('an unknown recipient gets 550 5.1.1 and never reaches the downstream', async () => {
    const before = downstream.commands.length;
    const t = await SmtpTalk.connect(proxy.port);
    const r = await t.send('a@sender.example', ['nobody@wsr.ac.at', 'hjp@wsr.ac.at'], MESSAGE);
    assert.equal(r.rcpt[0]!.code, 550);
    assert.equal(r.rcpt[0]!.enhanced, '5.1.1');
    assert.match(r.rcpt[0]!.lines.join(' '), /no such user/);
    assert.equal(r.rcpt[1]!.code, 250);
    assert.equal(r.eod?.code, 250);
    const sent = downstream.commands.slice(before);
    assert.ok(!sent.some((c) => /nobody/i.test(c)), sent.join(' | '));
    assert.deepEqual(seen.map((s) => s.rcpt), ['hjp@wsr.ac.at'], 'the later plugin never saw the refused recipient');
    await t.quit();
  });

  test('an alias is rewritten: the downstream gets the final target, ORCPT names the original, parameters kept', async () => {
    const before = downstream.messages.length;
    const t = await SmtpTalk.connect(proxy.port);
    assert.equal((await t.cmd('EHLO client.example.net')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<a@sender.example>')).code, 250);
    const r1 = await t.cmd('RCPT TO:<Peter.Holzer@wifo.at> NOTIFY=SUCCESS,FAILURE');
    assert.equal(r1.code, 250);
    const r2 = await t.cmd('RCPT TO:<postmaster> NOTIFY=NEVER ORCPT=rfc822;postmaster@client.example');
    assert.equal(r2.code, 250);
    assert.equal((await t.cmd('DATA')).code, 354);
    t.write(MESSAGE + '.\r\n');
    assert.equal((await t.reply()).code, 250);
    const m = downstream.messages[before]!;
    assert.deepEqual(m.rcptTo, [
      '<hjp@asherah.wsr.ac.at> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Peter.Holzer@wifo.at',
      '<hjp@asherah.wsr.ac.at> NOTIFY=NEVER ORCPT=rfc822;postmaster@client.example',
    ]);
    assert.ok(!downstream.commands.some((c) => /RCPT TO:<(Peter\.Holzer@wifo\.at|postmaster)>/i.test(c)), 'the originals never went downstream');
    assert.deepEqual(
      atData.map((r) => [r.address, r.forwardTo]),
      [
        ['Peter.Holzer@wifo.at', ['hjp@asherah.wsr.ac.at']],
        ['postmaster', ['hjp@asherah.wsr.ac.at']],
      ],
      'plugins still see the recipients the client gave',
    );
    await t.quit();
  });

  test('per-recipient options are visible to a later plugin, at RCPT and after DATA, for that recipient only', async () => {
    const t = await SmtpTalk.connect(proxy.port);
    const r = await t.send('a@sender.example', ['hjp@wsr.ac.at', 'postmaster@wsr.ac.at', 'elsewhere@foreign.example'], MESSAGE);
    assert.deepEqual(r.rcpt.map((x) => x.code), [250, 250, 250]);
    assert.deepEqual(seen, [
      { rcpt: 'hjp@wsr.ac.at', options: { denysoft_greylist: true, spamassassin_reject_threshold: '10' } },
      { rcpt: 'postmaster@wsr.ac.at' },
      { rcpt: 'elsewhere@foreign.example' },
    ]);
    assert.deepEqual(atData[0]!.options, { denysoft_greylist: true, spamassassin_reject_threshold: '10' });
    assert.equal(atData[1]!.options, undefined);
    await t.quit();
  });

  test('one RCPT, several targets: 250 if the downstream took one; its own reply if it took none (a 4xx before a 5xx)', async () => {
    const before = downstream.messages.length;
    const t = await SmtpTalk.connect(proxy.port);
    assert.equal((await t.cmd('EHLO client.example.net')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<a@sender.example>')).code, 250);
    const team = await t.cmd('RCPT TO:<team@example.com>');
    assert.equal(team.code, 250, 'anna was accepted, gone was not');
    const ghost = await t.cmd('RCPT TO:<ghost@example.com>');
    assert.equal(ghost.code, 550);
    assert.match(ghost.lines.join(' '), /Recipient address rejected/, "the downstream's reply");
    const flaky = await t.cmd('RCPT TO:<flaky@example.com>');
    assert.equal(flaky.code, 450, 'a temporary failure lets the client try again');
    assert.equal((await t.cmd('DATA')).code, 354);
    t.write(MESSAGE + '.\r\n');
    assert.equal((await t.reply()).code, 250);
    assert.deepEqual(downstream.messages[before]!.rcptTo, ['<anna@mail.example.com> ORCPT=rfc822;team@example.com']);
    assert.ok(
      proxy.log.lines.some((e) => e.level === 'warn' && /downstream refused gone@mail\.example\.com \(for team@example\.com\)/.test(e.msg)),
      'the refused target is logged',
    );
    await t.quit();
  });

  test('without DSN at the downstream no ORCPT is added', async () => {
    const plain = await FakeSmtpServer.start();
    const dir = configDir({ aliases: 'team@example.com: anna@mail.example.com, bob@mail.example.com' });
    const p = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${plain.port}` }, plugins: [{ aliases: { file: join(dir, 'aliases') } }] });
    try {
      const t = await SmtpTalk.connect(p.port);
      const r = await t.send('a@sender.example', ['team@example.com'], MESSAGE);
      assert.equal(r.eod?.code, 250);
      assert.deepEqual(plain.messages[0]!.rcptTo, ['<anna@mail.example.com>', '<bob@mail.example.com>']);
      await t.quit();
    } finally {
      await p.close();
      await plain.close();
    }
  });
});

// ---- end to end: the qpsmtpd example file with the real plugins that read its options ----

describe('aliases end to end: real greylisting and a real spamd read the per-recipient options', () => {
  let downstream: FakeSmtpServer;
  let spamd: Spamd;
  let standalone: TestProxy;
  let postfix: TestProxy;
  const BLACK = 1;
  const FILE = [
    HJP,
    'hjp@asherah.wsr.ac.at: hjp@asherah.wsr.ac.at',
    'anna@wsr.ac.at: anna@asherah.wsr.ac.at',
    'listmaster@wsr.ac.at: hjp@wsr.ac.at',
    '*@lists.wsr.ac.at: listmaster@wsr.ac.at',
    'postmaster@: hjp@wsr.ac.at',
    '*@loop.example: x@loop2.example',
    '*@loop2.example: y@loop.example',
  ].join('\n');
  const header = (subject: string) =>
    [
      'From: Alice Example <alice@example.net>',
      'To: hjp@wsr.ac.at',
      `Subject: ${subject}`,
      `Date: ${new Date().toUTCString()}`,
      `Message-ID: <${Date.now()}.${subject.length}@mail.example.net>`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=us-ascii',
    ].join('\r\n');
  const SPAM = `${header('cheap offer')}\r\n\r\nThis is the GTUBE, the\r\n${GTUBE}\r\n`;
  const HAM = `${header('minutes')}\r\n\r\nHello Peter,\r\n\r\nhere are the minutes of the meeting about the garden fence.\r\n`;

  before(async () => {
    spamd = await startSpamd();
    downstream = await FakeSmtpServer.start();
    const dir = configDir({ aliases: FILE });
    const config = (mode: string, extra: Record<string, unknown> = {}) => ({
      mode,
      downstream: { address: `127.0.0.1:${downstream.port}` },
      store: { backend: 'sqlite', path: join(dir, `${mode}.db`) },
      ...extra,
      plugins: [
        ...((extra.plugins as unknown[]) ?? []),
        { aliases: { file: join(dir, 'aliases') } },
        { greylisting: { black_timeout: BLACK, per_recipient: true } },
        { spamassassin: { server: spamd.server, reject_threshold: null } },
      ],
    });
    standalone = await startProxy(config('standalone'));
    postfix = await startProxy(config('postfix', { relay_clients: ['192.0.2.30'], plugins: [{ whitelist: { hosts: ['192.0.2.31'] } }] }));
  });
  after(async () => {
    await standalone?.close();
    await postfix?.close();
    await downstream?.close();
    await spamd?.stop();
  });

  const run = async (t: SmtpTalk, rcpts: string[], message: string, helo?: string) => {
    try {
      return await transaction(t, 'alice@example.net', rcpts, { helo, message });
    } finally {
      await t.quit();
    }
  };
  const direct = async (rcpts: string[], message = HAM) => run(await connectFrom('127.0.0.60', standalone.port), rcpts, message, 'mail.example.net');
  const viaPostfix = async (addr: string, rcpts: string[], message = HAM) => run(await postfixClient(postfix.port, addr), rcpts, message);

  test('standalone: unknown refused, the catch-all expanded recursively, a loop deferred, the opted-in recipient greylisted', async () => {
    const before = downstream.messages.length;
    const r = await direct(['hjp@wsr.ac.at', 'anna@wsr.ac.at', 'nobody@wsr.ac.at', 'news@lists.wsr.ac.at', 'x@loop.example']);
    assert.deepEqual(r.rcpt, [450, 250, 550, 250, 450], r.texts.join(' | '));
    assert.match(r.texts[2]!, /^450 4\.7\.1 Greylisted/, 'hjp opted in with denysoft_greylist');
    assert.match(r.texts[4]!, /^550 5\.1\.1 no such user/);
    assert.match(r.texts[6]!, /^450 4\.4\.6 Mail loop/);
    assert.equal(r.eod, 250);
    assert.equal(downstream.messages.length, before + 1);
    assert.deepEqual(
      downstream.messages.at(-1)!.rcptTo.map((x) => x.replace(/ .*/, '')),
      ['<anna@asherah.wsr.ac.at>', '<hjp@asherah.wsr.ac.at>'],
      '*@lists -> listmaster -> hjp -> the mailbox',
    );
  });

  test("spamassassin_reject_threshold=10 from the file: GTUBE refused for hjp only (global threshold off); the strictest recipient wins", async () => {
    await new Promise((r) => setTimeout(r, BLACK * 1000 + 100)); // hjp's greylisting retry window
    const before = downstream.messages.length;
    const toAnna = await direct(['anna@wsr.ac.at'], SPAM);
    assert.equal(toAnna.eod, 250, `anna has no threshold of her own: ${toAnna.texts.join(' | ')}`);
    const toHjp = await direct(['hjp@wsr.ac.at'], SPAM);
    assert.deepEqual(toHjp.rcpt, [250], 'the retry after the black period passes greylisting');
    assert.equal(toHjp.eod, 550, toHjp.texts.join(' | '));
    assert.match(toHjp.texts.at(-1)!, /5\.7\.1 Message rejected as spam \(score \d+\.\d, limit 10\)/);
    const both = await direct(['anna@wsr.ac.at', 'hjp@wsr.ac.at'], SPAM);
    assert.equal(both.eod, 550, 'one message, one answer: the strictest recipient');
    const ham = await direct(['hjp@wsr.ac.at'], HAM);
    assert.equal(ham.eod, 250);
    assert.equal(downstream.messages.length, before + 2);
  });

  test('postfix mode (XFORWARD): unknown users are refused for relay clients and whitelisted hosts too; aliases rewritten', async () => {
    const before = downstream.messages.length;
    for (const client of ['192.0.2.30', '192.0.2.31', '198.51.100.7']) {
      const r = await viaPostfix(client, ['nobody@wifo.at', 'postmaster', 'anna@wsr.ac.at']);
      assert.deepEqual(r.rcpt, [550, 250, 250], `${client}: ${r.texts.join(' | ')}`);
      assert.equal(r.eod, 250);
      assert.deepEqual(downstream.messages.at(-1)!.rcptTo.map((x) => x.replace(/ .*/, '')), ['<hjp@asherah.wsr.ac.at>', '<anna@asherah.wsr.ac.at>']);
    }
    // greylisting and spamassassin are immune-able: the relay client skips both, the stranger does not.
    assert.equal((await viaPostfix('192.0.2.30', ['hjp@wsr.ac.at'], SPAM)).eod, 250, 'relay client: neither greylisted nor scanned');
    const stranger = await viaPostfix('198.51.100.7', ['hjp@wsr.ac.at'], SPAM);
    assert.deepEqual(stranger.rcpt, [450], 'opted-in recipient, new triplet');
    assert.equal(downstream.messages.length, before + 4);
  });
});
