/**
 * The SQLite backend (better-sqlite3): one file that the worker processes of
 * one machine share. WAL lets readers proceed while one process writes;
 * busy_timeout makes a writer wait for another's lock instead of failing at
 * once. better-sqlite3 is synchronous, so a wait blocks this process's event
 * loop: writes here are single-row upserts that hold the lock for
 * microseconds, and busy_timeout bounds the worst case.
 *
 * Expired rows are invisible to reads at once; a sweep deletes them in small
 * batches when the store opens and every `sweepIntervalMs`.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { checkIncrement, checkTtl, NamespacedStore, NAMESPACE_SEPARATOR, StoreError, type KvStore, type StoreBackend } from './types';

export interface SqliteStoreOptions {
  /** The database file (its directory is created if missing), or ':memory:'. */
  path: string;
  /** How long a write waits for another process's lock, in milliseconds (default 2000). */
  busyTimeoutMs?: number;
  /** How often expired rows are deleted, in milliseconds (default 60000; 0: only at open). */
  sweepIntervalMs?: number;
  /** The clock expiry is measured against (tests move it). */
  now?: () => number;
  /** Told about sweep failures (the store keeps working). */
  onWarning?: (message: string) => void;
}

/** Bumped when the table layout changes; a file from a newer prequeue is refused rather than misread. */
const SCHEMA_VERSION = 1;
const SWEEP_BATCH = 1000;
/** A sweep gives the lock back after this many batches, until the next interval. */
const SWEEP_MAX_BATCHES = 20;

const isInteger = (v: string): boolean => /^-?\d+$/.test(v) && Number.isSafeInteger(Number(v));

interface Row {
  value: string;
  expires: number | null;
}

export class SqliteStore implements StoreBackend {
  readonly kind = 'sqlite' as const;
  readonly where: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly sweepTimer?: NodeJS.Timeout;
  private readonly onWarning: (message: string) => void;
  private closed = false;

  private readonly stmt: {
    get: Database.Statement<[string, number], { value: string }>;
    getRaw: Database.Statement<[string], Row>;
    set: Database.Statement<[string, string, number | null]>;
    del: Database.Statement<[string]>;
    sweep: Database.Statement<[number, number]>;
  };
  private readonly mgetTxn: (keys: readonly string[]) => (string | undefined)[];
  private readonly incrTxn: (increments: ReadonlyArray<readonly [string, number]>, ttlMs: number | undefined) => number[];

