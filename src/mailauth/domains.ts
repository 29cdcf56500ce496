/**
 * Domain helpers for DMARC and friends: the author (From) domains of a
 * message, organisational domains from the Public Suffix List (tldts, the copy
 * mailauth itself uses), and RFC 7489 identifier alignment.
 */
import { domainToASCII } from 'node:url';
import addressparser from 'nodemailer/lib/addressparser';
import { getDomain } from 'tldts';

const PSL_OPTIONS = { allowIcannDomains: true, allowPrivateDomains: true };

/** Lower case, no trailing dot, A-labels (punycode) for internationalised names; '' if not a domain. */
export function normalizeDomain(domain: string): string {
  const d = domain.trim().replace(/\.$/, '').toLowerCase();
  if (!d) return '';
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(d) ? d : domainToASCII(d);
}

/** The organisational domain (RFC 7489 3.2): one label below the longest public suffix; the domain itself if none is known. */
export function organizationalDomain(domain: string): string {
  const d = normalizeDomain(domain);
  return getDomain(d, PSL_OPTIONS) ?? d;
}

/** RFC 7489 3.1: strict = the same domain; relaxed = the same organisational domain. */
export function aligned(fromDomain: string, authDomain: string, strict: boolean): boolean {
  const a = normalizeDomain(fromDomain);
  const b = normalizeDomain(authDomain);
  if (!a || !b) return false;
  if (strict) return a === b;
  return organizationalDomain(a) === organizationalDomain(b);
}

/** The domain part of an address ('' without one). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : normalizeDomain(address.slice(at + 1));
}

export interface AuthorDomains {
  /** Addresses found in all From fields. */
  addresses: string[];
  /** Their distinct domains. */
  domains: string[];
  /** How many From fields there were. */
  fields: number;
}

/**
 * The author addresses and domains from the From field values (as
 * MessageHeaders.getAll gives them: unfolded, bytes as latin1).
 */
export function authorDomains(fromValues: readonly string[]): AuthorDomains {
  const addresses: string[] = [];
  for (const value of fromValues) {
    // Field bytes come as latin1; an 8-bit address is UTF-8 (RFC 6532).
    const text = Buffer.from(value, 'latin1').toString('utf8');
    for (const a of addressparser(text, { flatten: true })) if (a.address) addresses.push(a.address);
  }
  const domains = [...new Set(addresses.map(domainOf).filter((d) => d !== ''))];
  return { addresses, domains, fields: fromValues.length };
}
