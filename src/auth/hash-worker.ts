/**
 * The slow password-hash checks (bcrypt, sha256/sha512-crypt, argon2), run
 * by the threads of HashWorkerPool (hash-worker-pool.ts) so that a check of
 * 50-600 ms never stalls the main thread's SMTP sessions.
 *
 * Loaded in a worker thread, this module answers the pool's messages, one
 * task at a time (the pool never sends a busy worker another):
 *   in:  { id, scheme, password, hash }
 *   out: { id, match: boolean } or { id, error: string }
 * Loaded in the main thread it only exports verifyHash, the same check run
 * inline (tests compare the two).
 */
import { isMainThread, parentPort } from 'node:worker_threads';
import bcrypt from 'bcryptjs';
import { argon2Verify } from 'hash-wasm';

export type HashScheme = 'bcrypt' | 'sha-crypt' | 'argon2';

export interface HashTask {
  id: number;
  scheme: HashScheme;
  password: string;
  hash: string;
}

export type HashReply = { id: number; match: boolean } | { id: number; error: string };

type UnixCrypt = { verify(plaintext: string, hash: string): boolean };
// unixcrypt is an ES module only; TypeScript (commonjs output) would turn a plain import() into require().
const importEsm = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<unknown>;
let unixcrypt: Promise<UnixCrypt> | undefined;

/** Whether `password` matches `hash` (bcrypt `$2?$`, sha-crypt `$5$`/`$6$`, argon2 `$argon2i?d?$`). */
export async function verifyHash(scheme: HashScheme, password: string, hash: string): Promise<boolean> {
  switch (scheme) {
    case 'bcrypt':
      return bcrypt.compare(password, hash);
    case 'sha-crypt':
      unixcrypt ??= importEsm('unixcrypt') as Promise<UnixCrypt>;
      return (await unixcrypt).verify(password, hash);
    case 'argon2':
      return argon2Verify({ password, hash });
    default:
      throw new Error(`unknown hash scheme ${String(scheme)}`);
  }
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (task: HashTask) => {
    verifyHash(task.scheme, task.password, task.hash).then(
      (match) => port.postMessage({ id: task.id, match } satisfies HashReply),
      (err: unknown) => port.postMessage({ id: task.id, error: err instanceof Error ? err.message : String(err) } satisfies HashReply),
    );
  });
}
