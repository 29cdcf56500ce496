/**
 * auth_ldap against a real OpenLDAP slapd (test/helpers/slapd.ts): DN template
 * and search-then-bind, wrong passwords, unknown and ambiguous users, escaping
 * of hostile login names, StartTLS and ldaps with the test CA (and the wrong
 * one), failover, a stopped server and one that never answers; and over SMTP
 * through prequeue standalone: 235 / 535, and mail relayed only after AUTH.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import plugin, { escapeDnValue, escapeFilterValue, expand } from '../../plugins/auth_ldap';
import type { AuthMechanism, AuthRequest, PluginHooks } from '../../src/plugin/api';
import { Decision } from '../../src/plugin/decision';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { callHook, configDir, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { freePort } from '../helpers/postfix';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { PEOPLE, SEARCH_DN, SEARCH_PASSWORD, SUFFIX, startSlapd, type Slapd, type SlapdUser } from '../helpers/slapd';
import { SmtpTalk } from '../helpers/smtp-talk';

const ALICE: SlapdUser = { uid: 'alice', password: 'alice pw 1', mail: ['alice@example.test'] };
const BOB: SlapdUser = { uid: 'bob', password: 'bob-clear', hash: 'clear', mail: ['bob@example.test', 'robert@example.test'] };
/** RFC 4514 specials in the RDN value itself. */
const ODD: SlapdUser = { uid: ' #doe, john+x=y;"<q>"\\ ', password: 'odd pw' };
/** RFC 4515 specials in uid; its RDN is a plain cn. */
const STAR: SlapdUser = { uid: 'we*rd(user)\\x', rdnCn: 'weird', password: 'star pw' };
const DUP1: SlapdUser = { uid: 'dup1', password: 'dup pw', mail: ['shared@example.test'] };
const DUP2: SlapdUser = { uid: 'dup2', password: 'dup pw', mail: ['shared@example.test'] };
/** user@domain logins: the entry's uid is the local part, under ou=<domain>. */
const CAROL_DN = `uid=carol,ou=example.org,${SUFFIX}`;

const DN_TEMPLATE = `uid=%u,${PEOPLE}`;
const FILTER = '(&(objectClass=inetOrgPerson)(|(uid=%u)(mail=%u)))';

let ldap: Slapd;
before(async () => {
  ldap = await startSlapd({
    users: [ALICE, BOB, ODD, STAR, DUP1, DUP2],
    ldif: [
      `dn: ou=example.org,${SUFFIX}\nobjectClass: organizationalUnit\nou: example.org`,
      `dn: ${CAROL_DN}\nobjectClass: inetOrgPerson\nuid: carol\ncn: carol\nsn: carol\nuserPassword: carol pw`,
    ].join('\n\n'),
  });
});
after(async () => {
  await ldap?.destroy();
});

function req(user: string, password: string | undefined, mechanism: AuthMechanism = 'PLAIN'): AuthRequest {
  return { mechanism, user, password };
}

async function auth(hooks: PluginHooks, user: string, password: string | undefined, mechanism: AuthMechanism = 'PLAIN'): Promise<{ decision: Decision; ctx: FakeContext; message?: string }> {
  const ctx = makeContext({ name: 'auth_ldap' });
  const hook = mechanism === 'LOGIN' ? 'auth_login' : 'auth_plain';
  const v = await callHook(hooks, hook, ctx, req(user, password, mechanism));
  return { decision: v.decision, ctx, message: v.message };
}

const dnMode = (extra: Record<string, unknown> = {}) => loadPlugin(plugin, { url: ldap.url, bind_dn: DN_TEMPLATE, ...extra }, { name: 'auth_ldap' });
const searchMode = (extra: Record<string, unknown> = {}) =>
  loadPlugin(
    plugin,
    { url: ldap.url, base: PEOPLE, filter: FILTER, search_bind_dn: SEARCH_DN, search_bind_password: SEARCH_PASSWORD, ...extra },
    { name: 'auth_ldap' },
  );

