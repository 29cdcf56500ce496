/**
 * auth_flat_file — SMTP AUTH against a file of users and password hashes
 * (standalone mode; see `auth:` in the config for when AUTH is offered).
 *
 * Options:
 *   file: string            the users file, relative to the config directory (required);
 *                           re-read when it changes
 *   cleartext: boolean      allow `{PLAIN}` (cleartext) entries (default false: such a line is an error)
 *   cram_md5: boolean       offer CRAM-MD5 (default false); it can only be checked for users whose
 *                           entry is `{PLAIN}` or `{CRAM-MD5}`, see below
 *   check_interval: number  seconds between looks at the file for changes (default 2)
 *   workers: number         threads that check bcrypt, sha-crypt and argon2 hashes (default 2)
 *   max_queued: number      checks waiting for a free thread at most (default 64); one more is
 *                           DENYSOFT (454, try again later)
 *   verify_timeout: number  seconds a hash check may take, waiting included (default 10); then
 *                           DENYSOFT and the thread is replaced
 *
 * The file is in Dovecot's passwd-file style: one user a line, `user:password`,
 * any further `:`-separated fields (uid, gid, home... as Dovecot has them) are
 * ignored; lines starting with `#` and blank lines are skipped.
 *
 *   # user:password[:anything Dovecot keeps here]
 *   alice@example.com:$2y$10$Jq1yYpXf0Cz.4Tqv7k5Ame0s1m7z2Mf6eYzB0o0dA8d5g3zQp9wYy
 *   bob@example.com:{SHA512-CRYPT}$6$5ukGr1eZ$W4xq...
 *   carol:$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$kR7...
 *   dave:{PLAIN}only-with-cleartext-true
 *   # a leading ! (or a lone *) locks the account
 *   eve:!$6$...
 *
 * Comments are whole lines only: a `#` after an entry is part of it (of a
 * cleartext password, say).
 *
 * Password formats, recognized by their prefix or by a Dovecot `{SCHEME}` tag:
 *   bcrypt          `$2a$`, `$2b$`, `$2y$`  ({BLF-CRYPT}; `htpasswd -B`, `doveadm pw -s BLF-CRYPT`)
 *   sha512-crypt    `$6$`                  ({SHA512-CRYPT}; `openssl passwd -6`, `mkpasswd -m sha-512`)
 *   sha256-crypt    `$5$`                  ({SHA256-CRYPT}; `openssl passwd -5`)
 *   argon2id/argon2i `$argon2id$`, `$argon2i$` ({ARGON2ID}, {ARGON2I}; `doveadm pw -s ARGON2ID`, the `argon2` CLI)
 *   cram-md5        `{CRAM-MD5}` + 64 hex digits (Dovecot's HMAC context, `doveadm pw -s CRAM-MD5`):
 *                   checks PLAIN/LOGIN and CRAM-MD5, though it is as good as cleartext to a thief
 *   cleartext       `{PLAIN}secret` or `{CLEARTEXT}secret`, only with `cleartext: true`;
 *                   a cleartext password cannot contain `:`
 * Anything else (an untagged value that is no known hash, md5-crypt `$1$`,
 * `{SSHA}`...) is an error naming file:line: an unknown value is never taken
 * for a cleartext password. Duplicate users are an error too. A broken new
 * version of the file is logged and the previous one stays in force.
 *
 * Decisions: a user not in the file is DECLINED, so a later auth plugin (say
 * auth_checkpassword or auth_ldap) may know them; a wrong password is DENY,
 * which ends the chain (535 5.7.8; the brute-force brake counts it); a right
 * one is OK. User names compare exactly (case matters, as in Dovecot's
 * default). With CRAM-MD5 the client never sends the password, so only a
 * `{PLAIN}` or `{CRAM-MD5}` entry can check it; for any other user the plugin
 * declines (and with no other plugin accepting, the client gets 535). Offering
 * CRAM-MD5 when most entries are hashes makes clients that prefer it fail:
 * leave `cram_md5` off unless the file is made for it (a warning at start
 * says when no entry can use it).
 *
 * Cleartext and CRAM-MD5 values are compared in constant time, inline. The
 * hash checks (bcrypt, sha-crypt, argon2: slow by design, 50-100 ms at usual
 * costs, more for argon2 with much memory) run in a small pool of worker
 * threads (src/auth/hash-worker-pool.ts), so they never stall the other SMTP
 * sessions of the process; the threads start at the first check and end at
 * shutdown (reload, exit). Each argon2 thread keeps the memory its largest
 * `m=` needed (64 MiB for m=65536). When the pool cannot answer (queue full,
 * timeout, a crashed thread, a hash the library refuses) the result is
 * DENYSOFT, logged, never OK. The core's brute-force brake (`auth.brute_force`)
 * keeps guessing from filling the queue. Never immune: a relay client that
 * authenticates must still be checked.
 *
 * Needs: `bcryptjs`, `unixcrypt`, `hash-wasm` (npm dependencies, pure JS/wasm; loaded by the
 * worker threads), node's worker_threads.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { resolve } from 'node:path';
import { z } from 'zod';
import { cramMd5Context, cramMd5Matches, cramMd5MatchesContext } from '../src/auth/cram-md5';
import { HashVerifyError, HashWorkerPool } from '../src/auth/hash-worker-pool';
import { definePlugin, type AuthRequest, type HookContext } from '../src/plugin/api';
import { declined, deny, denysoft, ok, type Verdict } from '../src/plugin/decision';
import { ReloadingFile } from '../src/util/reloading-file';

type Scheme = 'bcrypt' | 'sha512-crypt' | 'sha256-crypt' | 'argon2' | 'cram-md5' | 'plain' | 'locked';

interface Entry {
  scheme: Scheme;
  /** The hash, the CRAM-MD5 context (lower-case hex) or the cleartext secret. */
  value: string;
  line: number;
}

