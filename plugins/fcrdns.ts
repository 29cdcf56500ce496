/**
 * fcrdns — forward-confirmed reverse DNS of the client, at connect.
 *
 * Options:
 *   reject_no_rdns: boolean       reject clients without reverse DNS (default false)
 *   reject_no_fcrdns: boolean     reject when no PTR name resolves back to the client (default false)
 *   reject_generic: boolean       reject names that look dynamic / end-user (default false)
 *   reject_invalid_tld: boolean   reject names outside the Public Suffix List (default false)
 *   on_lookup_error: 'skip' | 'defer'
 *                                 a DNS failure (SERVFAIL, timeout): go on, or answer 4xx
 *                                 when any reject_* option is on (default 'skip')
 *   trust_xforward_name: boolean  behind Postfix (XFORWARD/XCLIENT), take the NAME
 *                                 Postfix verified instead of looking up again (default true)
 *   generic_words: string[]       words that mark an end-user name, matched against the
 *                                 letter runs of the host part (default: dsl, dyn, pool, dhcp,
 *                                 cable, ppp, client ... see GENERIC_WORDS)
 *   generic_patterns: string[]    more regular expressions (`/re/flags` or a bare source,
 *                                 case-insensitive) tested against the whole name (default [])
 *   valid_tlds: string[]          extra top-level domains to accept (an internal `corp`) (default [])
 *   max_names: integer            PTR names looked at, at most (default 5)
 *
 * The PTR names of the client address are looked up, then the A and AAAA
 * records of each; the client is forward-confirmed when one of them includes
 * its address. Results (for karma and the log): pass `fcrdns`, or fail
 * `no_rdns` / `no_fcrdns`, plus fail `generic` and `invalid_tld` for the name
 * (the confirmed one, else the first PTR name); DNS failures are `err` and
 * never read as "no name". A name is generic when its host part (before the
 * registrable domain) carries three consecutive octets of the client's IPv4
 * address (`1-2-3-4`, `4.3.2`, `001002003004`, hex `01020304`) or one of the
 * generic words; names under a TLD the PSL does not know are not looked up.
 *
 * Behind Postfix the client's verified name comes with XFORWARD NAME: a name
 * counts as forward-confirmed without a lookup (Postfix only passes a name it
 * verified itself). NAME=[UNAVAILABLE] (or no NAME) stands for no PTR, a PTR
 * that does not resolve back, a temporary failure, or `smtpd_peername_lookup
 * = no` alike, so the client is then looked up here as in standalone mode.
 * The same goes for XCLIENT NAME ([UNAVAILABLE], [TEMPUNAVAIL]).
 *
 * Only the client's own address family confirms it (A records for an IPv4
 * client, AAAA for IPv6). A DNS failure never rejects outright: with
 * `on_lookup_error: defer` it is a 4xx (4.4.3) when a reject_* option is on,
 * otherwise the plugin has no opinion.
 *
 * Leaves `conn.notes.fcrdns` (FcrdnsNote: name, names, verified, flags) for
 * other plugins (helo reads it) and, in standalone mode, sets the client's
 * name (Received header, XFORWARD/XCLIENT NAME downstream) to the confirmed
 * name. Rejections at connect are delivered at MAIL behind Postfix.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { declined, deny, denysoft, type Verdict } from '../src/plugin/decision';
import { isFailure, type DnsResolver } from '../src/dns/resolver';
import { isHostname, plainIp } from '../src/dns/names';
import { hasKnownSuffix, normaliseHost, registrableDomain } from '../src/dns/domain';
import { CidrList } from '../src/util/cidr';

export const GENERIC_WORDS = [
  'dsl', 'adsl', 'vdsl', 'xdsl', 'sdsl', 'dyn', 'dynamic', 'dynip', 'dip', 'pool', 'dhcp', 'cable', 'ppp', 'pppoe',
  'dialup', 'dial', 'client', 'clients', 'customer', 'cust', 'broadband', 'cpe', 'user', 'users', 'res', 'residential',
  'ftth', 'fios',
];

export type FcrdnsFlag = 'no_rdns' | 'no_fcrdns' | 'generic' | 'invalid_tld';

/** What fcrdns leaves in `conn.notes.fcrdns`. */
export interface FcrdnsNote {
  /** The forward-confirmed name, else the first PTR name; absent without reverse DNS. */
  name?: string;
  /** Every PTR name looked at. */
  names: string[];
  /** `name` resolves back to the client's address. */
  verified: boolean;
  /** dns: our own lookups; proxy: the name Postfix (XFORWARD/XCLIENT) verified. */
  source: 'dns' | 'proxy';
  flags: FcrdnsFlag[];
}

