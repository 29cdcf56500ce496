/**
 * auth_checkpassword against checkpassword programs written here (bash
 * scripts in a temp dir; Debian has no checkpassword package): the exact
 * bytes on file descriptor 3, exit codes to decisions (0 OK, 1 DENY, 2/111/
 * signals DENYSOFT), the args command run after success, no shell, a minimal
 * environment with the tcpserver variables, the timeout killing the program
 * and what it started, the concurrency limit, CRAM-MD5 passed the qmail way,
 * and config errors.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import plugin from '../../plugins/auth_checkpassword';
import type { AuthRequest, PluginHooks } from '../../src/plugin/api';
import { Decision } from '../../src/plugin/decision';
import { callHook, configDir, loadPlugin, makeContext, memoryLogger, type FakeContext } from '../helpers/plugin-context';

/** A checkpassword program: reads the three NUL-terminated fields from fd 3, records what it saw, decides by user. */
const CHECKPW = `#!/bin/bash
IFS= read -r -d '' user <&3 || exit 2
IFS= read -r -d '' pass <&3 || exit 2
IFS= read -r -d '' ts <&3 || exit 2
dir=$(dirname "$0")
printf '%s\\n' "$user" >> "$dir/calls"
env > "$dir/env.$user"
printf '%s\\n' "$@" > "$dir/args.$user"
case "$user" in
  carol) [ "$pass" = 'carol pw' ] && exec "$@"; exit 1 ;;
  temp) exit 111 ;;
  misuse) exit 2 ;;
  crash) kill -SEGV $$ ;;
  noisy) echo "no such user in /etc/passwd-ish" >&2; exit 1 ;;
  slow) sleep 30 & echo $! > "$dir/slow.child"; echo $$ > "$dir/slow.main"; wait; exit 0 ;;
  busy) echo start >> "$dir/busy"; sleep 0.3; echo end >> "$dir/busy"; exit 0 ;;
  cram)
    # vchkpw's CRAM-MD5: the "timestamp" is the challenge, the "password" the client's digest.
    want=$(printf '%s' "$ts" | openssl dgst -md5 -hmac 'cram secret' | sed 's/.* //')
    [ "$pass" = "$want" ] && exec "$@"; exit 1 ;;
esac
exit 1
`;

/** Dumps fd 3 raw into the file named by its first argument, then refuses. */
const DUMP = `#!/bin/sh
cat <&3 > "$1"
exit 1
`;

function programs(): { dir: string; checkpw: string; dump: string } {
  const dir = configDir({ 'checkpw.sh': CHECKPW, 'dump.sh': DUMP });
  for (const f of ['checkpw.sh', 'dump.sh']) chmodSync(join(dir, f), 0o755);
  return { dir, checkpw: join(dir, 'checkpw.sh'), dump: join(dir, 'dump.sh') };
}

const ctxFor = (): FakeContext => makeContext({ name: 'auth_checkpassword', clientAddr: '192.0.2.44' });

async function attempt(hooks: PluginHooks, user: string, password: string, mechanism: 'PLAIN' | 'LOGIN' = 'PLAIN', ctx = ctxFor()) {
  const req: AuthRequest = { mechanism, user, password };
  return callHook(hooks, mechanism === 'PLAIN' ? 'auth_plain' : 'auth_login', ctx, req);
}

const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
};

