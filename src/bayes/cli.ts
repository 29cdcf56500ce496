#!/usr/bin/env node
/**
 * prequeue-bayes: trains the bayes plugin's token database from mail the
 * admin has sorted, and shows what it knows. It opens the same store the
 * running proxy uses (from the same config file), so training takes effect
 * without a restart.
 */
import { resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { parseArgs } from 'node:util';
import { loadConfigFile, ConfigError } from '../config/load';
import { openStore } from '../store/index';
import { classify } from './classifier';
import { readMessages } from './mailbox';
import { StoreTokenDb } from './store-db';
import { tokenize } from './tokenizer';

const DEFAULT_CONFIG = resolve(__dirname, '../../../config/prequeue.yaml');

const HELP = `prequeue-bayes - train and inspect the bayes plugin's token database

Usage:
  prequeue-bayes [--config FILE] [--plugin NAME] --spam PATH [--spam PATH...] --ham PATH [...]
  prequeue-bayes [--config FILE] [--plugin NAME] --unlearn --spam PATH | --ham PATH
  prequeue-bayes [--config FILE] [--plugin NAME] --classify PATH
  prequeue-bayes [--config FILE] [--plugin NAME] --stats

  --config FILE   the prequeue configuration whose store: is used (default: ${DEFAULT_CONFIG})
  --plugin NAME   the bayes instance name as in plugins: (default: bayes)
  --spam PATH     learn these messages as spam; PATH is an mbox, a maildir, a directory or a file
  --ham PATH      learn these messages as ham
  --unlearn       take back an earlier learning of the given messages
  --classify PATH print each message's spam probability
  --stats         print how many messages and tokens were learned`;

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      plugin: { type: 'string' },
      spam: { type: 'string', multiple: true },
      ham: { type: 'string', multiple: true },
      unlearn: { type: 'boolean' },
      classify: { type: 'string', multiple: true },
      stats: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help || (!values.spam && !values.ham && !values.classify && !values.stats)) {
    console.log(HELP);
    return values.help ? 0 : 2;
  }
  const loaded = loadConfigFile(values.config ?? DEFAULT_CONFIG);
  const config = loaded.config;
  const spoolDir = config.spool.dir ? resolve(loaded.dir, config.spool.dir) : tmpdir();
  const log = { warn: (m: string) => console.error(m), info: () => undefined };
  const backend = openStore(config.store, { configDir: loaded.dir, spoolDir, log });
  const db = new StoreTokenDb(backend.namespace(values.plugin ?? 'bayes'));
  try {
    const delta = values.unlearn ? -1 : 1;
    for (const [as, paths] of [
      ['spam', values.spam ?? []],
      ['ham', values.ham ?? []],
    ] as const) {
      for (const path of paths) {
        let n = 0;
        for await (const m of readMessages(path)) {
          await db.learn([...(await tokenize(m.data))], as, delta);
          n++;
        }
        console.log(`${values.unlearn ? 'unlearned' : 'learned'} ${n} messages from ${path} as ${as}`);
      }
    }
    for (const path of values.classify ?? []) {
      for await (const m of readMessages(path)) {
        const c = await classify(db, await tokenize(m.data));
        console.log(`${m.source}\t${c ? c.probability.toFixed(4) : 'untrained'}`);
      }
    }
    if (values.stats || values.spam || values.ham) {
      const t = await db.totals();
      console.log(`trained: ${t.spam} spam, ${t.ham} ham (${backend.where})`);
    }
    return 0;
  } finally {
    await backend.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err instanceof ConfigError ? err.message : `prequeue-bayes: ${(err as Error).message}`);
      process.exit(err instanceof ConfigError ? 2 : 1);
    },
  );
}

export { main };
