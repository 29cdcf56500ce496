/**
 * A Bayesian spam classifier in the SpamBayes/dspam tradition: Gary
 * Robinson's per-token probability with a prior, combined with Fisher's
 * chi-square method. The result is near 0 for ham, near 1 for spam, and
 * near 0.5 when the evidence is weak or contradictory ("unsure"), which is
 * what lets a mail admin reject only at a high probability.
 */

export interface TokenCounts {
  spam: number;
  ham: number;
}

/** Messages trained so far, per class. */
export interface Totals {
  spam: number;
  ham: number;
}

/** Where token counts live (memory for tests and the benchmark; the shared store in production). */
export interface TokenDb {
  totals(): Promise<Totals>;
  /** Counts of the given tokens (tokens never seen may be left out). */
  counts(tokens: readonly string[]): Promise<Map<string, TokenCounts>>;
  /** Adds (delta 1) or removes (delta -1, to unlearn) one message's tokens for a class. */
  learn(tokens: readonly string[], as: 'spam' | 'ham', delta?: 1 | -1): Promise<void>;
}

export interface ClassifierOptions {
  /** Robinson's s: how strongly the prior x weighs against little evidence. */
  strength?: number;
  /** Robinson's x: the probability assumed for a token never seen. */
  prior?: number;
  /** Tokens whose probability is closer than this to 0.5 are ignored. */
  minDeviation?: number;
  /** The most extreme tokens used at most. */
  maxDiscriminators?: number;
  /** Below this many trained messages of either class there is no verdict. */
  minTrained?: number;
}

export const CLASSIFIER_DEFAULTS: Required<ClassifierOptions> = {
  strength: 0.45,
  prior: 0.5,
  minDeviation: 0.1,
  maxDiscriminators: 150,
  minTrained: 20,
};

export interface Classification {
  /** 0 (ham) .. 1 (spam). */
  probability: number;
  /** The tokens that decided, most extreme first, with their probabilities. */
  clues: [string, number][];
}

/** Robinson's f(w): the token's spam probability, pulled toward the prior when seen rarely. */
export function tokenProbability(c: TokenCounts, totals: Totals, o: Required<ClassifierOptions>): number {
  const spamRatio = totals.spam ? Math.min(1, c.spam / totals.spam) : 0;
  const hamRatio = totals.ham ? Math.min(1, c.ham / totals.ham) : 0;
  if (spamRatio + hamRatio === 0) return o.prior;
  const p = spamRatio / (spamRatio + hamRatio);
  const n = c.spam + c.ham;
  return (o.strength * o.prior + n * p) / (o.strength + n);
}

/**
 * P(chi-square with v degrees of freedom >= x2), v even. Computed in log
 * space: with hundreds of clues exp(-x2/2) underflows to 0 long before the
 * sum stops mattering.
 */
export function chi2Q(x2: number, v: number): number {
  const m = x2 / 2;
  if (m <= 0) return 1;
  const logM = Math.log(m);
  let logTerm = -m;
  let logSum = logTerm;
  for (let i = 1; i < v / 2; i++) {
    logTerm += logM - Math.log(i);
    const hi = Math.max(logSum, logTerm);
    logSum = hi + Math.log(Math.exp(logSum - hi) + Math.exp(logTerm - hi));
  }
  return Math.min(1, Math.exp(logSum));
}

/** Fisher's combination of token probabilities into one score. */
export function fisherCombine(probs: readonly number[]): number {
  if (!probs.length) return 0.5;
  let lnSpam = 0;
  let lnHam = 0;
  for (const f of probs) {
    const p = Math.min(Math.max(f, 1e-6), 1 - 1e-6);
    lnHam += Math.log(p);
    lnSpam += Math.log(1 - p);
  }
  const n = probs.length;
  // H near 1: the tokens do not look like ham (their f are high); S likewise for spam.
  const H = chi2Q(-2 * lnHam, 2 * n);
  const S = chi2Q(-2 * lnSpam, 2 * n);
  return (1 + H - S) / 2;
}

export async function classify(db: TokenDb, tokens: Iterable<string>, options: ClassifierOptions = {}): Promise<Classification | undefined> {
  const o = { ...CLASSIFIER_DEFAULTS, ...options };
  const totals = await db.totals();
  if (totals.spam < o.minTrained || totals.ham < o.minTrained) return undefined;
  const list = [...new Set(tokens)];
  const counts = await db.counts(list);
  const scored: [string, number][] = [];
  for (const t of list) {
    const c = counts.get(t);
    if (!c) continue;
    const f = tokenProbability(c, totals, o);
    if (Math.abs(f - 0.5) >= o.minDeviation) scored.push([t, f]);
  }
  scored.sort((a, b) => Math.abs(b[1] - 0.5) - Math.abs(a[1] - 0.5));
  const clues = scored.slice(0, o.maxDiscriminators);
  return { probability: fisherCombine(clues.map(([, f]) => f)), clues };
}

/** Token counts in a Map: for tests, the accuracy benchmark and one-shot training. */
export class MemoryTokenDb implements TokenDb {
  private readonly tokens = new Map<string, TokenCounts>();
  private readonly total: Totals = { spam: 0, ham: 0 };

  async totals(): Promise<Totals> {
    return { ...this.total };
  }

  async counts(tokens: readonly string[]): Promise<Map<string, TokenCounts>> {
    const out = new Map<string, TokenCounts>();
    for (const t of tokens) {
      const c = this.tokens.get(t);
      if (c) out.set(t, { ...c });
    }
    return out;
  }

  async learn(tokens: readonly string[], as: 'spam' | 'ham', delta: 1 | -1 = 1): Promise<void> {
    this.total[as] = Math.max(0, this.total[as] + delta);
    for (const t of new Set(tokens)) {
      const c = this.tokens.get(t) ?? { spam: 0, ham: 0 };
      c[as] = Math.max(0, c[as] + delta);
      if (c.spam || c.ham) this.tokens.set(t, c);
      else this.tokens.delete(t);
    }
  }

  get size(): number {
    return this.tokens.size;
  }
}