  constructor(opts: SqliteStoreOptions) {
    this.where = opts.path;
    this.now = opts.now ?? Date.now;
    this.onWarning = opts.onWarning ?? (() => undefined);
    try {
      if (opts.path !== ':memory:') mkdirSync(dirname(opts.path), { recursive: true, mode: 0o750 });
      this.db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 2000 });
    } catch (err) {
      throw new StoreError(`sqlite ${opts.path}: cannot open: ${(err as Error).message}`, true);
    }
    try {
      this.db.pragma('journal_mode = WAL');
      // With WAL, NORMAL loses at most the last commits on power failure, never consistency.
      this.db.pragma('synchronous = NORMAL');
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new Error(`the file has schema version ${version}, this prequeue knows ${SCHEMA_VERSION}`);
      }
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS kv (
          key TEXT PRIMARY KEY,
          value TEXT NOT NULL,
          expires INTEGER  -- milliseconds since the epoch; NULL: never
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
      `);
      if (version < SCHEMA_VERSION) this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (err) {
      this.db.close();
      throw new StoreError(`sqlite ${opts.path}: ${(err as Error).message}`, true);
    }
    this.stmt = {
      get: this.db.prepare('SELECT value FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)'),
      getRaw: this.db.prepare('SELECT value, expires FROM kv WHERE key = ?'),
      set: this.db.prepare(
        'INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires',
      ),
      del: this.db.prepare('DELETE FROM kv WHERE key = ?'),
      sweep: this.db.prepare('DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expires <= ? LIMIT ?)'),
    };
    // A deferred read transaction: one consistent snapshot for the whole batch.
    this.mgetTxn = this.db.transaction((keys: readonly string[]) => {
      const now = this.now();
      return keys.map((k) => this.stmt.get.get(k, now)?.value);
    });
    const incr = this.db.transaction((increments: ReadonlyArray<readonly [string, number]>, ttlMs: number | undefined) => {
      const now = this.now();
      return increments.map(([key, n]) => {
        const row = this.stmt.getRaw.get(key);
        const live = row && (row.expires === null || row.expires > now) ? row : undefined;
        if (live && !isInteger(live.value)) throw new StoreError(`${key}: value is not an integer`);
        const value = (live ? Number(live.value) : 0) + n;
        if (!Number.isSafeInteger(value)) throw new StoreError(`${key}: increment overflows`);
        const expires = ttlMs !== undefined ? now + ttlMs : (live?.expires ?? null);
        this.stmt.set.run(key, String(value), expires);
        return value;
      });
    });
    // IMMEDIATE takes the write lock up front: read-then-write without another writer in between.
    this.incrTxn = (increments, ttlMs) => incr.immediate(increments, ttlMs);

    this.sweep();
    const interval = opts.sweepIntervalMs ?? 60_000;
    if (interval > 0) {
      this.sweepTimer = setInterval(() => this.sweep(), interval);
      this.sweepTimer.unref();
    }
  }

  /** Deletes expired rows, a bounded amount per call; returns how many. */
  sweep(): number {
    if (this.closed) return 0;
    let deleted = 0;
    try {
      for (let i = 0; i < SWEEP_MAX_BATCHES; i++) {
        const n = this.stmt.sweep.run(this.now(), SWEEP_BATCH).changes;
        deleted += n;
        if (n < SWEEP_BATCH) break;
      }
    } catch (err) {
      this.onWarning(`sqlite ${this.where}: deleting expired entries failed: ${(err as Error).message}`);
    }
    return deleted;
  }

  private run<T>(what: string, fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new StoreError(`sqlite ${this.where}: store closed`, true));
    try {
      return Promise.resolve(fn());
    } catch (err) {
      if (err instanceof StoreError) return Promise.reject(err);
      const e = err as Error & { code?: string };
      const busy = e.code === 'SQLITE_BUSY' || e.code === 'SQLITE_LOCKED';
      return Promise.reject(new StoreError(`sqlite ${this.where}: ${what}: ${e.message}`, busy));
    }
  }

  get(key: string): Promise<string | undefined> {
    return this.run('get', () => this.stmt.get.get(key, this.now())?.value);
  }

  mget(keys: readonly string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return Promise.resolve([]);
    return this.run('mget', () => this.mgetTxn(keys));
  }

  set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    return this.run('set', () => {
      checkTtl(ttlSeconds);
      this.stmt.set.run(key, value, ttlSeconds === undefined ? null : this.now() + Math.ceil(ttlSeconds * 1000));
    });
  }

  del(keys: string | readonly string[]): Promise<void> {
    return this.run('del', () => {
      if (typeof keys === 'string') this.stmt.del.run(keys);
      else if (keys.length) this.db.transaction(() => keys.forEach((k) => this.stmt.del.run(k))).immediate();
    });
  }

  async incrBy(key: string, n: number, ttlSeconds?: number): Promise<number> {
    const [value] = await this.mincrBy([[key, n]], ttlSeconds);
    return value!;
  }

  mincrBy(increments: ReadonlyArray<readonly [string, number]>, ttlSeconds?: number): Promise<number[]> {
    return this.run('incr', () => {
      checkTtl(ttlSeconds);
      for (const [, n] of increments) checkIncrement(n);
      if (increments.length === 0) return [];
      return this.incrTxn(increments, ttlSeconds === undefined ? undefined : Math.ceil(ttlSeconds * 1000));
    });
  }

  namespace(name: string): KvStore {
    return new NamespacedStore(this, name + NAMESPACE_SEPARATOR);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.db.close();
  }
}
