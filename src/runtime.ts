import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { DownstreamPool } from './backend/pool';
import { ConfigError, loadConfigFile, type LoadedConfig, type Overrides } from './config/load';
import type { Logger } from './log';
import { PluginChain } from './plugin/chain';
import { loadPlugins } from './plugin/loader';
import { CidrList } from './util/cidr';
import { DnsResolver } from './dns/resolver';
import { StoreService } from './store';
import { createSecureContext } from 'node:tls';
import { BruteForceTracker } from './auth/brute-force';

/**
 * Everything a session needs that comes from the configuration. Immutable:
 * a SIGHUP builds a new one, new sessions take it, running sessions finish
 * on the one they started with.
 */
export interface Runtime {
  loaded: LoadedConfig;
  config: LoadedConfig['config'];
  chain: PluginChain;
  log: Logger;
  trustedProxies: CidrList;
  relayClients: CidrList;
  immuneSenders: (address: string) => boolean;
  tls?: { key: Buffer; cert: Buffer };
  /** Idle downstream links shared by the sessions of this runtime. */
  pool: DownstreamPool;
  /** Where messages over the memory threshold are spooled. */
  spoolDir: string;
  /** The DNS resolver shared by every plugin of this runtime. */
  dns: DnsResolver;
  /** The persistent store (config `store:`), opened when a plugin first uses it. */
  store: StoreService;
  /** Failed AUTH attempts per client address; handed on to the next runtime on reload. */
  bruteForce: BruteForceTracker;
  /** Sessions still using this runtime; the chain is shut down when a replaced runtime drains. */
  users: number;
}

export function senderMatcher(entries: readonly string[]): (address: string) => boolean {
  const exact = new Set<string>();
  const domains = new Set<string>();
  for (const e of entries) {
    const lower = e.toLowerCase();
    if (lower.startsWith('@')) domains.add(lower.slice(1));
    else if (!lower.includes('@')) domains.add(lower);
    else exact.add(lower);
  }
  return (address) => {
    const a = address.toLowerCase();
    return exact.has(a) || domains.has(a.slice(a.lastIndexOf('@') + 1));
  };
}

const AUTH_HOOKS = ['auth', 'auth_plain', 'auth_login', 'auth_cram_md5'] as const;

export async function buildRuntime(loaded: LoadedConfig, log: Logger): Promise<Runtime> {
  const { config } = loaded;
  let tls: Runtime['tls'];
  if (config.tls) {
    try {
      tls = { key: readFileSync(resolve(loaded.dir, config.tls.key)), cert: readFileSync(resolve(loaded.dir, config.tls.cert)) };
      // A key that does not match the certificate must fail here (a reload then keeps the running pair), not at a client's STARTTLS.
      createSecureContext(tls);
    } catch (err) {
      throw new ConfigError(loaded.file, [{ key: 'tls', line: loaded.lineOf(['tls']), message: (err as Error).message }]);
    }
  }
  const dns = new DnsResolver({
    servers: config.dns.servers,
    timeout: config.dns.timeout * 1000,
    tries: config.dns.tries,
    cacheSize: config.dns.cache_size,
    minTtl: config.dns.min_ttl,
    maxTtl: config.dns.max_ttl,
  });
  const spoolDir = config.spool.dir ? resolve(loaded.dir, config.spool.dir) : tmpdir();
  const store = new StoreService(config.store, { configDir: loaded.dir, spoolDir, log });
  let plugins;
  try {
    plugins = await loadPlugins(loaded, log, { dns, store: (namespace) => store.namespace(namespace) });
  } catch (err) {
    dns.close();
    await store.close();
    throw err;
  }
  const chain = new PluginChain(plugins);
  if (AUTH_HOOKS.some((h) => chain.has(h)) && config.mode === 'standalone' && !tls && config.auth.allow_insecure === 'never') {
    log.warn('auth plugins are configured but AUTH is never offered: no tls certificate, and auth.allow_insecure is never');
  }
  return {
    loaded,
    config,
    chain,
    log,
    trustedProxies: new CidrList(config.trusted_proxies),
    relayClients: new CidrList(config.relay_clients),
    immuneSenders: senderMatcher(config.immune_senders),
    tls,
    pool: new DownstreamPool(config.downstream.pool.max_idle, config.downstream.pool.idle_timeout * 1000),
    spoolDir,
    dns,
    store,
    bruteForce: new BruteForceTracker({
      maxFailures: config.auth.brute_force.max_failures,
      windowMs: config.auth.brute_force.window * 1000,
      delayMs: config.auth.brute_force.delay * 1000,
      maxDelayMs: config.auth.brute_force.max_delay * 1000,
      exempt: new CidrList(config.auth.brute_force.exempt),
    }),
    users: 0,
  };
}

/** Releases what a runtime holds once no session uses it. */
export async function closeRuntime(rt: Runtime): Promise<void> {
  await rt.pool.close();
  await rt.chain.shutdown();
  // After the plugins: their last writes (disconnect hooks) are done by now.
  await rt.store.close();
  rt.dns.close();
}

export async function loadRuntime(file: string, overrides: Overrides, log: Logger): Promise<Runtime> {
  return buildRuntime(loadConfigFile(file, overrides), log);
}