/** Open TCP connections of this process (handles that are sockets), to catch leaks. */
function openSockets(): number {
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  return handles.filter((h) => h instanceof net.Socket && !(h as net.Socket).destroyed && (h as net.Socket).remotePort !== undefined).length;
}

describe('escaping', () => {
  test('RFC 4514: DN specials, leading # and space, trailing space, control characters', () => {
    assert.equal(escapeDnValue('doe, john+x=y;"<q>"\\'), 'doe\\, john\\+x\\=y\\;\\"\\<q\\>\\"\\\\');
    assert.equal(escapeDnValue('#a b '), '\\#a b\\ ');
    assert.equal(escapeDnValue(' a'), '\\ a');
    assert.equal(escapeDnValue('a\nb\0'), 'a\\0ab\\00');
    assert.equal(escapeDnValue('jürgen'), 'jürgen');
  });
  test('RFC 4515: * ( ) \\ NUL', () => {
    assert.equal(escapeFilterValue('a*b(c)d\\e\0'), 'a\\2ab\\28c\\29d\\5ce\\00');
    assert.equal(escapeFilterValue('plain@example.test'), 'plain@example.test');
  });
  test('templates: %u %n %d %%; a missing domain gives nothing', () => {
    assert.equal(expand('uid=%n,ou=%d,o=100%%', 'x@y.test', escapeDnValue), 'uid=x,ou=y.test,o=100%');
    assert.equal(expand('(mail=%u)', 'a*@b', escapeFilterValue), '(mail=a\\2a@b)');
    assert.equal(expand('uid=%n,ou=%d', 'nodomain', escapeDnValue), undefined);
    assert.equal(expand('uid=%u', 'nodomain', escapeDnValue), 'uid=nodomain');
  });
});

