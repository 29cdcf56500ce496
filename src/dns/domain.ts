/**
 * Domain names as mail checks need them: the registrable domain of a host
 * (the part a registrant controls, from the Public Suffix List via tldts),
 * and the domains of the addresses in a From-style header.
 *
 * Why the PSL and not "the last two labels": example.co.uk is registrable,
 * co.uk is not, and URI and RHS block lists list the former.
 */
import { isIP } from 'node:net';
import { domainToASCII } from 'node:url';
import { getDomain, parse } from 'tldts';
import addressparser from 'nodemailer/lib/addressparser';
import { isHostname } from './names';

export interface DomainOptions {
  /**
   * Also honour the PSL's private section (blogspot.com, github.io ...), so
   * that `foo.github.io` is its own registrable domain. Default false: block
   * lists mostly list what ICANN registries delegate.
   */
  privateDomains?: boolean;
}

/** Lower case, no trailing dot, no surrounding brackets or whitespace. */
export function normaliseHost(host: string): string {
  return host.trim().replace(/\.+$/, '').toLowerCase();
}

/**
 * The ASCII (A-label) form of a domain, '' when it cannot be one. Only
 * non-ASCII names go through the URL parser, and nothing it would read as
 * a URL delimiter: `good.example/x` must not come out as `good.example`.
 */
export function asciiDomain(name: string): string {
  if (!/[^\x00-\x7f]/.test(name)) return name.toLowerCase();
  if (/[\s/\\?#@:%[\]<>"']/.test(name)) return '';
  return domainToASCII(name);
}

/**
 * RFC 5321's Domain in lower case: LDH labels of at most 63 octets, at most 253
 * in all, and a last label that is not all digits (that would be an IP address).
 * Stricter than isHostname, which DNS list names need (underscores).
 */
export function isMailDomain(name: string): boolean {
  if (!name || name.length > 253) return false;
  const labels = name.split('.');
  return labels.every((l) => /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(l)) && !/^[0-9]+$/.test(labels[labels.length - 1]!);
}

/**
 * The registrable domain of a host name (`www.example.co.uk` -> `example.co.uk`),
 * or undefined for IP addresses, single labels and names that are not host names.
 * A name under a suffix the PSL does not know (`spam.test`) counts its last label
 * as the suffix, as the PSL's default rule says.
 */
export function registrableDomain(host: string, opts: DomainOptions = {}): string | undefined {
  const h = normaliseHost(host);
  if (!h || isIP(h) || !isHostname(h) || !h.includes('.')) return undefined;
  return getDomain(h, { allowPrivateDomains: !!opts.privateDomains, validateHostname: false, extractHostname: false }) ?? undefined;
}

/** Whether the host ends in a suffix the PSL's ICANN section lists (`.com`, `.co.uk`, not `.test` or `.txt`). */
export function hasKnownSuffix(host: string): boolean {
  const h = normaliseHost(host);
  if (!h || isIP(h)) return false;
  const r = parse(h, { extractHostname: false, validateHostname: false });
  return r.isIcann === true && !!r.domain;
}

/**
 * The names a domain check looks up for a host: the host itself and, when
 * `registrable` and different, its registrable domain. Empty when the host is
 * no usable domain name (IP literal, single label, syntax).
 */
export function domainCandidates(host: string, registrable: boolean, opts: DomainOptions = {}): string[] {
  const h = normaliseHost(host.replace(/^\[|\]$/g, ''));
  if (!h || isIP(h) || !isHostname(h) || !h.includes('.')) return [];
  const out = [h];
  if (registrable) {
    const r = registrableDomain(h, opts);
    if (r && r !== h) out.push(r);
  }
  return out;
}

/** The domain of an e-mail address (`User@Example.COM` -> `example.com`), or undefined. */
export function addressDomain(address: string): string | undefined {
  const at = address.lastIndexOf('@');
  if (at < 0) return undefined;
  const d = normaliseHost(address.slice(at + 1).replace(/^\[|\]$/g, ''));
  return d || undefined;
}

/** The distinct domains of the addresses in an address header value (From, Sender, Reply-To), groups included. */
export function headerAddressDomains(value: string): string[] {
  const found = new Set<string>();
  for (const a of addressparser(value, { flatten: true })) {
    const d = a.address ? addressDomain(a.address) : undefined;
    if (d) found.add(d);
  }
  return [...found];
}
