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

export async function buildRuntime(loaded: LoadedConfig, log: Logger): Promise<Runtime> {
  const { config } = loaded;
  let tls: Runtime['tls'];
  if (config.tls) {
    try {
      tls = { key: readFileSync(resolve(loaded.dir, config.tls.key)), cert: readFileSync(resolve(loaded.dir, config.tls.cert)) };
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
  let plugins;
  try {
    plugins = await loadPlugins(loaded, log, { dns });
  } catch (err) {
    dns.close();
    throw err;
  }
  return {
    loaded,
    config,
    chain: new PluginChain(plugins),
    log,
    trustedProxies: new CidrList(config.trusted_proxies),
    relayClients: new CidrList(config.relay_clients),
    immuneSenders: senderMatcher(config.immune_senders),
    tls,
    pool: new DownstreamPool(config.downstream.pool.max_idle, config.downstream.pool.idle_timeout * 1000),
    spoolDir: config.spool.dir ? resolve(loaded.dir, config.spool.dir) : tmpdir(),
    dns,
    users: 0,
  };
}

/** Releases what a runtime holds once no session uses it. */
export async function closeRuntime(rt: Runtime): Promise<void> {
  await rt.pool.close();
  await rt.chain.shutdown();
  rt.dns.close();
}

export async function loadRuntime(file: string, overrides: Overrides, log: Logger): Promise<Runtime> {
  return buildRuntime(loadConfigFile(file, overrides), log);
}
