/** Runs prequeue in-process for a test, from a config given as an object (written as YAML). */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, afterEach, before } from 'node:test';
import YAML from 'yaml';
import { loadConfigFile } from '../../src/config/load';
import { MemoryLogger } from '../../src/log';
import { buildRuntime } from '../../src/runtime';
import { ProxyServer } from '../../src/server';
import { FakeSmtpServer } from './fake-smtp-server';

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

/**
 * For a describe block of end-to-end tests: one fake downstream for the whole
 * block, and `start(config)` for a proxy relaying to it (standalone mode unless
 * the config says otherwise), closed when the next one starts and after each
 * test. Registers its own before/after hooks, so call it in the describe body.
 */
export function proxyPerTest(): { readonly downstream: FakeSmtpServer; start(config: Record<string, unknown>): Promise<TestProxy> } {
  let downstream: FakeSmtpServer | undefined;
  let proxy: TestProxy | undefined;
  const stop = async (): Promise<void> => {
    await proxy?.close();
    proxy = undefined;
  };
  before(async () => {
    downstream = await FakeSmtpServer.start();
  });
  after(() => downstream?.close());
  afterEach(stop);
  return {
    get downstream(): FakeSmtpServer {
      if (!downstream) throw new Error('proxyPerTest: the downstream starts in before()');
      return downstream;
    },
    async start(config) {
      await stop();
      proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${this.downstream.port}` }, ...config });
      return proxy;
    },
  };
}

/**
 * For test files whose tests each start their own fake downstream (scripted
 * per test) and proxy: whatever a test puts in the returned holder is closed
 * after it, the proxy first, and the holder emptied. Registers its own
 * afterEach, so call it at the top of the file or in a describe body.
 */
export function closedAfterEach(): { downstream?: FakeSmtpServer; proxy?: TestProxy } {
  const env: { downstream?: FakeSmtpServer; proxy?: TestProxy } = {};
  afterEach(async () => {
    await env.proxy?.close();
    await env.downstream?.close();
    env.proxy = undefined;
    env.downstream = undefined;
  });
  return env;
}
