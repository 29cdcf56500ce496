/**
 * The aliases file, in the format of Peter J. Holzer's qpsmtpd aliases
 * plugins: one `pattern: targets (options)` a line.
 *
 *   hjp,peter.holzer@wsr.ac.at,wifo.at: hjp@asherah.wsr.ac.at (denysoft_greylist, spamassassin_reject_threshold=10)
 *
 * The pattern is a list of local parts, one `@`, and a list of domains; it
 * stands for every combination (here hjp and peter.holzer, each at wsr.ac.at
 * and at wifo.at): the single `@` decides which side an item is on, so
 * `peter.holzer` is a local part and `wifo.at` a domain. Nothing after the `@`
 * (`postmaster@`) means any domain, including none (`<postmaster>`); `*` as a
 * local part is the catch-all of its domains. Targets are complete addresses,
 * comma-separated. The options, in parentheses at the end of the line (or
 * right after the pattern), are flags and `key=value` pairs, keys read in
 * lower case. Whitespace around items does not matter; `#` starts a comment
 * (at the start of a line or after whitespace).
 */

export type AliasOptions = Record<string, string | true>;

export interface AliasEntry {
  /** The pattern as written, for results and logs. */
  pattern: string;
  /** `file:line` of the definition. */
  where: string;
  /** Complete addresses, as written (case kept), without angle brackets. */
  targets: string[];
  options?: AliasOptions;
}

export interface ParsedAliases {
  /** By key: `local@domain`, `local@` (any domain), `*@domain`, `*@` (everything), all lower case. */
  entries: Map<string, AliasEntry>;
  /** Domains a pattern names: an address there that no entry matches does not exist. */
  domains: Set<string>;
}

export class AliasFileError extends Error {
  constructor(readonly problems: string[]) {
    const shown = problems.slice(0, 20);
    super(shown.join('\n') + (problems.length > shown.length ? `\n(and ${problems.length - shown.length} more)` : ''));
  }
}

/** Characters no unquoted local part or domain contains, and that would make the line ambiguous. */
const BAD_CHARS = /[\s<>()[\],:;@"\\]/;
const OPTION = /^([A-Za-z0-9_.-]+)(?:\s*=\s*(.*))?$/;

export function normalizeDomain(domain: string): string {
  return domain.trim().toLowerCase().replace(/\.$/, '');
}

function stripComment(line: string): string {
  const m = /(?:^|\s)#/.exec(line);
  return m ? line.slice(0, m.index) : line;
}

/** The colon between pattern and targets: the first one outside the options' parentheses. */
function separatorColon(body: string): number {
  let depth = 0;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === '(') depth++;
    else if (c === ')') depth = Math.max(0, depth - 1);
    else if (c === ':' && depth === 0) return i;
  }
  return -1;
}

/** A trailing `( ... )` group: [text before it, the group's content]. */
function takeOptions(text: string): [string, string | undefined] {
  const m = /\(([^()]*)\)\s*$/.exec(text);
  return m ? [text.slice(0, m.index), m[1]] : [text, undefined];
}

function parseOptions(text: string, fail: (msg: string) => void): AliasOptions {
  const options: AliasOptions = {};
  for (const item of text.split(',').map((s) => s.trim())) {
    const m = OPTION.exec(item);
    if (!m) {
      fail(item ? `bad option "${item}" (expected flag or key=value)` : 'empty option');
      continue;
    }
    const key = m[1].toLowerCase();
    if (key in options) fail(`option ${key} given twice`);
    const value = m[2]?.trim();
    if (value === '') fail(`option ${key} has an empty value`);
    options[key] = value === undefined ? true : value;
  }
  return options;
}

function parseTarget(item: string, fail: (msg: string) => void): string | undefined {
  const t = item.replace(/^<(.*)>$/, '$1').trim();
  const at = t.lastIndexOf('@');
  if (!t) {
    fail('empty target');
  } else if (at <= 0 || at === t.length - 1 || BAD_CHARS.test(t.slice(0, at)) || BAD_CHARS.test(t.slice(at + 1))) {
    fail(`target "${item}" is not a complete address (local@domain)`);
  } else {
    return t;
  }
  return undefined;
}

export function parseAliases(text: string, file: string): ParsedAliases {
  const entries = new Map<string, AliasEntry>();
  const domains = new Set<string>();
  const problems: string[] = [];

  text.split(/\r?\n/).forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    const body = stripComment(raw).trim();
    if (!body) return;
    let failed = false;
    const fail = (msg: string): void => {
      failed = true;
      problems.push(`${where}: ${msg}`);
    };

    const colon = separatorColon(body);
    if (colon < 0) {
      fail('expected "local parts@domains: targets"');
      return;
    }
    const [left, leftOptions] = takeOptions(body.slice(0, colon));
    const [right, rightOptions] = takeOptions(body.slice(colon + 1));
    if (leftOptions !== undefined && rightOptions !== undefined) fail('options given twice');
    if (/[()]/.test(left) || /[()]/.test(right)) fail('parentheses only around the options, at the end of the line');
    const optionText = rightOptions ?? leftOptions;
    const options = optionText === undefined ? undefined : parseOptions(optionText, fail);

    const pattern = left.trim();
    const parts = pattern.split('@');
    if (parts.length !== 2) {
      fail(
        parts.length === 1
          ? `pattern "${pattern}" has no @ (write "${pattern || 'name'}@" for any domain, "${pattern || 'name'}@example.com" for one)`
          : `pattern "${pattern}" has more than one @: list the local parts before it and the domains after it`,
      );
      return;
    }
    const locals = parts[0].split(',').map((s) => s.trim());
    for (const l of locals) {
      if (!l) fail(`empty local part in "${pattern}"`);
      else if (BAD_CHARS.test(l)) fail(`bad local part "${l}"`);
    }
    const domainText = parts[1].trim();
    const doms = domainText === '' ? [''] : domainText.split(',').map(normalizeDomain);
    if (domainText !== '') {
      for (const d of doms) {
        if (!d) fail(`empty domain in "${pattern}" (a pattern for any domain has nothing after the @)`);
        else if (BAD_CHARS.test(d) || d.startsWith('.')) fail(`bad domain "${d}"`);
      }
    }

    const targets: string[] = [];
    for (const item of right.split(',').map((s) => s.trim())) {
      const t = parseTarget(item, fail);
      if (t && !targets.some((x) => x.toLowerCase() === t.toLowerCase())) targets.push(t);
    }
    if (failed) return;

    const entry: AliasEntry = { pattern, where, targets, ...(options ? { options } : {}) };
    for (const l of locals) {
      for (const d of doms) {
        const key = `${l.toLowerCase()}@${d}`;
        const earlier = entries.get(key);
        if (earlier) {
          problems.push(`${where}: ${key} is already defined at ${earlier.where}`);
          continue;
        }
        entries.set(key, entry);
        if (d) domains.add(d);
      }
    }
  });

  if (problems.length) throw new AliasFileError(problems);
  return { entries, domains };
}