type Users = Map<string, Entry>;

const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;
const SHA_CRYPT = /^\$([56])\$(?:rounds=\d+\$)?[^$:]{0,16}\$[./A-Za-z0-9]+$/;
const ARGON2 = /^\$argon2(?:id|i)\$(?:v=\d+\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/;

/** Dovecot's scheme names for what is supported here; the value after the tag must still look right. */
const TAGS: Record<string, Scheme> = {
  'BLF-CRYPT': 'bcrypt',
  'SHA512-CRYPT': 'sha512-crypt',
  'SHA256-CRYPT': 'sha256-crypt',
  CRYPT: 'sha512-crypt', // narrowed by detect(): only the formats above
  ARGON2ID: 'argon2',
  ARGON2I: 'argon2',
  'CRAM-MD5': 'cram-md5',
  'HMAC-MD5': 'cram-md5',
  PLAIN: 'plain',
  CLEARTEXT: 'plain',
};

/** The scheme of an untagged value, by its prefix; undefined when it is no hash this plugin knows. */
function detect(value: string): Scheme | undefined {
  if (BCRYPT.test(value)) return 'bcrypt';
  const sha = SHA_CRYPT.exec(value);
  // A truncated digest would only fail at login (the library throws): it is no hash we know.
  if (sha && value.length - value.lastIndexOf('$') - 1 === (sha[1] === '6' ? 86 : 43)) return sha[1] === '6' ? 'sha512-crypt' : 'sha256-crypt';
  if (ARGON2.test(value)) return 'argon2';
  return undefined;
}

// The messages never quote the password field: the file holds secrets and errors go to the log.
function parseSecret(field: string, cleartext: boolean): Omit<Entry, 'line'> {
  if (field === '*' || field.startsWith('!')) return { scheme: 'locked', value: '' };
  const tagged = /^\{([A-Za-z0-9._-]+)\}(.*)$/s.exec(field);
  if (!tagged) {
    const scheme = detect(field);
    if (scheme) return { scheme, value: field };
    if (/^\$1\$/.test(field)) throw new Error('md5-crypt ($1$) is not supported; use bcrypt, sha512-crypt or argon2');
    if (SHA_CRYPT.test(field)) throw new Error('sha-crypt hash whose digest has the wrong length');
    throw new Error('unrecognized password hash (a cleartext password needs the {PLAIN} prefix and `cleartext: true`)');
  }
  const tag = tagged[1]!.toUpperCase();
  const value = tagged[2]!;
  const scheme = TAGS[tag];
  if (!scheme) throw new Error(`password scheme {${tag}} is not supported`);
  if (scheme === 'plain') {
    if (!cleartext) throw new Error('cleartext password ({PLAIN}) but the option `cleartext` is not set');
    if (!value) throw new Error('empty cleartext password');
    return { scheme, value };
  }
  if (scheme === 'cram-md5') {
    if (!/^[0-9a-f]{64}$/i.test(value)) throw new Error(`{${tag}} needs 64 hex digits`);
    return { scheme, value: value.toLowerCase() };
  }
  const found = detect(value);
  const fits = found === scheme || (tag === 'CRYPT' && found !== undefined && found !== 'argon2');
  if (!fits) throw new Error(`the value after {${tag}} is not a ${tag.toLowerCase()} hash`);
  return { scheme: found!, value };
}

export function parseUsers(cleartext: boolean): (text: string, path: string) => Users {
  return (text, path) => {
    const users: Users = new Map();
    const problems: string[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '');
      if (!line.trim() || line.trimStart().startsWith('#')) return;
      const where = `${path}:${i + 1}`;
      const colon = line.indexOf(':');
      const user = colon < 0 ? line : line.slice(0, colon);
      if (colon < 0) return void problems.push(`${where}: expected user:password`);
      if (!user || user !== user.trim() || /[\x00-\x1f\x7f]/.test(user)) return void problems.push(`${where}: invalid user name`);
      const rest = line.slice(colon + 1);
      const end = rest.indexOf(':');
      const field = end < 0 ? rest : rest.slice(0, end);
      const earlier = users.get(user);
      if (earlier) return void problems.push(`${where}: ${user} is already defined on line ${earlier.line}`);
      try {
        users.set(user, { ...parseSecret(field, cleartext), line: i + 1 });
      } catch (err) {
        problems.push(`${where}: ${user}: ${(err as Error).message}`);
      }
    });
    if (problems.length) throw new Error(problems.join('\n'));
    return users;
  };
}

