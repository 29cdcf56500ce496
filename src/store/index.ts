/**
 * Opens the configured store (config `store:`) when a plugin first uses it,
 * so a configuration without persistent plugins never touches a database
 * and `prequeue --check` creates no files.
 */
import { accessSync, constants, lstatSync, mkdirSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import type { Config } from '../config/schema';
import type { RedisStore } from './redis';
import type { SqliteStore } from './sqlite';
import { NamespacedStore, NAMESPACE_SEPARATOR, StoreError, type KvStore, type StoreBackend } from './types';

export { StoreError, type KvStore, type StoreBackend } from './types';

export type StoreConfig = Config['store'];

export interface StoreLogger {
  warn(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
}

export const DEFAULT_DB_NAME = 'prequeue.db';
export const SYSTEM_STATE_DIR = '/var/lib/prequeue';

function writableDir(dir: string): boolean {
  try {
    if (!statSync(dir).isDirectory()) return false;
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A per-user directory under the temp dir, created 0700. Refuses one that
 * is a symlink or belongs to someone else: the temp dir is world-writable.
 */
function privateTempDir(base: string): string {
  const user = (() => {
    try {
      return userInfo().username;
    } catch {
      return String(process.getuid?.() ?? 'user');
    }
  })();
  const dir = join(base, `prequeue-${user}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid)) {
    throw new StoreError(`${dir} is not a directory of ours; set store.path`);
  }
  return dir;
}

/**
 * Where the SQLite file lives when `store.path` is not set, first match:
 * systemd's StateDirectory ($STATE_DIRECTORY), /var/lib/prequeue if it is a
 * writable directory, else a private directory under the spool directory
 * (the system temp directory by default), which a reboot may clear.
 */
export function defaultSqlitePath(
  spoolDir: string,
  env: NodeJS.ProcessEnv = process.env,
  systemDir = SYSTEM_STATE_DIR,
): { path: string; persistent: boolean } {
  const state = env.STATE_DIRECTORY?.split(':')[0];
  if (state) return { path: join(state, DEFAULT_DB_NAME), persistent: true };
  if (writableDir(systemDir)) return { path: join(systemDir, DEFAULT_DB_NAME), persistent: true };
  return { path: join(privateTempDir(spoolDir), DEFAULT_DB_NAME), persistent: false };
}

export interface StoreContext {
  /** Relative `store.path` is resolved against it. */
  configDir: string;
  /** The runtime's spool directory, for the fallback location. */
  spoolDir: string;
  log: StoreLogger;
}

/*
 * The backends are required when a store is first opened, not at start-up:
 * most configurations never use one, and ioredis and better-sqlite3 together
 * cost several MB of idle memory in every process.
 */
/* eslint-disable @typescript-eslint/no-require-imports */
const loadRedis = (): typeof RedisStore => (require('./redis') as typeof import('./redis')).RedisStore;
const loadSqlite = (): typeof SqliteStore => (require('./sqlite') as typeof import('./sqlite')).SqliteStore;
/* eslint-enable @typescript-eslint/no-require-imports */

export function openStore(cfg: StoreConfig, ctx: StoreContext): StoreBackend {
  if (cfg.backend === 'redis') {
    const RedisStore = loadRedis();
    const r = cfg.redis;
    return new RedisStore({
      url: r.url,
      host: r.host,
      port: r.port,
      db: r.db,
      username: r.username,
      password: r.password,
      prefix: r.prefix,
      connectTimeoutMs: r.connect_timeout * 1000,
      commandTimeoutMs: r.command_timeout * 1000,
      onWarning: (m) => ctx.log.warn(`store: ${m}`),
      onInfo: (m) => ctx.log.info(`store: ${m}`),
    });
  }
  let path: string;
  if (cfg.path) {
    path = cfg.path === ':memory:' ? cfg.path : resolve(ctx.configDir, cfg.path);
  } else {
    const d = defaultSqlitePath(ctx.spoolDir);
    path = d.path;
    if (!d.persistent) {
      ctx.log.warn(`store: no store.path set and ${SYSTEM_STATE_DIR} is not writable: using ${path}, which a reboot may clear`);
    }
  }
  const SqliteStore = loadSqlite();
  return new SqliteStore({
    path,
    busyTimeoutMs: cfg.busy_timeout * 1000,
    onWarning: (m) => ctx.log.warn(`store: ${m}`),
  });
}

/**
 * The runtime's store: opened at the first operation of any plugin, closed
 * with the runtime. A failure to open is reported to that operation (and
 * retried at the next one), like any other store error.
 */
export class StoreService {
  private backend: StoreBackend | undefined;
  private closed = false;
  private readonly root: KvStore;

  constructor(
    cfg: StoreConfig,
    private readonly ctx: StoreContext,
    /** How to open the backend (tests count or fail the openings). */
    private readonly opener: () => StoreBackend = () => openStore(cfg, ctx),
  ) {
    const open = (): KvStore => this.open();
    // Each call goes to the backend of the moment (opened on demand).
    this.root = {
      get: (k) => call(() => open().get(k)),
      mget: (k) => call(() => open().mget(k)),
      set: (k, v, t) => call(() => open().set(k, v, t)),
      del: (k) => call(() => open().del(k)),
      incrBy: (k, n, t) => call(() => open().incrBy(k, n, t)),
      mincrBy: (i, t) => call(() => open().mincrBy(i, t)),
      namespace: (name) => this.namespace(name),
    };
  }

  /** Whether a plugin has used the store yet. */
  get opened(): boolean {
    return this.backend !== undefined;
  }

  private open(): StoreBackend {
    if (this.closed) throw new StoreError('store closed', true);
    if (!this.backend) {
      this.backend = this.opener();
      this.ctx.log.info(`store: opened ${this.backend.where}`);
    }
    return this.backend;
  }

  /** The view a plugin gets: keys prefixed with its name. */
  namespace(name: string): KvStore {
    return new NamespacedStore(this.root, name + NAMESPACE_SEPARATOR);
  }

  async close(): Promise<void> {
    this.closed = true;
    const b = this.backend;
    this.backend = undefined;
    await b?.close();
  }
}

/** Turns a synchronous throw (opening failed) into a rejected promise, as plugins expect. */
function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return fn();
  } catch (err) {
    return Promise.reject(err instanceof StoreError ? err : new StoreError((err as Error).message, true));
  }
}
