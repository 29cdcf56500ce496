/**
 * Per-plugin results for a connection or a transaction, in the spirit of
 * haraka-results: each plugin records what it found (pass, fail, skip, error)
 * with details, other plugins read them (karma, dmarc), and the core logs them
 * once per transaction.
 */
export type ResultKind = 'pass' | 'fail' | 'skip' | 'err' | 'msg';

export interface PluginResult {
  pass: string[];
  fail: string[];
  skip: string[];
  err: string[];
  msg: string[];
  /** Anything else the plugin wants to keep (scores, names, counts). */
  details: Record<string, unknown>;
}

export type ResultInput = Partial<Record<ResultKind, string | string[]>> & { [detail: string]: unknown };

const KINDS: ResultKind[] = ['pass', 'fail', 'skip', 'err', 'msg'];

function empty(): PluginResult {
  return { pass: [], fail: [], skip: [], err: [], msg: [], details: {} };
}

export class Results {
  private readonly byPlugin = new Map<string, PluginResult>();

  add(plugin: string, input: ResultInput): void {
    let r = this.byPlugin.get(plugin);
    if (!r) {
      r = empty();
      this.byPlugin.set(plugin, r);
    }
    for (const [key, value] of Object.entries(input)) {
      if ((KINDS as string[]).includes(key)) {
        const list = r[key as ResultKind];
        for (const v of Array.isArray(value) ? value : [value]) list.push(String(v));
      } else {
        r.details[key] = value;
      }
    }
  }

  get(plugin: string): Readonly<PluginResult> | undefined {
    return this.byPlugin.get(plugin);
  }

  has(plugin: string, kind: ResultKind, match?: string | RegExp): boolean {
    const r = this.byPlugin.get(plugin);
    if (!r) return false;
    const list = r[kind];
    if (match === undefined) return list.length > 0;
    return list.some((v) => (typeof match === 'string' ? v === match : match.test(v)));
  }

  plugins(): string[] {
    return [...this.byPlugin.keys()];
  }

  /** Compact form for the transaction log line: `plugin: pass=a,b fail=c`. */
  summary(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [name, r] of this.byPlugin) {
      const parts: string[] = [];
      for (const k of KINDS) if (r[k].length) parts.push(`${k}=${r[k].join(',')}`);
      out[name] = parts.join(' ');
    }
    return out;
  }

  /**
   * summary() of connection and transaction results together: a plugin with
   * results in both (earlytalker at connect and at DATA) shows both, the
   * connection's first.
   */
  static mergedSummary(conn: Results, txn: Results): Record<string, string> {
    const out = conn.summary();
    for (const [name, text] of Object.entries(txn.summary())) out[name] = out[name] && text ? `${out[name]}; ${text}` : out[name] || text;
    return out;
  }

  clear(): void {
    this.byPlugin.clear();
  }
}
