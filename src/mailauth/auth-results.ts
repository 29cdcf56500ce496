/**
 * RFC 8601 Authentication-Results syntax: building the header value (folded,
 * values quoted where the grammar needs it) and reading the authserv-id of an
 * existing one.
 */

/** One method's result: `method=result (comment) reason="..." ptype.property=value ...`. */
export interface ResInfo {
  method: string;
  result: string;
  comment?: string;
  reason?: string;
  /** [`ptype.property`, value] pairs, e.g. ['smtp.mailfrom', 'user@example.org']. */
  props: [string, string][];
}

/** RFC 2045 token: printable ASCII without SP and tspecials. */
const TOKEN = /^[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+$/;
/** What pvalue accepts unquoted: a dot-atom local part (optional) @ a domain name, or a domain name. */
const ADDR_OR_DOMAIN = /^(?:(?:[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(?:\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*)?@)?[0-9A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?(?:\.[0-9A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?)*$/;
const MAX_COMMENT = 200;
const LINE = 78;

// eslint-disable-next-line no-control-regex
const controls = (s: string): string => s.replace(/[\x00-\x1f\x7f]+/g, ' ');

/** A quoted-string (RFC 5322 3.2.4): backslash and double quote escaped. */
export function quoted(s: string): string {
  return `"${controls(s).replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** A `value` (token or quoted-string). */
export function value(s: string): string {
  return TOKEN.test(s) ? s : quoted(s);
}

/** A property value: addresses and domain names may stay bare (RFC 8601 2.2 pvalue). */
export function pvalue(s: string): string {
  return ADDR_OR_DOMAIN.test(s) || TOKEN.test(s) ? s : quoted(s);
}

/** A comment, parentheses and backslashes escaped, shortened if long. */
export function comment(s: string): string {
  let c = controls(s).replace(/\s+/g, ' ').trim();
  if (c.length > MAX_COMMENT) c = c.slice(0, MAX_COMMENT - 3) + '...';
  return `(${c.replace(/[\\()]/g, (ch) => `\\${ch}`)})`;
}

function parts(r: ResInfo): string[] {
  const out = [`${r.method}=${r.result}`];
  if (r.comment) out.push(comment(r.comment));
  if (r.reason) out.push(`reason=${quoted(r.reason)}`);
  for (const [k, v] of r.props) if (v) out.push(`${k}=${pvalue(v)}`);
  return out;
}

/**
 * Joins words with spaces, folding (CRLF + `indent`) before a word that would
 * take the line past 78 characters; `used` is what the line already holds
 * (the field name). A word longer than a line stays whole.
 */
export function foldWords(words: readonly string[], used = 0, indent = ' '): string {
  let out = '';
  let len = used;
  for (const w of words) {
    if (out === '') {
      out = w;
      len += w.length;
    } else if (len + 1 + w.length > LINE) {
      out += `\r\n${indent}${w}`;
      len = indent.length + w.length;
    } else {
      out += ` ${w}`;
      len += 1 + w.length;
    }
  }
  return out;
}

/**
 * The header value: the authserv-id, then one resinfo per line, folded so no
 * line grows much past 78 characters. `none` when there is nothing to report.
 */
export function formatAuthResults(authservId: string, results: readonly ResInfo[]): string {
  const id = value(authservId);
  if (!results.length) return `${id}; none`;
  const lines: string[] = [`${id};`];
  results.forEach((r, n) => {
    const ps = parts(r);
    if (n < results.length - 1) ps[ps.length - 1] += ';';
    lines.push(' ' + foldWords(ps, 1));
  });
  return lines.join('\r\n');
}

/** Skips CFWS (whitespace and nested comments) from `i`. */
function skipCfws(s: string, i: number): number {
  for (;;) {
    while (i < s.length && /\s/.test(s[i]!)) i++;
    if (s[i] !== '(') return i;
    let depth = 0;
    for (; i < s.length; i++) {
      if (s[i] === '\\') i++;
      else if (s[i] === '(') depth++;
      else if (s[i] === ')' && --depth === 0) {
        i++;
        break;
      }
    }
  }
}

/** The authserv-id an Authentication-Results value starts with (unquoted), or undefined if it has none. */
export function authservIdOf(fieldValue: string): string | undefined {
  const s = fieldValue;
  let i = skipCfws(s, 0);
  if (s[i] === '"') {
    let out = '';
    for (i++; i < s.length && s[i] !== '"'; i++) {
      if (s[i] === '\\') i++;
      if (i < s.length) out += s[i];
    }
    return out || undefined;
  }
  const m = /^[^\s;()"]+/.exec(s.slice(i));
  return m?.[0];
}

/** Whether an Authentication-Results value claims this authserv-id (compared case-insensitively, RFC 8601 5). */
export function claims(fieldValue: string, authservId: string): boolean {
  return authservIdOf(fieldValue)?.toLowerCase() === authservId.toLowerCase();
}