/** Equal strings in time that depends on neither's content nor length (both are hashed first). */
function sameSecret(a: string, b: string): boolean {
  const h = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();
  return timingSafeEqual(h(a), h(b));
}

/** The slow schemes go to the worker threads; rejects with HashVerifyError when they cannot answer. */
async function verifyPassword(pool: HashWorkerPool, entry: Entry, password: string): Promise<boolean> {
  switch (entry.scheme) {
    case 'bcrypt':
      return pool.verify('bcrypt', password, entry.value);
    case 'sha512-crypt':
    case 'sha256-crypt':
      return pool.verify('sha-crypt', password, entry.value);
    case 'argon2':
      return pool.verify('argon2', password, entry.value);
    case 'cram-md5':
      return sameSecret(cramMd5Context(password), entry.value);
    case 'plain':
      return sameSecret(password, entry.value);
    case 'locked':
      return false;
  }
}

export default definePlugin({
  description: 'SMTP AUTH against a file of users and password hashes',
  defaults: { immune: false },
  options: z
    .object({
      file: z.string().min(1),
      cleartext: z.boolean().default(false),
      cram_md5: z.boolean().default(false),
      check_interval: z.number().positive().default(2),
      workers: z.number().int().min(1).max(64).default(2),
      max_queued: z.number().int().min(0).default(64),
      verify_timeout: z.number().positive().default(10),
    })
    .strict(),
  async create(opts, env) {
    const file = await ReloadingFile.open(resolve(env.configDir, opts.file), parseUsers(opts.cleartext), env.log, opts.check_interval * 1000);
    const initial = await file.current();
    if (!initial.size) env.log.warn(`${file.path}: no users`);
    if (opts.cram_md5 && ![...initial.values()].some((e) => e.scheme === 'plain' || e.scheme === 'cram-md5')) {
      env.log.warn(`cram_md5 is on but no entry of ${file.path} is {PLAIN} or {CRAM-MD5}: CRAM-MD5 will fail for everyone`);
    }
    const pool = new HashWorkerPool({ size: opts.workers, maxQueued: opts.max_queued, timeoutMs: opts.verify_timeout * 1000 });

    const lookup = async (ctx: HookContext, req: AuthRequest): Promise<Entry | undefined> => {
      const entry = (await file.current()).get(req.user);
      if (!entry) ctx.result({ skip: `${req.user}: unknown here` });
      return entry;
    };

    const checkPassword = async (ctx: HookContext, req: AuthRequest): Promise<Verdict> => {
      const entry = await lookup(ctx, req);
      if (!entry) return declined();
      if (req.password === undefined) return declined();
      let good = false;
      try {
        // Never a good password (the core refuses it first), and some hash libraries throw on it.
        good = req.password !== '' && (await verifyPassword(pool, entry, req.password));
      } catch (err) {
        if (!(err instanceof HashVerifyError)) throw err;
        ctx.result({ err: `${req.user}: ${entry.scheme} check failed (${err.reason})` });
        ctx.log.warn(`${entry.scheme} check for ${req.user} (${file.path}:${entry.line}) failed: ${err.message}`);
        return denysoft();
      }
      if (good) {
        ctx.result({ pass: `${req.user} (${entry.scheme})` });
        return ok();
      }
      ctx.result({ fail: `${req.user}: ${entry.scheme === 'locked' ? 'account locked' : 'wrong password'}` });
      return deny();
    };

    const checkCram = async (ctx: HookContext, req: AuthRequest): Promise<Verdict> => {
      const entry = await lookup(ctx, req);
      if (!entry) return declined();
      if (req.challenge === undefined || req.response === undefined) return declined();
      let good: boolean;
      if (entry.scheme === 'plain') good = cramMd5Matches(entry.value, req.challenge, req.response);
      else if (entry.scheme === 'cram-md5') good = cramMd5MatchesContext(entry.value, req.challenge, req.response);
      else if (entry.scheme === 'locked') good = false;
      else {
        // A hash cannot answer a challenge: another plugin may (or nobody, and the client gets 535).
        ctx.result({ skip: `${req.user}: CRAM-MD5 needs a {PLAIN} or {CRAM-MD5} entry, this one is ${entry.scheme}` });
        ctx.log.info(`CRAM-MD5 for ${req.user} cannot be checked against a ${entry.scheme} hash; declined`);
        return declined();
      }
      if (good) {
        ctx.result({ pass: `${req.user} (CRAM-MD5, ${entry.scheme})` });
        return ok();
      }
      ctx.result({ fail: `${req.user}: ${entry.scheme === 'locked' ? 'account locked' : 'wrong CRAM-MD5 response'}` });
      return deny();
    };

    return {
      auth_plain: checkPassword,
      auth_login: checkPassword,
      ...(opts.cram_md5 ? { auth_cram_md5: checkCram } : {}),
      shutdown: () => pool.close(),
    };
  },
});
