/**
 * HashWorkerPool: the same answers as the inline check for every scheme
 * (hashes made by openssl and hash-wasm, and the bcrypt/argon2 reference
 * vectors, as in test/plugins/auth_flat_file.test.ts); the event loop keeps
 * ticking during an argon2 m=65536 check (measured inline too, for contrast);
 * a full queue, a timeout, a crashed or exiting worker and a library error
 * are HashVerifyErrors (temporary), never a match; dead workers are
 * replaced; close() ends every thread and lets the process exit.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { argon2id, bcrypt } from 'hash-wasm';
import { HashVerifyError, HashWorkerPool, type HashScheme } from '../../src/auth/hash-worker-pool';
import { verifyHash } from '../../src/auth/hash-worker';
import { configDir } from '../helpers/plugin-context';

const BCRYPT_VECTOR = { password: 'U*U', hash: '$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW' };
const ARGON2I_VECTOR = { password: 'password', hash: '$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG' };

const WORKER_SCRIPT = join(__dirname, '../../src/auth/hash-worker.js');
const POOL_MODULE = join(__dirname, '../../src/auth/hash-worker-pool.js');

const opensslPasswd = (variant: '5' | '6', password: string): string =>
  execFileSync('openssl', ['passwd', `-${variant}`, '-stdin'], { input: password + '\n', encoding: 'utf8' }).trim();

const hashBcrypt = (password: string): Promise<string> =>
  bcrypt({ password, salt: randomBytes(16), costFactor: 4, outputType: 'encoded' });

const hashArgon2id = (password: string, memorySize = 1024, iterations = 2): Promise<string> =>
  argon2id({ password, salt: randomBytes(16), iterations, memorySize, parallelism: 1, hashLength: 32, outputType: 'encoded' });

/** A well-formed argon2id hash that takes long to check (its value is random: it never matches). */
const slowArgon2 = (iterations: number): string =>
  `$argon2id$v=19$m=65536,t=${iterations},p=1$${randomBytes(16).toString('base64').replace(/=+$/, '')}$${randomBytes(32).toString('base64').replace(/=+$/, '')}`;

/** Threads of this process (Linux). */
const threadCount = (): number => readdirSync('/proc/self/task').length;

async function rejectsWith(p: Promise<unknown>, reason: HashVerifyError['reason']): Promise<HashVerifyError> {
  let caught: unknown;
  await p.then(
    (v) => assert.fail(`expected a HashVerifyError (${reason}), got ${String(v)}`),
    (err: unknown) => void (caught = err),
  );
  assert.ok(caught instanceof HashVerifyError, `not a HashVerifyError: ${String(caught)}`);
  assert.equal(caught.reason, reason, caught.message);
  return caught;
}

/** A worker script that crashes on request, then behaves as the real one (fault injection). */
function crashingScript(): string {
  const dir = configDir({});
  const file = join(dir, 'crashing-hash-worker.js');
  writeFileSync(
    file,
    `const { parentPort } = require('node:worker_threads');
parentPort.on('message', (m) => {
  if (m.password === 'crash-exit') process.exit(7);
  if (m.password === 'crash-throw') throw new Error('injected crash');
});
require(${JSON.stringify(WORKER_SCRIPT)});
`,
  );
  return file;
}

/** Largest gap between ticks of a 2 ms interval while `work` runs, and how long it ran. */
async function maxTickGap(work: () => Promise<unknown>): Promise<{ gap: number; took: number; ticks: number }> {
  let last = performance.now();
  let gap = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    gap = Math.max(gap, now - last);
    last = now;
    ticks++;
  }, 2);
  const start = performance.now();
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  const end = performance.now();
  return { gap: Math.max(gap, end - last), took: end - start, ticks };
}

