/**
 * auth_flat_file: every password format against hashes made by other tools
 * (openssl passwd for sha-crypt, hash-wasm for bcrypt and argon2id, the
 * reference vectors of bcrypt and argon2), cleartext only when allowed,
 * locked accounts, unknown users declined, CRAM-MD5 for cleartext and
 * {CRAM-MD5} entries only, file errors with their place (never the secret),
 * and reloads of a changed file.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { argon2id, bcrypt } from 'hash-wasm';
import plugin from '../../plugins/auth_flat_file';
import { cramMd5Context } from '../../src/auth/cram-md5';
import type { AuthMechanism, AuthRequest, PluginHooks } from '../../src/plugin/api';
import { Decision } from '../../src/plugin/decision';
import { callHook, configDir, loadPlugin, makeContext, memoryLogger } from '../helpers/plugin-context';

/** Solar Designer's bcrypt test vector (crypt_blowfish) and the Argon2 reference implementation's README example. */
const BCRYPT_VECTOR = { password: 'U*U', hash: '$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW' };
const ARGON2I_VECTOR = { password: 'password', hash: '$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG' };

const opensslPasswd = (variant: '5' | '6', password: string): string =>
  execFileSync('openssl', ['passwd', `-${variant}`, '-stdin'], { input: password + '\n', encoding: 'utf8' }).trim();

const hashBcrypt = (password: string): Promise<string> =>
  bcrypt({ password, salt: randomBytes(16), costFactor: 4, outputType: 'encoded' });

const hashArgon2id = (password: string): Promise<string> =>
  argon2id({ password, salt: randomBytes(16), iterations: 2, memorySize: 1024, parallelism: 1, hashLength: 32, outputType: 'encoded' });

const hookOf: Record<AuthMechanism, 'auth_plain' | 'auth_login' | 'auth_cram_md5'> = {
  PLAIN: 'auth_plain',
  LOGIN: 'auth_login',
  'CRAM-MD5': 'auth_cram_md5',
};

async function attempt(hooks: PluginHooks, mechanism: 'PLAIN' | 'LOGIN', user: string, password: string): Promise<Decision> {
  const req: AuthRequest = { mechanism, user, password };
  return (await callHook(hooks, hookOf[mechanism], makeContext({ name: 'auth_flat_file' }), req)).decision;
}

async function cram(hooks: PluginHooks, user: string, secret: string): Promise<Decision> {
  const challenge = `<${randomBytes(8).toString('hex')}.1700000000@pq.example.test>`;
  // The client side of RFC 2195, computed here with node's HMAC (not the plugin's helper).
  const response = createHmac('md5', secret).update(challenge).digest('hex');
  const req: AuthRequest = { mechanism: 'CRAM-MD5', user, challenge, response };
  return (await callHook(hooks, 'auth_cram_md5', makeContext({ name: 'auth_flat_file' }), req)).decision;
}