export const NOTE_KEY = 'fcrdns';

/** A name under a suffix the PSL's ICANN section lists, or under one of `extra`. */
export function validTld(name: string, extra: ReadonlySet<string>): boolean {
  const n = normaliseHost(name);
  return hasKnownSuffix(n) || (n.includes('.') && extra.has(n.slice(n.lastIndexOf('.') + 1)));
}

function hostPart(name: string): string {
  const n = normaliseHost(name);
  const domain = registrableDomain(n);
  return domain && n.endsWith(`.${domain}`) ? n.slice(0, -domain.length - 1) : '';
}

function containsRun(numbers: number[], run: number[]): boolean {
  for (let i = 0; i + run.length <= numbers.length; i++) {
    if (run.every((v, j) => numbers[i + j] === v)) return true;
  }
  return false;
}

/** Whether the host part carries the IPv4 address: 3 consecutive octets either way, or the whole of it packed. */
export function embedsIp(host: string, ip: string): boolean {
  const v4 = ip.replace(/^::ffff:/i, '');
  if (isIP(v4) !== 4) return false;
  const octets = v4.split('.').map(Number);
  const numbers = host.split(/[^0-9]+/).filter(Boolean).map(Number);
  const reversed = [...octets].reverse();
  for (const order of [octets, reversed]) {
    if (containsRun(numbers, order.slice(0, 3)) || containsRun(numbers, order.slice(1))) return true;
  }
  const flat = host.replace(/[^0-9a-z]/gi, '').toLowerCase();
  const padded = (o: number[]) => o.map((x) => String(x).padStart(3, '0')).join('');
  const hex = (o: number[]) => o.map((x) => x.toString(16).padStart(2, '0')).join('');
  return [padded(octets), padded(reversed), hex(octets), hex(reversed)].some((s) => flat.includes(s));
}

export interface GenericRules {
  words: ReadonlySet<string>;
  patterns: readonly RegExp[];
}

/** Whether a PTR name looks like an end-user or dynamic address rather than a mail server. */
export function isGeneric(name: string, ip: string, rules: GenericRules): boolean {
  const n = normaliseHost(name);
  if (rules.patterns.some((re) => re.test(n))) return true;
  const host = hostPart(n);
  if (!host) return false;
  if (embedsIp(host, ip)) return true;
  return host.split(/[^a-z]+/).some((w) => rules.words.has(w));
}

export function parsePattern(text: string): RegExp {
  const m = /^\/(.*)\/([a-z]*)$/s.exec(text);
  return m ? new RegExp(m[1]!, m[2]!.includes('i') ? m[2]! : `${m[2]}i`) : new RegExp(text, 'i');
}

/** What the lookups found; `error` when a DNS failure leaves the answer open. */
interface Lookup {
  names: string[];
  verified?: string;
  error?: string;
}

export function sameAddress(a: string, b: string): boolean {
  try {
    return new CidrList([plainIp(a)]).contains(plainIp(b));
  } catch {
    return false;
  }
}

async function lookup(dns: DnsResolver, addr: string, maxNames: number, tlds: ReadonlySet<string>): Promise<Lookup> {
  const ptr = await dns.ptr(addr);
  if (isFailure(ptr.status)) return { names: [], error: `PTR ${ptr.status}` };
  const names = [...new Set(ptr.records.map(normaliseHost))].filter((n) => isHostname(n)).slice(0, maxNames);
  // Only the client's own family can confirm it: an IPv6 client is not judged on A records
  // while the AAAA lookup failed.
  const type = isIP(plainIp(addr)) === 6 ? 'AAAA' : 'A';
  // A name under an unknown TLD cannot resolve in the public DNS: it is not asked about.
  const forward = await Promise.all(names.map((n) => (validTld(n, tlds) ? dns.query(n, type) : undefined)));
  const verified = names.find((_, i) => forward[i]?.status === 'ok' && forward[i]!.records.some((r) => sameAddress(addr, r)));
  if (verified) return { names, verified };
  const failed = forward.findIndex((f) => f && isFailure(f.status));
  if (failed >= 0) return { names, error: `${names[failed]} ${type} ${forward[failed]!.status}` };
  return { names };
}

