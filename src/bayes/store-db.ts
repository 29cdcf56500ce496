import type { KvStore } from '../store/types';
import type { TokenCounts, TokenDb, Totals } from './classifier';

/**
 * Token counts in the shared store (SQLite or Redis), so that training done
 * with the CLI and auto-learning done by any prequeue instance feed one
 * database. Two counters per token (`s:` spam, `h:` ham) and two totals;
 * every lookup is one mget and every learning one batch of increments.
 */
export class StoreTokenDb implements TokenDb {
  constructor(
    private readonly store: KvStore,
    /** Tokens not seen in training for this long are forgotten (seconds; undefined: never). */
    private readonly tokenTtl?: number,
  ) {}

  async totals(): Promise<Totals> {
    const [spam, ham] = await this.store.mget(['n:spam', 'n:ham']);
    return { spam: Number(spam ?? 0), ham: Number(ham ?? 0) };
  }

  async counts(tokens: readonly string[]): Promise<Map<string, TokenCounts>> {
    const keys: string[] = [];
    for (const t of tokens) keys.push(`s:${t}`, `h:${t}`);
    const values = await this.store.mget(keys);
    const out = new Map<string, TokenCounts>();
    tokens.forEach((t, i) => {
      const spam = Number(values[2 * i] ?? 0);
      const ham = Number(values[2 * i + 1] ?? 0);
      if (spam > 0 || ham > 0) out.set(t, { spam: Math.max(0, spam), ham: Math.max(0, ham) });
    });
    return out;
  }

  async learn(tokens: readonly string[], as: 'spam' | 'ham', delta: 1 | -1 = 1): Promise<void> {
    const p = as === 'spam' ? 's:' : 'h:';
    const increments: [string, number][] = [...new Set(tokens)].map((t) => [p + t, delta]);
    if (increments.length) await this.store.mincrBy(increments, this.tokenTtl);
    // Totals never expire: they describe the whole training history.
    await this.store.incrBy(`n:${as}`, delta);
  }
}