describe('auth_flat_file password formats', () => {
  test('bcrypt ($2a/$2b/$2y), sha512/sha256-crypt, argon2id/argon2i, tagged and untagged: right password OK, wrong DENY, with PLAIN and LOGIN', async () => {
    const b = await hashBcrypt('bcrypt-pw');
    const users: [string, string, string][] = [
      ['vector-2a', BCRYPT_VECTOR.hash, BCRYPT_VECTOR.password],
      ['b2a', b, 'bcrypt-pw'],
      ['b2b', b.replace(/^\$2a\$/, '$2b$'), 'bcrypt-pw'],
      ['b2y', b.replace(/^\$2a\$/, '$2y$'), 'bcrypt-pw'],
      ['blf', `{BLF-CRYPT}${b.replace(/^\$2a\$/, '$2y$')}`, 'bcrypt-pw'],
      ['sha512', opensslPasswd('6', 'sha512 pw äö'), 'sha512 pw äö'],
      ['sha512-tagged', `{SHA512-CRYPT}${opensslPasswd('6', 's5')}`, 's5'],
      ['sha256', opensslPasswd('5', 'sha256-pw'), 'sha256-pw'],
      ['crypt-tagged', `{CRYPT}${opensslPasswd('5', 'c5')}`, 'c5'],
      ['argon2id', await hashArgon2id('argon pw'), 'argon pw'],
      ['argon2id-tagged', `{ARGON2ID}${await hashArgon2id('a2')}`, 'a2'],
      ['vector-argon2i', ARGON2I_VECTOR.hash, ARGON2I_VECTOR.password],
      ['cram@example.test', `{CRAM-MD5}${cramMd5Context('cram-secret')}`, 'cram-secret'],
    ];
    const dir = configDir({ users: users.map(([u, h]) => `${u}:${h}:1000:1000::/home/${u}::`).join('\n') + '\n' });
    const hooks = await loadPlugin(plugin, { file: 'users' }, { configDir: dir });
    assert.ok(hooks.auth_plain && hooks.auth_login, 'PLAIN and LOGIN are checked');
    assert.equal(hooks.auth_cram_md5, undefined, 'CRAM-MD5 is not offered by default');
    for (const [user, , password] of users) {
      for (const mech of ['PLAIN', 'LOGIN'] as const) {
        assert.equal(await attempt(hooks, mech, user, password), Decision.OK, `${user} ${mech} right password`);
        assert.equal(await attempt(hooks, mech, user, password + 'x'), Decision.DENY, `${user} ${mech} wrong password`);
      }
      assert.equal(await attempt(hooks, 'PLAIN', user, ''), Decision.DENY, `${user}: empty password`);
    }
  });

  test('an unknown user is DECLINED (for the next plugin); names compare exactly; the result says why', async () => {
    const dir = configDir({ users: `alice:${await hashBcrypt('pw')}\n` });
    const hooks = await loadPlugin(plugin, { file: 'users' }, { configDir: dir });
    const ctx = makeContext({ name: 'auth_flat_file' });
    const v = await callHook(hooks, 'auth_plain', ctx, { mechanism: 'PLAIN', user: 'nobody', password: 'pw' });
    assert.equal(v.decision, Decision.DECLINED);
    assert.match(String(ctx.myResults()?.skip), /nobody: unknown here/);
    assert.equal(await attempt(hooks, 'PLAIN', 'Alice', 'pw'), Decision.DECLINED, 'user names are case-sensitive');
    assert.equal(await attempt(hooks, 'PLAIN', 'alice', 'pw'), Decision.OK);
  });

  test('cleartext: only {PLAIN}/{CLEARTEXT} and only with `cleartext: true`; compared exactly', async () => {
    const text = '# cleartext users\n\ncarol:{PLAIN}s3cret:ignored:fields\ndan:{cleartext}pa ss#word\n';
    const dir = configDir({ users: text });
    await assert.rejects(loadPlugin(plugin, { file: 'users' }, { configDir: dir }), (err: Error) => {
      assert.match(err.message, /users:3: carol: cleartext password \(\{PLAIN\}\) but the option `cleartext` is not set/);
      assert.match(err.message, /users:4: dan: /);
      assert.doesNotMatch(err.message, /s3cret|pa ss/, 'errors never show the secret');
      return true;
    });
    const hooks = await loadPlugin(plugin, { file: 'users', cleartext: true }, { configDir: dir });
    assert.equal(await attempt(hooks, 'PLAIN', 'carol', 's3cret'), Decision.OK);
    assert.equal(await attempt(hooks, 'LOGIN', 'dan', 'pa ss#word'), Decision.OK, 'a # inside a password is no comment');
    for (const wrong of ['s3cre', 's3cret ', 'S3cret', 's3cret:ignored']) {
      assert.equal(await attempt(hooks, 'PLAIN', 'carol', wrong), Decision.DENY, wrong);
    }
  });

  test('locked accounts (! prefix, *) are refused whatever the password', async () => {
    const h = opensslPasswd('6', 'pw');
    const dir = configDir({ users: `eve:!${h}\nmallory:*\n` });
    const hooks = await loadPlugin(plugin, { file: 'users' }, { configDir: dir });
    assert.equal(await attempt(hooks, 'PLAIN', 'eve', 'pw'), Decision.DENY);
    assert.equal(await attempt(hooks, 'PLAIN', 'mallory', '*'), Decision.DENY);
  });

  test('file errors name file:line, all at once, without quoting secrets', async () => {
    const text = [
      'ok:' + BCRYPT_VECTOR.hash,
      'nocolon',
      'md5:$1$saltsalt$qjXMvbEw8oaL.CzflDugX/',
      'guess:hunter2',
      'weird:{SSHA}c2VjcmV0c2FsdA==',
      'bad-blf:{BLF-CRYPT}$6$abc$def',
      ' spaced:' + BCRYPT_VECTOR.hash,
      'ok:' + BCRYPT_VECTOR.hash,
      'shortcram:{CRAM-MD5}abcd',
      'cut:$6$saltsalt$abcdef',
    ].join('\n');
    const dir = configDir({ users: text });
    await assert.rejects(loadPlugin(plugin, { file: 'users' }, { configDir: dir }), (err: Error) => {
      const lines = err.message.split('\n');
      assert.equal(lines.length, 9, err.message);
      assert.match(lines[0]!, /users:2: expected user:password/);
      assert.match(lines[1]!, /users:3: md5: md5-crypt \(\$1\$\) is not supported/);
      assert.match(lines[2]!, /users:4: guess: unrecognized password hash \(a cleartext password needs the \{PLAIN\} prefix/);
      assert.match(lines[3]!, /users:5: weird: password scheme \{SSHA\} is not supported/);
      assert.match(lines[4]!, /users:6: bad-blf: the value after \{BLF-CRYPT\} is not a blf-crypt hash/);
      assert.match(lines[5]!, /users:7: invalid user name/);
      assert.match(lines[6]!, /users:8: ok is already defined on line 1/);
      assert.match(lines[7]!, /users:9: shortcram: \{CRAM-MD5\} needs 64 hex digits/);
      assert.match(lines[8]!, /users:10: cut: sha-crypt hash whose digest has the wrong length/);
      assert.doesNotMatch(err.message, /hunter2|c2VjcmV0/);
      return true;
    });
    await assert.rejects(loadPlugin(plugin, { file: 'missing' }, { configDir: dir }), /ENOENT/);
    assert.throws(() => plugin.options!.parse({}), /file/);
    assert.throws(() => plugin.options!.parse({ file: 'x', clear_text: true }), /clear_text/);
  });
});

describe('auth_flat_file CRAM-MD5', () => {
  test('checked for {PLAIN} and {CRAM-MD5} entries; declined for hashes and unknown users', async () => {
    const dir = configDir({
      users: [`plain:{PLAIN}tanstaaftanstaaf`, `ctx:{CRAM-MD5}${cramMd5Context('context-secret')}`, `hashed:${BCRYPT_VECTOR.hash}`, 'locked:!'].join('\n'),
    });
    const hooks = await loadPlugin(plugin, { file: 'users', cleartext: true, cram_md5: true }, { configDir: dir });
    assert.ok(hooks.auth_cram_md5, 'cram_md5: true registers the hook (the core then offers CRAM-MD5)');
    assert.equal(await cram(hooks, 'plain', 'tanstaaftanstaaf'), Decision.OK);
    assert.equal(await cram(hooks, 'plain', 'tanstaaf'), Decision.DENY);
    assert.equal(await cram(hooks, 'ctx', 'context-secret'), Decision.OK);
    assert.equal(await cram(hooks, 'ctx', 'context-secreT'), Decision.DENY);
    assert.equal(await cram(hooks, 'locked', ''), Decision.DENY);
    const ctx = makeContext({ name: 'auth_flat_file' });
    const v = await callHook(hooks, 'auth_cram_md5', ctx, { mechanism: 'CRAM-MD5', user: 'hashed', challenge: '<1.2@x>', response: '0'.repeat(32) });
    assert.equal(v.decision, Decision.DECLINED, 'a bcrypt hash cannot answer a challenge');
    assert.match(String(ctx.myResults()?.skip), /CRAM-MD5 needs a \{PLAIN\} or \{CRAM-MD5\} entry, this one is bcrypt/);
    assert.equal(await cram(hooks, 'nobody', 'x'), Decision.DECLINED);
  });

  test('RFC 2195 example: the digest for tanstaaftanstaaf', async () => {
    const dir = configDir({ users: 'tim:{PLAIN}tanstaaftanstaaf\n' });
    const hooks = await loadPlugin(plugin, { file: 'users', cleartext: true, cram_md5: true }, { configDir: dir });
    const req: AuthRequest = {
      mechanism: 'CRAM-MD5',
      user: 'tim',
      challenge: '<1896.697170952@postoffice.reston.mci.net>',
      response: 'b913a602c7eda7a495b4e6e7334d3890',
    };
    assert.equal((await callHook(hooks, 'auth_cram_md5', makeContext(), req)).decision, Decision.OK);
  });

  test('cram_md5 on with no entry able to use it: a warning at start', async () => {
    const dir = configDir({ users: `hashed:${BCRYPT_VECTOR.hash}\n` });
    const log = memoryLogger();
    await loadPlugin(plugin, { file: 'users', cram_md5: true }, { configDir: dir, log });
    assert.ok(log.entries.some((e) => e.level === 'warn' && /CRAM-MD5 will fail for everyone/.test(e.msg)), JSON.stringify(log.entries));
  });
});

describe('auth_flat_file reloads', () => {
  test('a changed file is re-read; a broken change is logged and the previous version kept', async () => {
    const dir = configDir({ users: `alice:${opensslPasswd('6', 'one')}\n` });
    const log = memoryLogger();
    const hooks = await loadPlugin(plugin, { file: 'users', check_interval: 0.01 }, { configDir: dir, log });
    assert.equal(await attempt(hooks, 'PLAIN', 'alice', 'one'), Decision.OK);
    assert.equal(await attempt(hooks, 'PLAIN', 'bob', 'two'), Decision.DECLINED);

    const file = join(dir, 'users');
    writeFileSync(file, `alice:${opensslPasswd('6', 'new-one')}\nbob:${opensslPasswd('5', 'two')}\n`);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(await attempt(hooks, 'PLAIN', 'alice', 'new-one'), Decision.OK, 'the new password counts');
    assert.equal(await attempt(hooks, 'PLAIN', 'alice', 'one'), Decision.DENY, 'the old one no longer does');
    assert.equal(await attempt(hooks, 'PLAIN', 'bob', 'two'), Decision.OK);
    assert.ok(log.entries.some((e) => /reloaded .*users/.test(e.msg)));

    writeFileSync(file, 'alice:cleartext-by-mistake\n');
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(await attempt(hooks, 'PLAIN', 'bob', 'two'), Decision.OK, 'the previous version stays in force');
    assert.equal(await attempt(hooks, 'PLAIN', 'alice', 'cleartext-by-mistake'), Decision.DENY);
    const errors = log.entries.filter((e) => e.level === 'error');
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.match(errors[0]!.msg, /users:1: alice: unrecognized password hash.*keeping the previous version/s);
  });
});

describe('auth_flat_file worker threads', () => {
  /** A well-formed argon2id hash of m=65536 that takes seconds to check (random value: never matches). */
  const slowArgon2 = (iterations: number): string =>
    `$argon2id$v=19$m=65536,t=${iterations},p=1$${randomBytes(16).toString('base64').replace(/=+$/, '')}$${randomBytes(32).toString('base64').replace(/=+$/, '')}`;
  const threadCount = (): number => readdirSync('/proc/self/task').length;

  test('a full queue is DENYSOFT (never OK), with the reason in the result and the log', async () => {
    const hash = await argon2id({ password: 'pw', salt: randomBytes(16), iterations: 2, memorySize: 65536, parallelism: 1, hashLength: 32, outputType: 'encoded' });
    const dir = configDir({ users: `slow:${hash}\n` });
    const hooks = await loadPlugin(plugin, { file: 'users', workers: 1, max_queued: 0 }, { configDir: dir });
    try {
      const first = makeContext({ name: 'auth_flat_file' });
      const second = makeContext({ name: 'auth_flat_file' });
      const [a, b] = await Promise.all([
        callHook(hooks, 'auth_plain', first, { mechanism: 'PLAIN', user: 'slow', password: 'pw' }),
        callHook(hooks, 'auth_plain', second, { mechanism: 'PLAIN', user: 'slow', password: 'pw' }),
      ]);
      assert.equal(a.decision, Decision.OK, 'the first has the thread');
      assert.equal(b.decision, Decision.DENYSOFT, 'the second finds the queue full: try again later');
      assert.match(String(second.myResults()?.err), /slow: argon2 check failed \(queue_full\)/);
      const warned = second.log.entries;
      assert.ok(warned.some((e) => e.level === 'warn' && /argon2 check for slow \(.*users:1\) failed: hash check queue full/.test(e.msg)), JSON.stringify(warned));
      assert.equal(await attempt(hooks, 'PLAIN', 'slow', 'pw'), Decision.OK, 'fine again when the thread is free');
    } finally {
      await hooks.shutdown?.();
    }
  });

  test('verify_timeout: a check that takes too long is DENYSOFT; inline schemes are not affected', async () => {
    const dir = configDir({ users: `stuck:${slowArgon2(200)}\nplain:{PLAIN}pw\nquick:${opensslPasswd('6', 'pw')}\n` });
    const hooks = await loadPlugin(plugin, { file: 'users', cleartext: true, workers: 1, verify_timeout: 0.2 }, { configDir: dir });
    try {
      const ctx = makeContext({ name: 'auth_flat_file' });
      const t0 = performance.now();
      const stuck = callHook(hooks, 'auth_login', ctx, { mechanism: 'LOGIN', user: 'stuck', password: 'pw' });
      assert.equal(await attempt(hooks, 'PLAIN', 'plain', 'pw'), Decision.OK, '{PLAIN} is checked inline meanwhile');
      assert.equal((await stuck).decision, Decision.DENYSOFT);
      assert.ok(performance.now() - t0 < 2000);
      assert.match(String(ctx.myResults()?.err), /stuck: argon2 check failed \(timeout\)/);
      assert.equal(await attempt(hooks, 'PLAIN', 'quick', 'pw'), Decision.OK, 'a new thread after the timeout');
    } finally {
      await hooks.shutdown?.();
    }
  });

  test('shutdown ends the threads; later checks are DENYSOFT, never OK; options are checked', async () => {
    const dir = configDir({ users: `a:${opensslPasswd('6', 'pw')}\nb:${BCRYPT_VECTOR.hash}\n` });
    const hooks = await loadPlugin(plugin, { file: 'users', workers: 2 }, { configDir: dir });
    const base = threadCount();
    const both = await Promise.all([attempt(hooks, 'PLAIN', 'a', 'pw'), attempt(hooks, 'PLAIN', 'b', BCRYPT_VECTOR.password)]);
    assert.deepEqual(both, [Decision.OK, Decision.OK]);
    assert.equal(threadCount(), base + 2, 'two worker threads started on demand');
    await hooks.shutdown!();
    assert.equal(threadCount(), base, 'gone after shutdown');
    assert.equal(await attempt(hooks, 'PLAIN', 'a', 'pw'), Decision.DENYSOFT);
    assert.throws(() => plugin.options!.parse({ file: 'x', workers: 0 }), /workers/);
    assert.throws(() => plugin.options!.parse({ file: 'x', max_queued: -1 }), /max_queued/);
    assert.throws(() => plugin.options!.parse({ file: 'x', verify_timeout: 0 }), /verify_timeout/);
  });
});
