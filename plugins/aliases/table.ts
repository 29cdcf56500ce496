/**
 * Looking up and expanding recipients in a parsed aliases file.
 *
 * A recipient is looked up, most specific first, as `local@domain`, then
 * without its detail (`hjp+lists@` is looked up as `hjp@`, and the detail is
 * kept on every target: `hjp+lists@asherah...`), then `local@` (any domain),
 * then the catch-all `*@domain`, then `*@`. Targets are expanded the same way,
 * recursively, until they match no entry or map to themselves
 * (`hjp@example.com: hjp@example.com` declares a mailbox); duplicates are
 * dropped. A target that leads back to an address on its own expansion path
 * is a loop, and expansion deeper than `maxDepth` is refused, both as errors
 * rather than guesses. Options come from the entry the recipient itself
 * matched, never from the entries its targets match (as in qpsmtpd).
 */
import { AliasFileError, normalizeDomain, type AliasEntry, type AliasOptions, type ParsedAliases } from './parse';

export type Resolution =
  /** An entry matched: deliver to `targets`. */
  | { kind: 'found'; entry: AliasEntry; targets: string[]; options?: AliasOptions }
  /** In a domain the file covers, and no entry matches: no such user. */
  | { kind: 'unknown' }
  /** Not a domain the file covers: someone else decides. */
  | { kind: 'foreign' }
  /** A loop or too deep an expansion (a mistake in the file). */
  | { kind: 'error'; message: string; where: string };

export interface TableOptions {
  /** Characters that start a detail in a local part (`+`); '' for none. */
  detailSeparators: string;
  maxDepth: number;
}

interface Match {
  entry: AliasEntry;
  /** Appended to each target's local part (the recipient's detail, when the match ignored it). */
  detail: string;
}

class ExpansionError extends Error {}

function split(address: string): { local: string; domain: string } {
  const at = address.lastIndexOf('@');
  return at < 0 ? { local: address, domain: '' } : { local: address.slice(0, at), domain: normalizeDomain(address.slice(at + 1)) };
}

function key(address: string): string {
  const { local, domain } = split(address);
  return `${local.toLowerCase()}@${domain}`;
}

export class AliasTable {
  constructor(
    private readonly parsed: ParsedAliases,
    private readonly opts: TableOptions,
  ) {}

  get size(): number {
    return this.parsed.entries.size;
  }

  covers(domain: string): boolean {
    return this.parsed.domains.has(normalizeDomain(domain));
  }

  private detailAt(local: string): number {
    if (!this.opts.detailSeparators) return -1;
    for (let i = 1; i < local.length; i++) if (this.opts.detailSeparators.includes(local[i])) return i;
    return -1;
  }

  /** The entry an address matches, most specific first; undefined if none. */
  lookup(address: string): Match | undefined {
    const { local, domain } = split(address);
    const lower = local.toLowerCase();
    const cut = this.detailAt(local);
    const probes: [string, string][] = [];
    for (const d of domain ? [domain, ''] : ['']) {
      probes.push([`${lower}@${d}`, '']);
      if (cut > 0) probes.push([`${lower.slice(0, cut)}@${d}`, local.slice(cut)]);
    }
    if (domain) probes.push([`*@${domain}`, '']);
    probes.push(['*@', '']);
    for (const [k, detail] of probes) {
      const entry = this.parsed.entries.get(k);
      if (entry) return { entry, detail };
    }
    return undefined;
  }

  private targetsOf(m: Match): string[] {
    if (!m.detail) return m.entry.targets;
    return m.entry.targets.map((t) => {
      const at = t.lastIndexOf('@');
      return `${t.slice(0, at)}${m.detail}${t.slice(at)}`;
    });
  }

  resolve(address: string): Resolution {
    const first = this.lookup(address);
    if (!first) return this.covers(split(address).domain) ? { kind: 'unknown' } : { kind: 'foreign' };
    const out: string[] = [];
    const seen = new Set<string>();
    const add = (t: string): void => {
      const k = key(t);
      if (!seen.has(k)) {
        seen.add(k);
        out.push(t);
      }
    };
    const expand = (match: Match, path: string[]): void => {
      for (const t of this.targetsOf(match)) {
        const k = key(t);
        if (k === path[path.length - 1]) {
          add(t);
          continue;
        }
        if (path.includes(k)) throw new ExpansionError(`alias loop: ${[...path, k].join(' -> ')}`);
        const next = this.lookup(t);
        if (!next) {
          add(t);
          continue;
        }
        if (path.length >= this.opts.maxDepth) {
          throw new ExpansionError(`alias expansion of ${path[0]} deeper than ${this.opts.maxDepth}: ${[...path, k].join(' -> ')}`);
        }
        expand(next, [...path, k]);
      }
    };
    try {
      expand(first, [key(address)]);
    } catch (err) {
      if (err instanceof ExpansionError) return { kind: 'error', message: err.message, where: first.entry.where };
      throw err;
    }
    return { kind: 'found', entry: first.entry, targets: out, ...(first.entry.options ? { options: first.entry.options } : {}) };
  }

  /**
   * Expands every entry naming a definite address, so that a loop or too deep
   * a chain is reported when the file is loaded (with the line to fix), not
   * when mail arrives. Catch-alls are checked as mail arrives.
   */
  check(): void {
    const problems = new Set<string>();
    for (const [k, entry] of this.parsed.entries) {
      if (k.startsWith('*@')) continue;
      const r = this.resolve(k);
      if (r.kind === 'error') problems.add(`${entry.where}: ${r.message}`);
    }
    if (problems.size) throw new AliasFileError([...problems]);
  }
}