export default definePlugin({
  description: 'forward-confirmed reverse DNS of the client (no rDNS, mismatch, generic names, invalid TLD)',
  options: z
    .object({
      reject_no_rdns: z.boolean().default(false),
      reject_no_fcrdns: z.boolean().default(false),
      reject_generic: z.boolean().default(false),
      reject_invalid_tld: z.boolean().default(false),
      on_lookup_error: z.enum(['skip', 'defer']).default('skip'),
      trust_xforward_name: z.boolean().default(true),
      generic_words: z.array(z.string().regex(/^[a-z]+$/i, 'letters only')).default(GENERIC_WORDS),
      generic_patterns: z.array(z.string().min(1)).default([]),
      valid_tlds: z.array(z.string().regex(/^[a-z0-9-]+$/i, 'a top-level domain without dots')).default([]),
      max_names: z.number().int().min(1).max(20).default(5),
    })
    .strict(),
  create(opts, env) {
    const rules: GenericRules = {
      words: new Set(opts.generic_words.map((w) => w.toLowerCase())),
      patterns: opts.generic_patterns.map(parsePattern),
    };
    const tlds = new Set(opts.valid_tlds.map((t) => t.toLowerCase()));
    const rejects = opts.reject_no_rdns || opts.reject_no_fcrdns || opts.reject_generic || opts.reject_invalid_tld;

    const verdict = (note: FcrdnsNote, addr: string): Verdict => {
      const f = new Set(note.flags);
      if (f.has('no_rdns') && opts.reject_no_rdns) return deny(`No reverse DNS for ${addr}`, '5.7.25');
      if (f.has('no_fcrdns') && opts.reject_no_fcrdns) {
        return deny(`Reverse DNS of ${addr} (${note.name}) does not resolve back to it`, '5.7.25');
      }
      if (f.has('invalid_tld') && opts.reject_invalid_tld) {
        return deny(`Reverse DNS name ${note.name} is not under a valid top-level domain`, '5.7.25');
      }
      if (f.has('generic') && opts.reject_generic) {
        return deny(`Reverse DNS name ${note.name} looks like an end-user address; send through your provider's mail server`, '5.7.1');
      }
      return declined();
    };

    const judge = (ctx: HookContext, found: Lookup, source: FcrdnsNote['source']): Verdict => {
      const c = ctx.conn.client;
      const name = found.verified ?? found.names[0];
      const flags: FcrdnsFlag[] = [];
      if (!name) flags.push('no_rdns');
      else {
        if (!found.verified) flags.push('no_fcrdns');
        if (!validTld(name, tlds)) flags.push('invalid_tld');
        if (isGeneric(name, c.addr, rules)) flags.push('generic');
      }
      const note: FcrdnsNote = { name, names: found.names, verified: !!found.verified, source, flags };
      ctx.conn.notes[NOTE_KEY] = note;
      if (found.verified && c.via === 'tcp') c.name = found.verified;
      ctx.result({
        ...(found.verified ? { pass: 'fcrdns' } : {}),
        ...(flags.length ? { fail: flags } : {}),
        name,
        ptr_names: found.names,
        source,
      });
      return verdict(note, c.addr);
    };

    return {
      async connect(ctx) {
        const c = ctx.conn.client;
        // Postfix sends a name only when it verified it; NAME=[UNAVAILABLE] (no name, a name that
        // does not resolve back, a lookup failure, or smtpd_peername_lookup = no) says nothing
        // about which, so the client is looked up here like any other.
        if (c.via !== 'tcp' && opts.trust_xforward_name && c.name) {
          const name = normaliseHost(c.name);
          return judge(ctx, { names: [name], verified: name }, 'proxy');
        }
        const found = await lookup(env.dns, c.addr, opts.max_names, tlds);
        if (found.error) {
          ctx.result({ err: found.error, ptr_names: found.names });
          ctx.conn.notes[NOTE_KEY] = undefined;
          ctx.log.info(`reverse DNS of ${c.addr} unknown: ${found.error}`);
          if (opts.on_lookup_error === 'defer' && rejects) {
            return denysoft(`Temporary DNS failure looking up ${c.addr}, try again later`, '4.4.3');
          }
          return declined();
        }
        return judge(ctx, found, 'dns');
      },
    };
  },
});
