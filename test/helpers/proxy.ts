/** Runs prequeue in-process for a test, from a config given as an object (written as YAML). */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { loadConfigFile } from '../../src/config/load';
import { MemoryLogger } from '../../src/log';
import { buildRuntime } from '../../src/runtime';
import { ProxyServer } from '../../src/server';

/** dist/test/fixtures/plugins: where the compiled test plugins are. */
export const FIXTURE_PLUGINS = resolve(__dirname, '../fixtures/plugins');

export interface TestProxy {
  port: number;
  server: ProxyServer;
  log: MemoryLogger;
  configFile: string;
  close(): Promise<void>;
}

export function writeConfig(config: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pq-config-'));
  const file = join(dir, 'prequeue.yaml');
  writeFileSync(file, YAML.stringify(config));
  return file;
}

export async function startProxy(config: Record<string, unknown>): Promise<TestProxy> {
  const file = writeConfig({ listen: '127.0.0.1:0', hostname: 'pq.example.test', plugin_dirs: [FIXTURE_PLUGINS], ...config });
  const log = new MemoryLogger('debug');
  const server = new ProxyServer(await buildRuntime(loadConfigFile(file), log));
  const addr = await server.listen();
  return { port: addr.port, server, log, configFile: file, close: () => server.close(2000) };
}
