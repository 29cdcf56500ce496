#!/usr/bin/env node
// First: it holds the young generation's growth while the other modules load (see heap.ts).
import { governHeap } from './heap';
import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile, type Overrides } from './config/load';
import type { Config } from './config/schema';
import { createLogger, MemoryLogger, type Logger } from './log';
import { buildRuntime, closeRuntime } from './runtime';
import { ProxyServer } from './server';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const VERSION: string = require('../../package.json').version;

/** The embedded defaults: the config shipped with the package. */
export const DEFAULT_CONFIG = resolve(__dirname, '../../config/prequeue.yaml');

const HELP = `prequeue ${VERSION} - before-queue SMTP proxy with a plugin chain

Usage: prequeue [options]

  --config FILE          configuration file (default: ${DEFAULT_CONFIG})
  --listen HOST:PORT     listen here instead of the file's "listen"
  --downstream HOST:PORT relay here instead of the file's "downstream.address"
  --check                validate the configuration, print the plugin order per hook, exit
  --version              print the version
  --help                 this text

Signals: SIGHUP reloads the configuration and plugins (a bad new one is reported
and the running one kept); SIGTERM stops accepting and lets transactions finish.`;

interface CliOptions {
  file: string;
  overrides: Overrides;
}

function parse(argv: string[]): { opts: CliOptions; mode: 'run' | 'check' | 'version' | 'help' } {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      listen: { type: 'string' },
      downstream: { type: 'string' },
      check: { type: 'boolean' },
      version: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  const mode = values.help ? 'help' : values.version ? 'version' : values.check ? 'check' : 'run';
  return {
    mode,
    opts: { file: values.config ?? DEFAULT_CONFIG, overrides: { listen: values.listen, downstream: values.downstream } },
  };
}

async function check(opts: CliOptions): Promise<number> {
  const loaded = loadConfigFile(opts.file, opts.overrides);
  const rt = await buildRuntime(loaded, new MemoryLogger('error'));
  const c = loaded.config;
  console.log(`${opts.file}: OK`);
  console.log(`mode ${c.mode}, listen ${c.listen.host}:${c.listen.port}, downstream ${c.downstream.address.host}:${c.downstream.address.port}`);
  console.log(rt.chain.describe());
  await closeRuntime(rt);
  return 0;
}

/** The heap governor's settings from the config's `memory:` (at start and at every reload). */
function governHeapBy(c: Config): void {
  governHeap({ semiSpaceMb: c.memory.semi_space_mb, oldGrowthPercent: c.memory.old_space_growth_percent });
}

async function serve(opts: CliOptions, log: Logger): Promise<void> {
  const loaded = loadConfigFile(opts.file, opts.overrides);
  const server = new ProxyServer(await buildRuntime(loaded, log));
  const addr = await server.listen();
  const c = loaded.config;
  governHeapBy(c);
  log.info(
    `prequeue ${VERSION} listening on ${addr.address}:${addr.port} (${c.mode} mode), downstream ${c.downstream.address.host}:${c.downstream.address.port}`,
    { plugins: loaded.plugins.map((p) => p.id).join(',') },
  );
  let reloading = Promise.resolve();
  const reload = (): void => {
    reloading = reloading.then(async () => {
      try {
        const next = loadConfigFile(opts.file, opts.overrides);
        const nextLog = createLogger(next.config.log, cluster.isWorker ? { worker: cluster.worker?.id } : {});
        server.reload(await buildRuntime(next, nextLog));
        governHeapBy(next.config);
        nextLog.info(`configuration reloaded from ${opts.file}`, { plugins: next.plugins.map((p) => p.id).join(',') });
      } catch (err) {
        log.error(`reload failed, keeping the running configuration: ${(err as Error).message}`);
      }
    });
  };
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    log.info(`shutting down: waiting up to ${c.shutdown_timeout} s for transactions in flight`);
    void server.close().then(() => {
      log.info('stopped');
      process.exit(0);
    });
  };
  // A stray rejection must not take every session down with it (Node ends the process by default).
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${(err as Error)?.stack ?? err}`));
  process.on('SIGHUP', reload);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('message', (m: unknown) => {
    if (m === 'reload') reload();
    if (m === 'stop') stop();
  });
}

/** Workers share the listen socket (cluster); the primary only relays signals and restarts crashed workers. */
function supervise(count: number, log: Logger): void {
  let stopping = false;
  const fork = (): void => {
    cluster.fork();
  };
  for (let i = 0; i < count; i++) fork();
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    log.error(`worker ${worker.id} exited (${signal ?? code}); starting another`);
    setTimeout(fork, 1000);
  });
  const each = (msg: string): void => {
    for (const w of Object.values(cluster.workers ?? {})) w?.send(msg);
  };
  process.on('SIGHUP', () => each('reload'));
  const stop = (): void => {
    stopping = true;
    each('stop');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

export async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    console.error(`prequeue: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { opts, mode } = parsed;
  if (mode === 'help') {
    console.log(HELP);
    return 0;
  }
  if (mode === 'version') {
    console.log(VERSION);
    return 0;
  }
  try {
    if (mode === 'check') return await check(opts);
    const loaded = loadConfigFile(opts.file, opts.overrides);
    const c = loaded.config;
    const workers = c.workers === 'auto' ? availableParallelism() : c.workers;
    const log = createLogger(c.log, cluster.isWorker ? { worker: cluster.worker?.id } : {});
    if (cluster.isPrimary && workers > 1) {
      log.info(`starting ${workers} workers`);
      supervise(workers, log);
      return -1;
    }
    await serve(opts, log);
    return -1;
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`prequeue: configuration error\n${err.message}`);
      return 1;
    }
    console.error(`prequeue: ${(err as Error).stack ?? err}`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    // -1: a server is running; the process lives on.
    if (code >= 0) process.exit(code);
  });
}
