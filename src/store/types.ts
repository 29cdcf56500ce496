/**
 * The shared persistent store: a small key-value store with expiry that
 * plugins keep state in across connections, restarts and (with Redis)
 * several prequeue instances: greylisting triplets, karma history, token
 * counts. SQLite and Redis behind the same asynchronous interface.
 *
 * Values are strings (JSON is the caller's business). Counters are decimal
 * integer strings, so `get` of a counter gives "42" on both backends.
 *
 * Expiry, the same on both backends:
 * - `set(k, v)` without a TTL stores the key without expiry; with one, the key
 *   expires `ttlSeconds` from now.
 * - `incrBy(k, n)` without a TTL keeps the key's current expiry (a new key has
 *   none); with one, the expiry is set to `ttlSeconds` from now, on every call
 *   (a counter in use never expires, one left alone does).
 * - An expired key reads as absent and counts from 0 again.
 * TTLs may be fractional seconds (Redis keeps milliseconds).
 */
export interface KvStore {
  get(key: string): Promise<string | undefined>;
  /** Values in the order of `keys` (undefined for absent or expired keys): one round trip / one read transaction. */
  mget(keys: readonly string[]): Promise<(string | undefined)[]>;
  set(key: string, value: string, ttlSeconds?: number): Promise<void>;
  del(keys: string | readonly string[]): Promise<void>;
  /** Adds `n` (an integer, may be negative) to the counter and returns its new value. */
  incrBy(key: string, n: number, ttlSeconds?: number): Promise<number>;
  /**
   * Many increments in one SQLite transaction or one Redis pipeline; the new
   * values in order. A key listed twice is incremented twice.
   */
  mincrBy(increments: ReadonlyArray<readonly [key: string, n: number]>, ttlSeconds?: number): Promise<number[]>;
  /** A view whose keys are prefixed with `name|` (plugins get one named after themselves). */
  namespace(name: string): KvStore;
}

/** An opened backend: a store that can also describe and close itself. */
export interface StoreBackend extends KvStore {
  readonly kind: 'sqlite' | 'redis';
  /** For logs: the file or the server. */
  readonly where: string;
  close(): Promise<void>;
}

/**
 * Any failure of the store: unreachable Redis, locked or unwritable SQLite
 * file, a counter holding a non-integer. Plugins catch it and apply their own
 * policy; they never read it as "no entry".
 */
export class StoreError extends Error {
  constructor(
    message: string,
    /** True when the backend is unreachable or closed (not a problem with this one request). */
    readonly unavailable = false,
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

export const NAMESPACE_SEPARATOR = '|';

export function checkTtl(ttlSeconds: number | undefined): void {
  if (ttlSeconds !== undefined && !(Number.isFinite(ttlSeconds) && ttlSeconds > 0)) {
    throw new StoreError(`TTL must be a positive number of seconds, got ${ttlSeconds}`);
  }
}

export function checkIncrement(n: number): void {
  if (!Number.isSafeInteger(n)) throw new StoreError(`increment must be an integer, got ${n}`);
}

/** Keys prefixed with a namespace; everything else is the backend's. */
export class NamespacedStore implements KvStore {
  constructor(
    private readonly inner: KvStore,
    private readonly prefix: string,
  ) {}

  private k = (key: string): string => this.prefix + key;

  get(key: string): Promise<string | undefined> {
    return this.inner.get(this.k(key));
  }
  mget(keys: readonly string[]): Promise<(string | undefined)[]> {
    return this.inner.mget(keys.map(this.k));
  }
  set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    return this.inner.set(this.k(key), value, ttlSeconds);
  }
  del(keys: string | readonly string[]): Promise<void> {
    return this.inner.del(typeof keys === 'string' ? this.k(keys) : keys.map(this.k));
  }
  incrBy(key: string, n: number, ttlSeconds?: number): Promise<number> {
    return this.inner.incrBy(this.k(key), n, ttlSeconds);
  }
  mincrBy(increments: ReadonlyArray<readonly [string, number]>, ttlSeconds?: number): Promise<number[]> {
    return this.inner.mincrBy(
      increments.map(([key, n]) => [this.k(key), n] as const),
      ttlSeconds,
    );
  }
  namespace(name: string): KvStore {
    return new NamespacedStore(this.inner, `${this.prefix}${name}${NAMESPACE_SEPARATOR}`);
  }
}
