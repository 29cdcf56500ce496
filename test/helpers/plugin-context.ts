/**
 * A stand-in for the core when testing one plugin: options parsed the way the
 * loader does, a fake env, and hook contexts with real Results/state objects.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { DnsResolver } from '../../src/dns/resolver';
import { SqliteStore } from '../../src/store/sqlite';
import { join } from 'node:path';
import type { HookArgs, HookContext, HookName, PluginDefinition, PluginEnv, PluginHooks, PluginLogger } from '../../src/plugin/api';
import { toVerdict, type Verdict } from '../../src/plugin/decision';
import { Results, type PluginResult } from '../../src/session/results';
import type { Address, ConnectionState, TransactionState } from '../../src/session/state';

export interface LogEntry {
  level: 'error' | 'warn' | 'info' | 'debug';
  msg: string;
  meta?: Record<string, unknown>;
}

export interface MemoryLogger extends PluginLogger {
  entries: LogEntry[];
}

export function memoryLogger(): MemoryLogger {
  const entries: LogEntry[] = [];
  const at = (level: LogEntry['level']) => (msg: string, meta?: Record<string, unknown>) => void entries.push({ level, msg, meta });
  return { entries, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/** Parses `user@host` (or '' for the null sender) the way the SMTP layer would, params as `KEY=value`. */
export function addr(address: string, params: Record<string, string | true> = {}): Address {
  const at = address.lastIndexOf('@');
  const raw = `<${address}>` + Object.entries(params).map(([k, v]) => (v === true ? ` ${k}` : ` ${k}=${v}`)).join('');
  return {
    address,
    user: at < 0 ? address : address.slice(0, at),
    host: at < 0 ? '' : address.slice(at + 1),
    params,
    raw,
  };
}

export interface FakeContextOptions {
  /** Instance name, the results key (default 'test'). */
  name?: string;
  relayClient?: boolean;
  /** Creates a transaction with this sender ('' = null sender). Omit for no transaction. */
  sender?: string | Address;
  recipients?: string[];
  /** Create a transaction even without a sender. */
  txn?: boolean;
  clientAddr?: string;
  helo?: string;
}

export interface FakeContext extends HookContext {
  log: MemoryLogger;
  /** This plugin's results (the transaction's store if there is one, else the connection's). */
  myResults(): Readonly<PluginResult> | undefined;
  /** Start a new transaction on the same connection (as after RSET/next MAIL). */
  newTransaction(sender?: string | Address): void;
}

let seq = 0;

function makeTxn(sender?: string | Address, recipients: string[] = []): TransactionState {
  return {
    id: `txn${++seq}`,
    sender: sender === undefined ? undefined : typeof sender === 'string' ? addr(sender) : sender,
    recipients: recipients.map((r) => addr(r)),
    immunity: { all: false, plugins: new Set() },
    notes: {},
    results: new Results(),
  };
}

export function makeContext(opts: FakeContextOptions = {}): FakeContext {
  const conn: ConnectionState = {
    id: `conn${++seq}`,
    mode: 'standalone',
    client: { addr: opts.clientAddr ?? '192.0.2.1', port: 40000, helo: opts.helo, via: 'tcp' },
    peer: { addr: opts.clientAddr ?? '192.0.2.1', port: 40000 },
    local: { addr: '127.0.0.1', port: 25 },
    tls: false,
    relayClient: opts.relayClient ?? false,
    immunity: { all: false, plugins: new Set() },
    notes: {},
    results: new Results(),
    transactions: 0,
  };
  const name = opts.name ?? 'test';
  const ctx: FakeContext = {
    conn,
    txn: undefined,
    log: memoryLogger(),
    name,
    result(input) {
      (ctx.txn?.results ?? conn.results).add(name, input);
    },
    myResults() {
      return (ctx.txn?.results ?? conn.results).get(name);
    },
    newTransaction(sender) {
      ctx.txn = makeTxn(sender);
      conn.transactions++;
    },
  };
  if (opts.sender !== undefined || opts.txn || opts.recipients) {
    ctx.txn = makeTxn(opts.sender, opts.recipients);
    conn.transactions++;
  }
  return ctx;
}

/**
 * A fresh in-memory SQLite store per env, opened at the first store() call,
 * namespaced like the loader does (default: the instance name).
 */
export function memoryStore(defaultNamespace = 'test'): PluginEnv['store'] {
  let db: SqliteStore | undefined;
  return (namespace = defaultNamespace) => (db ??= new SqliteStore({ path: ':memory:', sweepIntervalMs: 0 })).namespace(namespace);
}

export function makeEnv(overrides: Partial<PluginEnv> = {}): PluginEnv {
  // No DNS server is reachable by default: a plugin test that needs DNS passes its own resolver (test/helpers/dns-server.ts).
  return {
    name: 'test',
    configDir: tmpdir(),
    mode: 'standalone',
    log: memoryLogger(),
    dns: overrides.dns ?? new DnsResolver({ servers: ['127.0.0.1:9'], timeout: 100, tries: 1 }),
    store: overrides.store ?? memoryStore(overrides.name ?? 'test'),
    ...overrides,
  };
}

/** Validates options with the plugin's schema (as the loader does) and creates an instance. */
export async function loadPlugin(def: PluginDefinition, options: unknown = {}, env: Partial<PluginEnv> = {}): Promise<PluginHooks> {
  const parsed = def.options ? def.options.parse(options ?? {}) : {};
  return def.create(parsed, makeEnv(env));
}

/** Calls one hook, failing the test if the plugin does not register it; DECLINED for undefined. */
export async function callHook<H extends HookName>(
  hooks: PluginHooks,
  hook: H,
  ctx: HookContext,
  ...args: HookArgs[H]
): Promise<Verdict> {
  const fn = hooks[hook] as ((ctx: HookContext, ...a: HookArgs[H]) => unknown) | undefined;
  if (!fn) throw new Error(`plugin has no ${hook} hook`);
  return toVerdict((await fn(ctx, ...args)) as Parameters<typeof toVerdict>[0]);
}

const made: string[] = [];
process.once('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory holding the given files, for options that name files (removed at exit). */
export function configDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'prequeue-test-'));
  made.push(dir);
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return dir;
}