describe('HashWorkerPool answers', () => {
  test('the same as the inline check for bcrypt, sha512/sha256-crypt, argon2id/argon2i; right and wrong passwords', async () => {
    const b = await hashBcrypt('bcrypt-pw');
    const cases: [HashScheme, string, string][] = [
      ['bcrypt', BCRYPT_VECTOR.hash, BCRYPT_VECTOR.password],
      ['bcrypt', b, 'bcrypt-pw'],
      ['bcrypt', b.replace(/^\$2a\$/, '$2b$'), 'bcrypt-pw'],
      ['bcrypt', b.replace(/^\$2a\$/, '$2y$'), 'bcrypt-pw'],
      ['sha-crypt', opensslPasswd('6', 'sha512 pw äö'), 'sha512 pw äö'],
      ['sha-crypt', opensslPasswd('5', 'sha256-pw'), 'sha256-pw'],
      ['argon2', await hashArgon2id('argon pw'), 'argon pw'],
      ['argon2', ARGON2I_VECTOR.hash, ARGON2I_VECTOR.password],
    ];
    const pool = new HashWorkerPool({ size: 2 });
    try {
      for (const [scheme, hash, password] of cases) {
        for (const [pw, expected] of [
          [password, true],
          [password + 'x', false],
          [password.slice(1), false],
        ] as const) {
          const inline = await verifyHash(scheme, pw, hash);
          const pooled = await pool.verify(scheme, pw, hash);
          assert.equal(inline, expected, `${scheme} ${hash.slice(0, 7)} inline, ${expected ? 'right' : 'wrong'} password`);
          assert.equal(pooled, inline, `${scheme} ${hash.slice(0, 7)} pool = inline, ${expected ? 'right' : 'wrong'} password`);
        }
      }
      // Concurrent checks on both threads each get their own answer.
      const all = await Promise.all(cases.flatMap(([scheme, hash, password]) => [pool.verify(scheme, password, hash), pool.verify(scheme, 'nope', hash)]));
      assert.deepEqual(all, cases.flatMap(() => [true, false]));
      assert.equal(pool.threadIds.length, 2, 'never more threads than size');
    } finally {
      await pool.close();
    }
  });

  test('a hash the library refuses: inline it throws, from the pool a HashVerifyError (error), never a match', async () => {
    const broken = '$6$abc$def'; // sha512-crypt shape, but the digest is too short
    await assert.rejects(verifyHash('sha-crypt', 'pw', broken));
    const pool = new HashWorkerPool({ size: 1 });
    try {
      const err = await rejectsWith(pool.verify('sha-crypt', 'pw', broken), 'error');
      assert.match(err.message, /hash check failed/);
      assert.equal(await pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), true, 'the worker goes on');
    } finally {
      await pool.close();
    }
  });
});

describe('HashWorkerPool keeps the event loop free', () => {
  test('a 2 ms interval keeps ticking during an argon2id m=65536 check in the pool (inline blocks it)', async (t) => {
    const hash = await hashArgon2id('slow pw', 65536, 3);
    const pool = new HashWorkerPool({ size: 1 });
    try {
      // Start the thread and load the wasm first: the measure is about the check itself.
      assert.equal(await pool.verify('argon2', 'slow pw', hash), true);
      const inline = await maxTickGap(() => verifyHash('argon2', 'slow pw', hash));
      let match: boolean | undefined;
      const pooled = await maxTickGap(async () => void (match = await pool.verify('argon2', 'slow pw', hash)));
      assert.equal(match, true);
      t.diagnostic(`inline: check ${inline.took.toFixed(0)} ms, largest tick gap ${inline.gap.toFixed(1)} ms, ${inline.ticks} ticks`);
      t.diagnostic(`pool:   check ${pooled.took.toFixed(0)} ms, largest tick gap ${pooled.gap.toFixed(1)} ms, ${pooled.ticks} ticks`);
      assert.ok(pooled.took > 100, `the check must be slow enough to mean something (${pooled.took.toFixed(0)} ms)`);
      // Nominally < 20 ms; generous for a shared 2-core machine where the worker competes for CPU.
      assert.ok(pooled.gap < 80, `largest tick gap during the pooled check: ${pooled.gap.toFixed(1)} ms`);
      assert.ok(pooled.ticks >= pooled.took / 20, `ticks kept coming: ${pooled.ticks} in ${pooled.took.toFixed(0)} ms`);
    } finally {
      await pool.close();
    }
  });
});

