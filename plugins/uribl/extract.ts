/**
 * Finding the hosts and IP addresses a message body points to, for uribl.
 *
 * Text is what mailparser decoded (transfer encodings and charsets undone);
 * HTML has its character references decoded here, since spammers write
 * `spam&#46;example` to slip past exactly this. URLs go through the WHATWG
 * URL parser, which does what a browser does with hosts: percent-decoding,
 * IDNA to punycode, and decimal/hex/octal IPv4 forms to dotted quads
 * (`http://3221225985/` is 192.0.2.1).
 */
import { isIP } from 'node:net';
import { hasKnownSuffix, normaliseHost } from '../../src/dns/domain';
import { isHostname } from '../../src/dns/names';

/** Hosts and IPs in order of first appearance, without duplicates. */
export class Found {
  readonly hosts = new Set<string>();
  readonly ips = new Set<string>();

  add(raw: string): void {
    const h = normaliseHost(raw.replace(/^\[|\]$/g, ''));
    if (!h) return;
    if (isIP(h)) this.ips.add(h);
    else if (isHostname(h) && h.includes('.')) this.hosts.add(h);
  }
}

const NAMED: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
  nbsp: ' ',
  period: '.',
  sol: '/',
  colon: ':',
  commat: '@',
  num: '#',
  quest: '?',
  equals: '=',
  lowbar: '_',
  hyphen: '-',
  dash: '-',
};

/** Numeric character references and the named ones that can spell a URL. */
export function decodeEntities(html: string): string {
  return html.replace(/&(?:#(\d{1,7})|#x([0-9a-f]{1,6})|([a-z]+));?/gi, (m, dec: string | undefined, hex: string | undefined, name: string | undefined) => {
    if (dec !== undefined || hex !== undefined) {
      const cp = dec !== undefined ? Number(dec) : parseInt(hex!, 16);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : m;
    }
    return NAMED[name!.toLowerCase()] ?? m;
  });
}

/** URLs with a scheme; the host is all that matters, so the path may run on. */
const SCHEME_URL = /\b(?:https?|ftps?):[\\/]{1,2}[^\s<>"'`]+/gi;
/** `www.example.com/...` without a scheme. */
const WWW = /(?<![\w.\/@-])www\d{0,3}\.[a-z0-9][a-z0-9.-]*/gi;
const MAILTO = /\bmailto:([^\s<>"'?&]+)/gi;
/** The last label must be letters: Content-IDs (`image001.png@01D5A1B2.C3D4E5F0`) look like addresses too. */
const EMAIL = /[\w.+-]+@((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})(?![\w-])/gi;
/** Protocol-relative links in attributes (`href="//example.com/x"`). */
const RELATIVE = /\b(?:href|src|action|background)\s*=\s*["']?\s*\/\/([^\s"'<>\/?#]+)/gi;
/** Domain-looking words; taken only when the suffix is a real TLD, so `file.txt` stays out. */
const BARE = /(?<![\w@.\/:-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})(?![\w-]|\.\w)/gi;

function urlHost(candidate: string): string | undefined {
  try {
    return new URL(candidate.replace(/[.,;:!?)'"]+$/, '')).hostname;
  } catch {
    return undefined;
  }
}

function emailHost(address: string): string | undefined {
  const at = address.lastIndexOf('@');
  return at < 0 ? undefined : address.slice(at + 1);
}

/**
 * Adds what `text` links to, in order of appearance: URLs, www. names,
 * mailto: and e-mail addresses, and with `bareDomains` any word that is a
 * domain under a known public suffix.
 */
export function extractFrom(text: string, found: Found, bareDomains: boolean): void {
  const hits: [at: number, host: string | undefined][] = [];
  for (const m of text.matchAll(SCHEME_URL)) hits.push([m.index!, urlHost(m[0])]);
  for (const m of text.matchAll(WWW)) hits.push([m.index!, urlHost(`http://${m[0]}`)]);
  for (const m of text.matchAll(RELATIVE)) hits.push([m.index!, urlHost(`http://${m[1]}`)]);
  for (const m of text.matchAll(MAILTO)) {
    let addr = m[1]!;
    try {
      addr = decodeURIComponent(addr);
    } catch {
      // keep it as written
    }
    hits.push([m.index!, emailHost(addr)]);
  }
  for (const m of text.matchAll(EMAIL)) hits.push([m.index!, m[1]]);
  if (bareDomains) {
    for (const m of text.matchAll(BARE)) if (hasKnownSuffix(m[1]!)) hits.push([m.index!, m[1]]);
  }
  hits.sort((a, b) => a[0] - b[0]);
  for (const [, host] of hits) if (host) found.add(host);
}

export function extractFromHtml(html: string, found: Found, bareDomains: boolean): void {
  // Tags are left in: attribute values are where the links are, and text between tags is still text.
  extractFrom(decodeEntities(html), found, bareDomains);
}
