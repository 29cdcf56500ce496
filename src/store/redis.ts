/**
 * The Redis backend (ioredis): one view shared by every prequeue instance
 * that points at the same server, database and prefix.
 *
 * A mail server must not hang on its store: every command has a timeout,
 * and once the connection is known to be down, operations fail at once with
 * a StoreError instead of queueing (the plugin then applies its failure
 * policy) while the client reconnects in the background. Only the very first
 * commands, issued while the first connection is being made, wait for it (at
 * most the connect timeout).
 */
import Redis, { type RedisOptions } from 'ioredis';
import { checkIncrement, checkTtl, NamespacedStore, NAMESPACE_SEPARATOR, StoreError, type KvStore, type StoreBackend } from './types';

export interface RedisStoreOptions {
  /** redis://[user:password@]host:port/db or rediss:// (TLS); overrides host, port and db. */
  url?: string;
  host?: string;
  port?: number;
  db?: number;
  username?: string;
  password?: string;
  /** Prepended to every key, so several applications can share a database. */
  prefix?: string;
  /** Milliseconds to establish a connection (default 2000). */
  connectTimeoutMs?: number;
  /** Milliseconds a command may take (default 1000). */
  commandTimeoutMs?: number;
  /** Told when the server becomes unreachable and when it is back (once per outage). */
  onWarning?: (message: string) => void;
  onInfo?: (message: string) => void;
}

/**
 * Batch increments as one script: checked first, then applied, so a batch
 * either applies whole or not at all (as in SQLite's transaction), in one
 * round trip. ARGV[1] is the TTL in ms (0: keep), then one increment per key.
 */
const INCR_SCRIPT = `
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and not string.match(v, '^-?%d+$') then
    return redis.error_reply('ERR ' .. k .. ': value is not an integer')
  end
end
local ms = tonumber(ARGV[1])
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', k, ARGV[i + 1])
  if ms > 0 then redis.call('PEXPIRE', k, ms) end
end
return out
`;

type IncrCommand = (numKeys: number, ...args: (string | number)[]) => Promise<number[]>;

export class RedisStore implements StoreBackend {
  readonly kind = 'redis' as const;
  readonly where: string;
  private readonly client: Redis;
  private readonly prefix: string;
  /** Why the connection is down, once it has failed (cleared when it is ready again). */
  private down: string | undefined;
  private closed = false;

  constructor(opts: RedisStoreOptions) {
    this.prefix = opts.prefix ?? '';
    const connectTimeout = opts.connectTimeoutMs ?? 2000;
    const options: RedisOptions = {
      connectTimeout,
      commandTimeout: opts.commandTimeoutMs ?? 1000,
      // Commands in flight when the link drops fail instead of waiting for a reconnect.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // Reconnect quickly at first, then every 2 s at most: an outage ends as soon as it can.
      retryStrategy: (times) => Math.min(times * 100, 2000),
      lazyConnect: true,
      disableClientInfo: true,
      connectionName: 'prequeue',
    };
    if (opts.username !== undefined) options.username = opts.username;
    if (opts.password !== undefined) options.password = opts.password;
    if (opts.url) {
      this.client = new Redis(opts.url, options);
      const u = new URL(opts.url);
      this.where = `${u.protocol}//${u.host}${u.pathname.length > 1 ? u.pathname : ''}`;
    } else {
      const host = opts.host ?? '127.0.0.1';
      const port = opts.port ?? 6379;
      this.client = new Redis({ ...options, host, port, db: opts.db ?? 0 });
      this.where = `redis ${host.includes(':') ? `[${host}]` : host}:${port}/${opts.db ?? 0}`;
    }
    const warn = opts.onWarning ?? (() => undefined);
    const info = opts.onInfo ?? (() => undefined);
    // Without an 'error' listener ioredis's errors would crash the process.
    this.client.on('error', (err: Error) => {
      if (this.closed) return;
      if (this.down === undefined) warn(`${this.where} unavailable: ${err.message}`);
      this.down = err.message;
    });
    this.client.on('close', () => {
      if (this.closed || this.down !== undefined) return;
      this.down = 'connection closed';
      warn(`${this.where} unavailable: connection closed`);
    });
    this.client.on('ready', () => {
      if (this.down !== undefined) info(`${this.where} available again`);
      this.down = undefined;
    });
    this.client.defineCommand('prequeueIncr', { lua: INCR_SCRIPT });
    // Connect now in the background, so that a server down at startup is known before the first mail.
    this.client.connect().catch(() => undefined);
  }

  private key = (k: string): string => this.prefix + k;

  private async run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreError(`${this.where}: store closed`, true);
    if (this.down !== undefined) throw new StoreError(`${this.where} unavailable: ${this.down}`, true);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      const e = err as Error;
      // The link failed while the command waited: say why, not what ioredis's queue did about it.
      if (this.down !== undefined) throw new StoreError(`${this.where} unavailable: ${this.down}`, true);
      // A Redis reply error (wrong type, not an integer) is about this request, not the link.
      const replyError = e.name === 'ReplyError';
      throw new StoreError(`${this.where}: ${what}: ${e.message}`, !replyError);
    }
  }

  get(key: string): Promise<string | undefined> {
    return this.run('get', async () => (await this.client.get(this.key(key))) ?? undefined);
  }

  mget(keys: readonly string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return Promise.resolve([]);
    return this.run('mget', async () => (await this.client.mget(keys.map(this.key))).map((v) => v ?? undefined));
  }

  set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    return this.run('set', async () => {
      checkTtl(ttlSeconds);
      if (ttlSeconds === undefined) await this.client.set(this.key(key), value);
      else await this.client.set(this.key(key), value, 'PX', Math.ceil(ttlSeconds * 1000));
    });
  }

  del(keys: string | readonly string[]): Promise<void> {
    const list = typeof keys === 'string' ? [keys] : keys;
    if (list.length === 0) return Promise.resolve();
    return this.run('del', async () => {
      await this.client.del(...list.map(this.key));
    });
  }

  async incrBy(key: string, n: number, ttlSeconds?: number): Promise<number> {
    const [value] = await this.mincrBy([[key, n]], ttlSeconds);
    return value!;
  }

  mincrBy(increments: ReadonlyArray<readonly [string, number]>, ttlSeconds?: number): Promise<number[]> {
    return this.run('incr', async () => {
      checkTtl(ttlSeconds);
      for (const [, n] of increments) checkIncrement(n);
      if (increments.length === 0) return [];
      const ms = ttlSeconds === undefined ? 0 : Math.ceil(ttlSeconds * 1000);
      const incr = (this.client as unknown as { prequeueIncr: IncrCommand }).prequeueIncr;
      const values = await incr.call(
        this.client,
        increments.length,
        ...increments.map(([key]) => this.key(key)),
        ms,
        ...increments.map(([, n]) => n),
      );
      return values.map(Number);
    });
  }

  namespace(name: string): KvStore {
    return new NamespacedStore(this, name + NAMESPACE_SEPARATOR);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.client.status === 'ready') {
      // QUIT lets replies still in flight arrive; bounded in case the server stalls.
      const quit = this.client.quit().catch(() => undefined);
      const timer = new Promise((r) => setTimeout(r, 1000).unref());
      await Promise.race([quit, timer]);
    }
    this.client.disconnect();
  }
}
