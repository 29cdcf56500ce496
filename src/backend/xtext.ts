/**
 * xtext (RFC 3461 section 4) and the Postfix XFORWARD / XCLIENT command lines.
 *
 * Postfix documents both commands in XFORWARD_README / XCLIENT_README: attribute values are xtext,
 * an IPv6 address carries an `IPV6:` prefix and no brackets, a value is at most 255 characters,
 * and no command line may exceed the 512-character SMTP limit (CRLF included).
 */

const HEX = '0123456789ABCDEF';

/** Postfix refuses longer attribute values (XFORWARD_README note 1). */
export const MAX_ATTR_VALUE = 255;

function encodeByte(b: number): string {
  return '+' + HEX[b >> 4] + HEX[b & 15];
}

function needsEncoding(b: number): boolean {
  // 0x2b '+' and 0x3d '=' are the xtext escape and the attribute separator.
  return b < 0x21 || b > 0x7e || b === 0x2b || b === 0x3d;
}

/** xtext-encode one code point (several `+XX` for a non-ASCII one: xtext is defined on octets). */
function encodeCodePoint(cp: string): string {
  if (cp.length === 1) {
    const c = cp.charCodeAt(0);
    if (c < 0x80) return needsEncoding(c) ? encodeByte(c) : cp;
  }
  let out = '';
  for (const b of Buffer.from(cp, 'utf8')) out += encodeByte(b);
  return out;
}

export function encodeXtext(s: string): string {
  // Fast path: the common case (host names, addresses, numbers) has nothing to escape.
  if (/^[!-*,-<>-~]*$/.test(s)) return s;
  let out = '';
  for (const cp of s) out += encodeCodePoint(cp);
  return out;
}

/**
 * Lenient on purpose (the input comes from peers): a `+` not followed by two hex digits is kept
 * literally, lower-case hex is accepted, and the octets are read as UTF-8.
 */
export function decodeXtext(s: string): string {
  if (!s.includes('+')) return s;
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2b && /^[0-9A-Fa-f]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (c < 0x80) {
      bytes.push(c);
    } else {
      // Not valid xtext, but keep the character rather than lose it.
      for (const b of Buffer.from(String.fromCodePoint(s.codePointAt(i)!), 'utf8')) bytes.push(b);
      if (c >= 0xd800 && c <= 0xdbff) i++;
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

const ADDRESS_ATTRS = new Set(['ADDR', 'DESTADDR']);
const SPECIAL_VALUE = /^\[(UNAVAILABLE|TEMPUNAVAIL)\]$/i;

/** Postfix's address syntax: no brackets, `IPV6:` prefix, and plain IPv4 instead of a v4-mapped IPv6 address. */
export function postfixAddress(value: string): string {
  if (SPECIAL_VALUE.test(value)) return value;
  let v = value.trim();
  if (v.startsWith('[') && v.endsWith(']')) v = v.slice(1, -1);
  if (/^ipv6:/i.test(v)) v = v.slice(5);
  // Node reports IPv4 peers of a dual-stack listener as ::ffff:a.b.c.d; Postfix logs them as IPv4.
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(v);
  if (mapped) return mapped[1];
  return v.includes(':') ? 'IPV6:' + v : v;
}

/** Encoded pieces, one per code point, so a value can be shortened without splitting an escape or a UTF-8 sequence. */
function encodedPieces(value: string): string[] {
  const pieces: string[] = [];
  let n = 0;
  for (const cp of value) {
    if (n++ >= MAX_ATTR_VALUE) break;
    pieces.push(encodeCodePoint(cp));
  }
  return pieces;
}

function attrText(key: string, pieces: string[], maxChars: number): string {
  let out = key + '=';
  for (const p of pieces) {
    if (out.length + p.length > maxChars) break;
    out += p;
  }
  return out;
}

/**
 * The command lines (without CRLF) that carry `attrs` with `verb`.
 *
 * - Only attributes named in `advertised` (the EHLO keyword's parameters, any case) are sent.
 * - An attribute whose value is `undefined` is left out; the caller passes `'[UNAVAILABLE]'` when it
 *   wants to say so. An empty string is sent as `[UNAVAILABLE]` (Postfix rejects `NAME=`).
 * - Values are cut to 255 characters, then xtext-encoded; ADDR/DESTADDR get Postfix's address form.
 * - Attributes are packed into as few lines as possible with every line + CRLF <= `maxLen`; a single
 *   attribute that cannot fit even alone is shortened.
 * - For XCLIENT the server may stop authorising further XCLIENT commands once ADDR or NAME changed
 *   (XCLIENT_README note 1), so NAME and ADDR go last and the packing fills the last line first.
 */
export function buildProxyCommands(
  verb: 'XFORWARD' | 'XCLIENT',
  attrs: Record<string, string | undefined>,
  advertised: string[],
  maxLen = 512,
): string[] {
  const allowed = new Set(advertised.map((a) => a.toUpperCase()));
  let entries: Array<[string, string]> = [];
  for (const [rawKey, rawValue] of Object.entries(attrs)) {
    const key = rawKey.toUpperCase();
    if (rawValue === undefined || !allowed.has(key)) continue;
    let value = rawValue === '' ? '[UNAVAILABLE]' : rawValue;
    if (ADDRESS_ATTRS.has(key)) value = postfixAddress(value);
    entries.push([key, value]);
  }
  if (!entries.length) return [];
  if (verb === 'XCLIENT') {
    const rank = (k: string): number => (k === 'ADDR' ? 2 : k === 'NAME' ? 1 : 0);
    entries = entries
      .map((e, i) => ({ e, i }))
      .sort((a, b) => rank(a.e[0]) - rank(b.e[0]) || a.i - b.i)
      .map((x) => x.e);
  }

  const budget = maxLen - 2 - verb.length; // the CRLF and the verb
  const texts = entries.map(([k, v]) => attrText(k, encodedPieces(v), budget - 1));

  const lines: string[][] = [];
  let current: string[] = [];
  let used = 0;
  const fill = (t: string, add: (line: string[], t: string) => void): void => {
    if (current.length && used + 1 + t.length > budget) {
      lines.push(current);
      current = [];
      used = 0;
    }
    add(current, t);
    used += 1 + t.length;
  };
  if (verb === 'XCLIENT') {
    for (let i = texts.length - 1; i >= 0; i--) fill(texts[i], (line, t) => line.unshift(t));
    lines.push(current);
    lines.reverse();
  } else {
    for (const t of texts) fill(t, (line, t) => line.push(t));
    lines.push(current);
  }
  return lines.map((parts) => verb + ' ' + parts.join(' '));
}