describe('auth_checkpassword', () => {
  test('fd 3 carries user NUL password NUL timestamp NUL, nothing else', async () => {
    const p = programs();
    const out = join(p.dir, 'fd3');
    const hooks = await loadPlugin(plugin, { program: p.dump, args: [out] });
    const before = Math.floor(Date.now() / 1000);
    assert.equal((await attempt(hooks, 'user@example.test', 'pass wörd $(x) "q"')).decision, Decision.DENY, 'exit 1 is DENY');
    const raw = readFileSync(out);
    const fields = raw.toString('utf8').split('\0');
    assert.equal(fields.length, 4, JSON.stringify(raw.toString('latin1')));
    assert.equal(fields[0], 'user@example.test');
    assert.equal(fields[1], 'pass wörd $(x) "q"');
    assert.ok(Math.abs(Number(fields[2]) - before) <= 2, `timestamp ${fields[2]}`);
    assert.equal(fields[3], '', 'every field is NUL-terminated');
  });

  test('exit 0 is OK and the program ran the args command; exit 1 is DENY (PLAIN and LOGIN)', async () => {
    const p = programs();
    const marker = join(p.dir, 'ran');
    const hooks = await loadPlugin(plugin, { program: p.checkpw, args: ['/usr/bin/touch', marker] });
    assert.ok(hooks.auth_plain && hooks.auth_login);
    assert.equal(hooks.auth_cram_md5, undefined, 'no CRAM-MD5 unless asked for');
    const ctx = ctxFor();
    assert.equal((await attempt(hooks, 'carol', 'carol pw', 'PLAIN', ctx)).decision, Decision.OK);
    assert.ok(existsSync(marker), 'the checkpassword program exec()ed its arguments');
    assert.match(String(ctx.myResults()?.pass), /carol \(PLAIN\)/);
    assert.equal((await attempt(hooks, 'carol', 'carol pw', 'LOGIN')).decision, Decision.OK);
    const bad = ctxFor();
    assert.equal((await attempt(hooks, 'carol', 'wrong', 'LOGIN', bad)).decision, Decision.DENY);
    assert.match(String(bad.myResults()?.fail), /carol: rejected by/);
    assert.equal((await attempt(hooks, 'nobody', 'x')).decision, Decision.DENY, 'the interface cannot tell unknown users: DENY');
  });

  test('no shell: arguments reach the program as given', async () => {
    const p = programs();
    const args = ['/bin/true', '$(touch pwned)', 'a b', '; rm -rf /', '*'];
    const hooks = await loadPlugin(plugin, { program: p.checkpw, args });
    await attempt(hooks, 'carol', 'wrong');
    assert.deepEqual(readFileSync(join(p.dir, 'args.carol'), 'utf8').split('\n').slice(0, -1), args);
    assert.ok(!existsSync(join(p.dir, 'pwned')));
  });

  test('a minimal environment: PATH, the tcpserver variables and `env`; nothing of ours', async () => {
    const p = programs();
    process.env.PQ_TEST_SECRET_MARKER = 'must-not-leak';
    try {
      const hooks = await loadPlugin(plugin, { program: p.checkpw, env: { VPOPMAIL_DOMAIN: 'example.test' } });
      await attempt(hooks, 'carol', 'carol pw');
    } finally {
      delete process.env.PQ_TEST_SECRET_MARKER;
    }
    const env = Object.fromEntries(
      readFileSync(join(p.dir, 'env.carol'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    assert.equal(env.TCPREMOTEIP, '192.0.2.44');
    assert.equal(env.TCPREMOTEPORT, '40000');
    assert.equal(env.TCPLOCALIP, '127.0.0.1');
    assert.equal(env.TCPLOCALPORT, '25');
    assert.equal(env.PROTO, 'TCP');
    assert.equal(env.VPOPMAIL_DOMAIN, 'example.test');
    assert.equal(env.PATH, '/usr/local/bin:/usr/bin:/bin');
    assert.equal(env.PQ_TEST_SECRET_MARKER, undefined);
    assert.equal(env.HOME, undefined);
    // bash adds PWD, SHLVL and _ itself; everything else came from us.
    const ours = Object.keys(env).filter((k) => !['PWD', 'SHLVL', '_', 'OLDPWD'].includes(k)).sort();
    assert.deepEqual(ours, ['PATH', 'PROTO', 'TCPLOCALIP', 'TCPLOCALPORT', 'TCPREMOTEIP', 'TCPREMOTEPORT', 'VPOPMAIL_DOMAIN']);
  });

  test('exit 111, exit 2 (misuse), a signal: temporary failure (DENYSOFT), logged with the output', async () => {
    const p = programs();
    const log = memoryLogger();
    const hooks = await loadPlugin(plugin, { program: p.checkpw }, { log });
    for (const [user, why] of [
      ['temp', /exited 111/],
      ['misuse', /exited 2 \(misused/],
      ['crash', /killed by SIGSEGV/],
    ] as const) {
      const ctx = ctxFor();
      assert.equal((await attempt(hooks, user, 'x', 'PLAIN', ctx)).decision, Decision.DENYSOFT, user);
      assert.match(String(ctx.myResults()?.err), why);
      assert.ok(ctx.log.entries.some((e) => e.level === 'warn' && why.test(e.msg)), JSON.stringify(ctx.log.entries));
    }
    const noisy = ctxFor();
    assert.equal((await attempt(hooks, 'noisy', 'x', 'PLAIN', noisy)).decision, Decision.DENY);
    assert.ok(noisy.log.entries.some((e) => /exited 1: no such user in \/etc\/passwd-ish/.test(e.msg)), JSON.stringify(noisy.log.entries));
  });

  test('a program that never reads fd 3 and exits at once: no EPIPE trouble', async () => {
    const hooks = await loadPlugin(plugin, { program: '/bin/false' });
    const long = 'p'.repeat(1500);
    for (let i = 0; i < 5; i++) assert.equal((await attempt(hooks, 'u', long)).decision, Decision.DENY);
    const yes = await loadPlugin(plugin, { program: '/bin/true' });
    assert.equal((await attempt(yes, 'u', long)).decision, Decision.OK);
  });

  test('run_timeout: the program and what it started are killed, temporary failure', async () => {
    const p = programs();
    const hooks = await loadPlugin(plugin, { program: p.checkpw, run_timeout: 0.5 });
    const t0 = Date.now();
    const ctx = ctxFor();
    assert.equal((await attempt(hooks, 'slow', 'x', 'PLAIN', ctx)).decision, Decision.DENYSOFT);
    const took = Date.now() - t0;
    assert.ok(took >= 450 && took < 3000, `took ${took} ms`);
    assert.match(String(ctx.myResults()?.err), /killed after 0\.5 s/);
    const main = Number(readFileSync(join(p.dir, 'slow.main'), 'utf8'));
    const child = Number(readFileSync(join(p.dir, 'slow.child'), 'utf8'));
    for (let i = 0; i < 40 && (alive(main) || alive(child)); i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(!alive(main), 'the program is gone');
    assert.ok(!alive(child), 'and the sleep it started too');
  });

  test('max_running: attempts beyond it wait their turn', async () => {
    const p = programs();
    const hooks = await loadPlugin(plugin, { program: p.checkpw, max_running: 2 });
    const results = await Promise.all([1, 2, 3, 4, 5].map(() => attempt(hooks, 'busy', 'x')));
    assert.ok(results.every((r) => r.decision === Decision.OK));
    let running = 0;
    let peak = 0;
    const events = readFileSync(join(p.dir, 'busy'), 'utf8').trim().split('\n');
    assert.equal(events.length, 10);
    for (const e of events) {
      running += e === 'start' ? 1 : -1;
      peak = Math.max(peak, running);
    }
    assert.equal(peak, 2);
  });

  test('cram_md5: user NUL digest NUL challenge NUL, checked by the program', async () => {
    const p = programs();
    const hooks = await loadPlugin(plugin, { program: p.checkpw, cram_md5: true });
    assert.ok(hooks.auth_cram_md5);
    const challenge = '<4711.1700000000@pq.example.test>';
    const req = (secret: string): AuthRequest => ({
      mechanism: 'CRAM-MD5',
      user: 'cram',
      challenge,
      response: createHmac('md5', secret).update(challenge).digest('hex'),
    });
    assert.equal((await callHook(hooks, 'auth_cram_md5', ctxFor(), req('cram secret'))).decision, Decision.OK);
    assert.equal((await callHook(hooks, 'auth_cram_md5', ctxFor(), req('other'))).decision, Decision.DENY);
  });

  test('config errors: a program that cannot run, unknown options, bad env names', async () => {
    const p = programs();
    await assert.rejects(loadPlugin(plugin, { program: join(p.dir, 'nope') }), /program .*nope cannot be run: ENOENT/);
    writeFileSync(join(p.dir, 'noexec.sh'), '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    // root may execute any file with an x bit; with none at all, not even root.
    await assert.rejects(loadPlugin(plugin, { program: 'noexec.sh' }, { configDir: p.dir }), /noexec\.sh cannot be run: EACCES/);
    const rel = await loadPlugin(plugin, { program: 'checkpw.sh' }, { configDir: p.dir });
    assert.equal((await attempt(rel, 'carol', 'carol pw')).decision, Decision.OK, 'relative to the config directory');
    assert.throws(() => plugin.options!.parse({}), /program/);
    assert.throws(() => plugin.options!.parse({ program: '/bin/true', timeout_s: 3 }), /timeout_s/);
    assert.throws(() => plugin.options!.parse({ program: '/bin/true', env: { 'A=B': 'x' } }), /not an environment variable name/);
  });
});