describe('options', () => {
  const bad = (o: Record<string, unknown>, re: RegExp) => assert.throws(() => plugin.options!.parse(o), re);
  test('exactly one mode, consistent extras', () => {
    bad({ url: 'ldap://127.0.0.1' }, /bind_dn .* or base \+ filter/);
    bad({ url: 'ldap://127.0.0.1', bind_dn: 'uid=%u,o=x', base: 'o=x', filter: '(uid=%u)' }, /not both/);
    bad({ url: 'ldap://127.0.0.1', base: 'o=x' }, /needs filter/);
    bad({ url: 'ldap://127.0.0.1', bind_dn: 'uid=alice,o=x' }, /must contain %u/);
    bad({ url: 'ldap://127.0.0.1', bind_dn: 'uid=%x,o=x' }, /unknown placeholder '%x'/);
    bad({ url: 'ldap://127.0.0.1', bind_dn: 'uid=%u,o=x', decline_unknown: true }, /decline_unknown needs search mode/);
    bad({ url: 'ldap://127.0.0.1', base: 'o=x', filter: '(uid=%u)', search_bind_dn: 'cn=s,o=x' }, /needs search_bind_password/);
    bad({ url: 'ldaps://127.0.0.1', bind_dn: 'uid=%u,o=x', starttls: true }, /starttls is for ldap:\/\//);
    bad({ url: 'http://127.0.0.1', bind_dn: 'uid=%u,o=x' }, /ldap:\/\/host/);
    bad({ url: 'ldaps://127.0.0.1', bind_dn: 'uid=%u,o=x', tls: { servername: '127.0.0.1' } }, /a DNS name/);
    bad({ url: 'ldap://127.0.0.1', bind_dn: 'uid=%u,o=x', timeout: 3 }, /timeout/);
  });
  test('a filter template that does not parse is refused at start', async () => {
    for (const filter of ['(&(uid=%u)', '(uid=%u))', 'uid=%u', '(uid=%u)(mail=%u)'])
      await assert.rejects(loadPlugin(plugin, { url: ldap.url, base: PEOPLE, filter }), /filter: /, filter);
    await loadPlugin(plugin, { url: ldap.url, base: PEOPLE, filter: '(&(cn=a\\29b)(uid=%u))' });
  });
});

describe('DN template', () => {
  test('good password: OK (SSHA and cleartext userPassword), PLAIN and LOGIN', async () => {
    const hooks = await dnMode();
    const a = await auth(hooks, 'alice', ALICE.password);
    assert.equal(a.decision, Decision.OK);
    assert.deepEqual(a.ctx.myResults()?.pass, ['alice']);
    assert.equal(a.ctx.myResults()?.details.dn, `uid=alice,${PEOPLE}`);
    assert.equal((await auth(hooks, 'bob', BOB.password, 'LOGIN')).decision, Decision.OK);
  });

  test('wrong password: DENY, and no reason is shown to the client', async () => {
    const hooks = await dnMode();
    const r = await auth(hooks, 'alice', 'not alice pw');
    assert.equal(r.decision, Decision.DENY);
    assert.equal(r.message, undefined);
    assert.match(r.ctx.myResults()!.fail[0]!, /LDAP result 49/);
    // Another user's password is no better.
    assert.equal((await auth(hooks, 'alice', BOB.password)).decision, Decision.DENY);
  });

  test('unknown user: DENY (the server answers 49 as for a wrong password)', async () => {
    const hooks = await dnMode();
    assert.equal((await auth(hooks, 'nobody', 'whatever')).decision, Decision.DENY);
  });

  test('empty or missing password never binds: DENY even though the DN exists', async () => {
    const hooks = await dnMode();
    for (const pw of ['', undefined]) {
      const r = await auth(hooks, 'alice', pw);
      assert.equal(r.decision, Decision.DENY);
      assert.deepEqual(r.ctx.myResults()?.fail, ['alice: empty password']);
    }
  });

  test('DN specials in the login are escaped: the entry whose uid is exactly that binds, nothing else', async () => {
    const hooks = await dnMode();
    assert.equal((await auth(hooks, ODD.uid, ODD.password)).decision, Decision.OK);
    // Unescaped, "alice,ou=people" would be a different DN; escaped it is one uid value, which no entry has.
    assert.equal((await auth(hooks, `alice,${PEOPLE}`, ALICE.password)).decision, Decision.DENY);
    assert.equal((await auth(hooks, 'alice+cn=alice', ALICE.password)).decision, Decision.DENY);
  });

  test('%n and %d place the parts of user@domain', async () => {
    const hooks = await loadPlugin(plugin, { url: ldap.url, bind_dn: `uid=%n,ou=%d,${SUFFIX}` });
    assert.equal((await auth(hooks, 'carol@example.org', 'carol pw')).decision, Decision.OK);
    assert.equal((await auth(hooks, 'carol@example.org', 'nope')).decision, Decision.DENY);
    const r = await auth(hooks, 'carol', 'carol pw');
    assert.equal(r.decision, Decision.DENY);
    assert.match(r.ctx.myResults()!.fail[0]!, /no domain/);
  });

  test('CRAM-MD5 is not handled: no hook for it', async () => {
    const hooks = await dnMode();
    assert.equal(hooks.auth_cram_md5, undefined);
    assert.equal(hooks.auth, undefined);
  });
});

describe('search, then bind', () => {
  test('by uid and by mail (any of several values): OK, bound as the entry found', async () => {
    const hooks = await searchMode();
    const a = await auth(hooks, 'alice@example.test', ALICE.password);
    assert.equal(a.decision, Decision.OK);
    assert.equal(a.ctx.myResults()?.details.dn, `uid=alice,${PEOPLE}`);
    assert.equal((await auth(hooks, 'robert@example.test', BOB.password)).decision, Decision.OK);
    assert.equal((await auth(hooks, 'bob', BOB.password, 'LOGIN')).decision, Decision.OK);
  });

  test('wrong password: DENY', async () => {
    const hooks = await searchMode();
    const r = await auth(hooks, 'alice@example.test', 'wrong');
    assert.equal(r.decision, Decision.DENY);
    assert.match(r.ctx.myResults()!.fail[0]!, /LDAP result 49/);
  });

  test('unknown user: DENY, or DECLINED with decline_unknown (a wrong password stays DENY)', async () => {
    const strict = await auth(await searchMode(), 'nobody@example.test', 'x');
    assert.equal(strict.decision, Decision.DENY);
    assert.deepEqual(strict.ctx.myResults()?.fail, ['nobody@example.test: no entry matches']);
    const lenient = await searchMode({ decline_unknown: true });
    const u = await auth(lenient, 'nobody@example.test', 'x');
    assert.equal(u.decision, Decision.DECLINED);
    assert.deepEqual(u.ctx.myResults()?.skip, ['nobody@example.test: no entry matches']);
    assert.equal((await auth(lenient, 'alice@example.test', 'wrong')).decision, Decision.DENY);
  });

  test('two entries match: DENY with a warning, even with their (shared) password', async () => {
    const r = await auth(await searchMode(), 'shared@example.test', DUP1.password);
    assert.equal(r.decision, Decision.DENY);
    assert.match(r.ctx.myResults()!.fail[0]!, /ambiguous/);
    assert.ok(r.ctx.log.entries.some((e) => e.level === 'warn' && /several entries/.test(e.msg)));
  });

  test('filter specials in the login cannot widen the filter', async () => {
    const hooks = await searchMode();
    // Unescaped, (uid=al*) would find alice alone, and her password would log in "al*".
    for (const login of ['al*', '*', 'alice)(uid=*', 'alice*)(|(uid=*']) {
      const r = await auth(hooks, login, ALICE.password);
      assert.equal(r.decision, Decision.DENY, login);
      assert.deepEqual(r.ctx.myResults()?.fail, [`${login}: no entry matches`], login);
    }
    // The uid that really contains them is found by exact match.
    const star = await auth(hooks, STAR.uid, STAR.password);
    assert.equal(star.decision, Decision.OK);
    assert.equal(star.ctx.myResults()?.details.dn, `cn=weird,${PEOPLE}`);
  });

  test('the service account is used: an anonymous search is refused by the ACL (temporary, logged as an error), with it the user is found', async () => {
    const anon = await loadPlugin(plugin, { url: ldap.url, base: PEOPLE, filter: FILTER });
    const r = await auth(anon, 'alice', ALICE.password);
    assert.equal(r.decision, Decision.DENYSOFT);
    assert.match(r.ctx.myResults()!.err[0]!, /LDAP result 50/);
    assert.ok(r.ctx.log.entries.some((e) => e.level === 'error' && /ACLs/.test(e.msg)));
    assert.equal((await auth(await searchMode(), 'alice', ALICE.password)).decision, Decision.OK);
  });

  test('search_bind_password_file; a refused service account is a temporary failure, logged as an error', async () => {
    const dir = configDir({ 'ldap.secret': SEARCH_PASSWORD + '\n' });
    const good = await loadPlugin(plugin, { url: ldap.url, base: PEOPLE, filter: FILTER, search_bind_dn: SEARCH_DN, search_bind_password_file: 'ldap.secret' }, { configDir: dir });
    assert.equal((await auth(good, 'alice', ALICE.password)).decision, Decision.OK);
    writeFileSync(join(dir, 'wrong.secret'), 'not the password\n');
    const wrong = await loadPlugin(plugin, { url: ldap.url, base: PEOPLE, filter: FILTER, search_bind_dn: SEARCH_DN, search_bind_password_file: 'wrong.secret' }, { configDir: dir });
    const r = await auth(wrong, 'alice', ALICE.password);
    assert.equal(r.decision, Decision.DENYSOFT);
    assert.ok(r.ctx.log.entries.some((e) => e.level === 'error' && /search account .* was refused/.test(e.msg)));
  });

  test('a base that does not exist: unknown user', async () => {
    const r = await auth(await searchMode({ base: `ou=nowhere,${SUFFIX}` }), 'alice', ALICE.password);
    assert.equal(r.decision, Decision.DENY);
    assert.match(r.ctx.myResults()!.fail[0]!, /no entry matches/);
  });
});

describe('TLS', () => {
  test('StartTLS with the test CA: OK; with another CA: temporary failure, the password never sent', async () => {
    const good = await dnMode({ starttls: true, tls: { ca: ldap.ca } });
    assert.equal((await auth(good, 'alice', ALICE.password)).decision, Decision.OK);
    const wrongCa = await dnMode({ starttls: true, tls: { ca: ldap.otherCa } });
    const r = await auth(wrongCa, 'alice', ALICE.password);
    assert.equal(r.decision, Decision.DENYSOFT);
    assert.match(r.ctx.myResults()!.err[0]!, /StartTLS: .*(certificate|issuer)/i);
  });

  test('ldaps:// with the test CA: OK, search mode too; wrong CA or wrong name: DENYSOFT; reject_unauthorized false: OK', async () => {
    assert.equal((await auth(await dnMode({ url: ldap.ldapsUrl, tls: { ca: ldap.ca } }), 'alice', ALICE.password)).decision, Decision.OK);
    assert.equal((await auth(await searchMode({ url: ldap.ldapsUrl, tls: { ca: ldap.ca } }), 'alice', ALICE.password)).decision, Decision.OK);
    const wrongCa = await auth(await dnMode({ url: ldap.ldapsUrl, tls: { ca: ldap.otherCa } }), 'alice', ALICE.password);
    assert.equal(wrongCa.decision, Decision.DENYSOFT);
    assert.match(wrongCa.ctx.myResults()!.err[0]!, /certificate|issuer/i);
    const wrongName = await auth(await dnMode({ url: ldap.ldapsUrl, tls: { ca: ldap.ca, servername: 'other.example.test' } }), 'alice', ALICE.password);
    assert.equal(wrongName.decision, Decision.DENYSOFT);
    // The name is checked against the certificate (the connection still goes to the URL's address).
    assert.match(wrongName.ctx.myResults()!.err[0]!, /Host: other\.example\.test\. is not in the cert's altnames/);
    const rightName = await dnMode({ url: ldap.ldapsUrl, tls: { ca: ldap.ca, servername: 'ldap.example.test' } });
    assert.equal((await auth(rightName, 'alice', ALICE.password)).decision, Decision.OK);
    const startTlsName = await dnMode({ starttls: true, tls: { ca: ldap.ca, servername: 'other.example.test' } });
    assert.match((await auth(startTlsName, 'alice', ALICE.password)).ctx.myResults()!.err[0]!, /StartTLS: .*other\.example\.test\. is not in the cert's altnames/);
    const unchecked = await dnMode({ url: ldap.ldapsUrl, tls: { ca: ldap.otherCa, reject_unauthorized: false } });
    assert.equal((await auth(unchecked, 'alice', ALICE.password)).decision, Decision.OK);
  });

  test('ldap:// to the ldaps port (no TLS where TLS is spoken): temporary failure within the timeout', async () => {
    const hooks = await dnMode({ url: `ldap://127.0.0.1:${ldap.tlsPort}`, connect_timeout: 1, operation_timeout: 1 });
    const t0 = Date.now();
    assert.equal((await auth(hooks, 'alice', ALICE.password)).decision, Decision.DENYSOFT);
    assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
  });
});

describe('unreachable and silent servers', () => {
  test('nothing listening: DENYSOFT, never DECLINED (even with decline_unknown)', async () => {
    const port = await freePort();
    const r = await auth(await dnMode({ url: `ldap://127.0.0.1:${port}` }), 'alice', ALICE.password);
    assert.equal(r.decision, Decision.DENYSOFT);
    assert.match(r.ctx.myResults()!.err[0]!, /ECONNREFUSED/);
    const lenient = await searchMode({ url: `ldap://127.0.0.1:${port}`, decline_unknown: true });
    assert.equal((await auth(lenient, 'nobody', 'x')).decision, Decision.DENYSOFT);
  });

  test('failover: the first URL refuses connections, the second answers', async () => {
    const port = await freePort();
    const hooks = await dnMode({ url: [`ldap://127.0.0.1:${port}`, ldap.url] });
    const r = await auth(hooks, 'alice', ALICE.password);
    assert.equal(r.decision, Decision.OK);
    assert.equal(r.ctx.myResults()?.details.server, ldap.url);
    assert.ok(r.ctx.log.entries.some((e) => e.level === 'warn' && e.msg.includes(`127.0.0.1:${port} unavailable`)));
    // An answer from the first server that works ends it: a wrong password is not retried elsewhere.
    assert.equal((await auth(hooks, 'alice', 'wrong')).decision, Decision.DENY);
  });

  test('slapd stopped: DENYSOFT; started again: OK', async () => {
    const hooks = await searchMode();
    await ldap.stop();
    try {
      assert.equal((await auth(hooks, 'alice', ALICE.password)).decision, Decision.DENYSOFT);
    } finally {
      await ldap.start();
    }
    assert.equal((await auth(hooks, 'alice', ALICE.password)).decision, Decision.OK);
  });

  test('a server that accepts TCP but never answers: DENYSOFT within the configured time, sockets closed', async () => {
    const held = new Set<net.Socket>();
    let received = 0;
    const silent = net.createServer((s) => {
      held.add(s);
      s.on('data', (d) => (received += d.length));
      s.on('close', () => held.delete(s));
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const before = openSockets();
      for (const [name, hooks] of [
        ['dn', await dnMode({ url: `ldap://127.0.0.1:${port}`, operation_timeout: 0.5, connect_timeout: 0.5 })],
        ['search', await searchMode({ url: `ldap://127.0.0.1:${port}`, operation_timeout: 0.5, connect_timeout: 0.5 })],
        ['starttls', await dnMode({ url: `ldap://127.0.0.1:${port}`, starttls: true, operation_timeout: 0.5, connect_timeout: 0.5 })],
        ['ldaps', await dnMode({ url: `ldaps://127.0.0.1:${port}`, operation_timeout: 0.5, connect_timeout: 0.5 })],
      ] as const) {
        const t0 = Date.now();
        const r = await auth(hooks, 'alice', ALICE.password);
        const took = Date.now() - t0;
        assert.equal(r.decision, Decision.DENYSOFT, name);
        assert.match(r.ctx.myResults()!.err[0]!, /time/i, name);
        assert.ok(took >= 400 && took < 2500, `${name}: took ${took} ms`);
      }
      assert.ok(received > 0, 'the plugin did talk to the silent server');
      // Our side closed every connection: the server sees them go.
      const deadline = Date.now() + 2000;
      while (held.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(held.size, 0, 'connections left open to the silent server');
      assert.equal(openSockets(), before);
    } finally {
      for (const s of held) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  test('a silent first server, a good second: OK after the first one times out', async () => {
    const held = new Set<net.Socket>();
    const silent = net.createServer((s) => {
      held.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const hooks = await dnMode({ url: [`ldap://127.0.0.1:${port}`, ldap.url], operation_timeout: 0.5 });
      assert.equal((await auth(hooks, 'alice', ALICE.password)).decision, Decision.OK);
    } finally {
      for (const s of held) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});

describe('concurrency and cleanup', () => {
  test('40 logins at once, good and bad mixed, each gets its own answer; no socket left open', async () => {
    const hooks = await searchMode();
    const before = openSockets();
    const cases = Array.from({ length: 40 }, (_, i) => {
      const who = [ALICE, BOB][i % 2]!;
      const good = i % 3 !== 0;
      return { user: who.uid, password: good ? who.password : `${who.password}-no`, expect: good ? Decision.OK : Decision.DENY };
    });
    const results = await Promise.all(cases.map((c) => auth(hooks, c.user, c.password)));
    assert.deepEqual(results.map((r) => r.decision), cases.map((c) => c.expect));
    assert.equal(openSockets(), before);
  });
});

describe('over SMTP through prequeue (standalone)', () => {
  let downstream: FakeSmtpServer;
  let proxy: TestProxy;
  before(async () => {
    downstream = await FakeSmtpServer.start();
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}`, xclient: true },
      auth: { allow_insecure: 'loopback', required: true, brute_force: { delay: 0, max_failures: 0 } },
      plugins: [{ auth_ldap: { url: ldap.url, base: PEOPLE, filter: FILTER, search_bind_dn: SEARCH_DN, search_bind_password: SEARCH_PASSWORD } }],
    });
  });
  after(async () => {
    await proxy?.close();
    await downstream?.close();
  });

  const plain = (user: string, pw: string) => Buffer.from(`\0${user}\0${pw}`, 'utf8').toString('base64');

  test('535 for a bad password, MAIL refused; 235 for the good one, then the mail reaches the downstream with XCLIENT LOGIN', async () => {
    const t = await SmtpTalk.connect(proxy.port);
    try {
      const ehlo = await t.cmd('EHLO client.example.net');
      assert.ok(ehlo.lines.some((l) => /^AUTH\b.*\bPLAIN\b/.test(l) && /\bLOGIN\b/.test(l) && !/CRAM-MD5/.test(l)), ehlo.lines.join(' | '));

      const bad = await t.cmd(`AUTH PLAIN ${plain('alice@example.test', 'wrong')}`);
      assert.equal(bad.code, 535);
      assert.equal(bad.enhanced, '5.7.8');
      const early = await t.cmd('MAIL FROM:<alice@example.test>');
      assert.equal(early.code, 530);
      assert.equal(downstream.messages.length, 0);
      assert.equal(downstream.sessions.length, 0, 'no downstream connection before AUTH');

      // LOGIN, step by step.
      assert.equal((await t.cmd('AUTH LOGIN')).code, 334);
      assert.equal((await t.cmd(Buffer.from('alice@example.test').toString('base64'))).code, 334);
      const good = await t.cmd(Buffer.from(ALICE.password).toString('base64'));
      assert.equal(good.code, 235);

      assert.equal((await t.cmd('MAIL FROM:<alice@example.test>')).code, 250);
      assert.equal((await t.cmd('RCPT TO:<someone@elsewhere.example>')).code, 250);
      assert.equal((await t.cmd('DATA')).code, 354);
      t.write('From: alice@example.test\r\nSubject: via ldap\r\n\r\nhello\r\n.\r\n');
      assert.equal((await t.reply(15000)).code, 250);
      assert.equal(downstream.messages.length, 1);
      const m = downstream.messages[0]!;
      assert.equal(m.mailFrom, '<alice@example.test>');
      assert.deepEqual(m.rcptTo, ['<someone@elsewhere.example>']);
      assert.match(m.data.toString(), /Authenticated sender: alice@example\.test/);
      // The downstream is told who logged in (XCLIENT LOGIN), as the login the directory accepted.
      assert.equal(m.xclient.length, 1);
      assert.match(m.xclient[0]!, /\bLOGIN=alice@example\.test\b/);
    } finally {
      await t.quit();
    }
  });

  test('the directory down: 454 (temporary), not 535', async () => {
    await ldap.stop();
    try {
      const t = await SmtpTalk.connect(proxy.port);
      try {
        await t.cmd('EHLO client.example.net');
        const r = await t.cmd(`AUTH PLAIN ${plain('alice', ALICE.password)}`);
        assert.equal(r.code, 454);
        assert.equal(r.enhanced, '4.7.0');
      } finally {
        await t.quit();
      }
    } finally {
      await ldap.start();
    }
  });
});