describe('HashWorkerPool failures are temporary', () => {
  test('queue full: the check beyond size + maxQueued fails at once; the others complete', async () => {
    const hash = await hashArgon2id('q', 65536, 2);
    const pool = new HashWorkerPool({ size: 1, maxQueued: 1 });
    try {
      const running = pool.verify('argon2', 'q', hash);
      const waiting = pool.verify('argon2', 'wrong', hash);
      assert.equal(pool.queued, 1);
      const t0 = performance.now();
      const err = await rejectsWith(pool.verify('argon2', 'q', hash), 'queue_full');
      assert.ok(performance.now() - t0 < 50, 'refused without waiting');
      assert.match(err.message, /queue full/);
      assert.deepEqual(await Promise.all([running, waiting]), [true, false]);
      assert.equal(await pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), true, 'room again once done');

      const none = new HashWorkerPool({ size: 1, maxQueued: 0 });
      try {
        const busy = none.verify('argon2', 'q', hash);
        await rejectsWith(none.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), 'queue_full');
        assert.equal(await busy, true);
      } finally {
        await none.close();
      }
    } finally {
      await pool.close();
    }
  });

  test('timeout: a running check fails and its thread is replaced; a waiting one fails too', async () => {
    const pool = new HashWorkerPool({ size: 1, timeoutMs: 300 });
    try {
      assert.equal(await pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), true);
      const [first] = pool.threadIds;
      const t0 = performance.now();
      const running = rejectsWith(pool.verify('argon2', 'pw', slowArgon2(200)), 'timeout');
      const waiting = rejectsWith(pool.verify('argon2', 'pw', slowArgon2(200)), 'timeout');
      const err = await running;
      await waiting;
      const took = performance.now() - t0;
      assert.ok(took >= 290 && took < 2000, `failed after ${took.toFixed(0)} ms`);
      assert.match(err.message, /more than 300 ms/);
      assert.deepEqual(pool.threadIds, [], 'the busy thread was terminated');
      assert.equal(await pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), true, 'a new thread answers');
      assert.equal(pool.threadIds.length, 1);
      assert.notEqual(pool.threadIds[0], first);
    } finally {
      await pool.close();
    }
  });

  test('a worker that exits or throws: its check fails (worker_exit), a new thread takes the next ones', async () => {
    const pool = new HashWorkerPool({ size: 1, script: crashingScript() });
    try {
      assert.equal(await pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), true);
      const seen = new Set(pool.threadIds);
      for (const crash of ['crash-exit', 'crash-throw']) {
        const failing = pool.verify('bcrypt', crash, BCRYPT_VECTOR.hash);
        const queued = pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash); // waits behind the crash
        const err = await rejectsWith(failing, 'worker_exit');
        assert.match(err.message, crash === 'crash-exit' ? /exited \(code 7\)/ : /crashed: injected crash/);
        assert.equal(await queued, true, `${crash}: the waiting check is served by the replacement`);
        assert.equal(pool.threadIds.length, 1);
        assert.ok(!seen.has(pool.threadIds[0]!), `${crash}: a new thread`);
        seen.add(pool.threadIds[0]!);
      }
    } finally {
      await pool.close();
    }
  });

  test('a worker script that cannot start: every check fails (worker_exit), no endless respawning', async () => {
    const pool = new HashWorkerPool({ size: 2, script: join(configDir({}), 'missing.js') });
    try {
      const results = await Promise.allSettled([1, 2, 3].map(() => pool.verify('bcrypt', 'x', BCRYPT_VECTOR.hash)));
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.reason instanceof HashVerifyError && r.reason.reason === 'worker_exit', String(r.reason));
      }
      assert.deepEqual(pool.threadIds, []);
    } finally {
      await pool.close();
    }
  });
});

describe('HashWorkerPool close()', () => {
  test('ends every thread, fails running and waiting checks (closed), refuses new ones', async () => {
    const pool = new HashWorkerPool({ size: 2, maxQueued: 4 });
    await Promise.all([1, 2].map(() => pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash)));
    assert.equal(pool.threadIds.length, 2);
    const running = [1, 2, 3].map(() => rejectsWith(pool.verify('argon2', 'pw', slowArgon2(200)), 'closed'));
    const before = threadCount();
    const t0 = performance.now();
    await pool.close();
    await Promise.all(running);
    assert.ok(performance.now() - t0 < 2000, 'busy threads are terminated, not waited for');
    assert.deepEqual(pool.threadIds, []);
    assert.equal(threadCount(), before - 2, 'both worker threads are gone from /proc/self/task');
    await rejectsWith(pool.verify('bcrypt', BCRYPT_VECTOR.password, BCRYPT_VECTOR.hash), 'closed');
    await pool.close(); // twice is harmless
  });

  test('the process exits right after close(), though a check of many seconds was running', async () => {
    const dir = configDir({});
    const script = join(dir, 'close-exit.js');
    writeFileSync(
      script,
      `const { HashWorkerPool } = require(${JSON.stringify(POOL_MODULE)});
const { readdirSync } = require('node:fs');
const threads = () => readdirSync('/proc/self/task').length;
(async () => {
  const pool = new HashWorkerPool({ size: 2 });
  const base = threads();
  const good = await Promise.all([1, 2].map(() => pool.verify('bcrypt', ${JSON.stringify(BCRYPT_VECTOR.password)}, ${JSON.stringify(BCRYPT_VECTOR.hash)})));
  const during = threads();
  const slow = pool.verify('argon2', 'pw', ${JSON.stringify(slowArgon2(200))}).then(() => 'answered', (e) => e.reason);
  await new Promise((r) => setTimeout(r, 100));
  await pool.close();
  console.log(JSON.stringify({ base, during, after: threads(), good, slow: await slow }));
})();
`,
    );
    const t0 = performance.now();
    const out = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, [script], { timeout: 8000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))),
    );
    const took = performance.now() - t0;
    const r = JSON.parse(out) as { base: number; during: number; after: number; good: boolean[]; slow: string };
    assert.deepEqual(r.good, [true, true]);
    assert.equal(r.during, r.base + 2, 'two worker threads while in use');
    assert.equal(r.after, r.base, 'none after close()');
    assert.equal(r.slow, 'closed');
    assert.ok(took < 4000, `the child exited after ${took.toFixed(0)} ms`);
  });
});
