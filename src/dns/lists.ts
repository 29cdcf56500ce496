/**
 * DNS lists (DNSBL, DNSWL, RHSBL, URI lists): the zone options the list
 * plugins share, the lookup of one item in one zone, and what its answer
 * means.
 *
 * A list answers a query for `<item>.<zone>` with A records in 127.0.0.0/8.
 * Which of those mean "listed" is the list's own convention, so each zone says
 * it: a map or list of return codes (`127.0.0.2: "spam source"`), a bitmask on
 * the last octet (multi.uribl.com: 2 black, 4 grey, 8 red), or both. Answers
 * the zone does not map are ignored and recorded, never guessed at: lists
 * answer 127.0.0.1, 127.0.0.255, 127.0.1.255 or 127.255.255.x to say "query
 * refused" (public resolvers, over quota), and a lying resolver answers
 * public addresses for anything.
 * Without a map or bitmask any 127.0.0.0/8 answer counts except those.
 *
 * A failed lookup (SERVFAIL, timeout) is neither "listed" nor "not listed":
 * it is a `failed` lookup, and the plugin's `on_lookup_error` decides.
 */
import { isIPv4 } from 'node:net';
import { z } from 'zod';
import { declined, deny, denysoft, type Verdict } from '../plugin/decision';
import { CidrList, parseCidr } from '../util/cidr';
import { isHostname } from './names';
import { isFailure, type DnsResolver, type DnsStatus } from './resolver';

export type LookupErrorPolicy = 'skip' | 'defer';

const ipv4Code = z
  .string()
  .refine((s) => isIPv4(s.split('/')[0]!) && !!parseCidr(s), 'not an IPv4 address or network (127.0.0.2, 127.0.0.0/24)');

const bit = z
  .string()
  .regex(/^\d+$/, 'a bit value such as 2, 4, 8')
  .refine((s) => Number(s) >= 1 && Number(s) <= 255, 'a bit value between 1 and 255');

/** Placeholders a message template may use, per plugin. */
export function templateSchema(allowed: readonly string[]) {
  return z
    .string()
    .min(1)
    .superRefine((t, ctx) => {
      for (const m of t.matchAll(/\{(\w*)\}/g)) {
        if (!allowed.includes(m[1]!)) ctx.addIssue({ code: 'custom', message: `unknown placeholder {${m[1]}} (known: ${allowed.map((a) => `{${a}}`).join(' ')})` });
      }
    });
}

/**
 * The options of one zone every list plugin accepts; plugins extend the
 * object with their own (dnsbl's `type`, uribl's `ips`). A zone may also be
 * written as just its name.
 */
export function zoneFields(placeholders: readonly string[]) {
  return {
    zone: z
      .string()
      .transform((s) => s.trim().replace(/\.$/, '').toLowerCase())
      .refine((s) => isHostname(s) && s.includes('.'), 'not a DNS zone name'),
    /** Return codes that count: a list, or a map from code (or network) to the reason given. */
    codes: z.union([z.array(ipv4Code).min(1), z.record(ipv4Code, z.string())]).optional(),
    /** Bits of the last octet that count: a number (any of its bits), or a map from bit to reason. */
    bitmask: z.union([z.number().int().min(1).max(255), z.record(bit, z.string())]).optional(),
    /** Every answer counts as listed, whatever the address (lists that answer outside 127.0.0.0/8). */
    any_answer: z.boolean().default(false),
    /** Fetch the TXT record of a listed item for the reason given to the client. */
    txt: z.boolean().default(true),
    /** Reply text for a listing in this zone (default: the plugin's `message`). */
    message: templateSchema(placeholders).optional(),
    /** Overrides the plugin's on_lookup_error for this zone. */
    on_lookup_error: z.enum(['skip', 'defer']).optional(),
  };
}

/** `zones:` entries: a name, or an object with the fields above (plus a plugin's). */
export function zoneEntry<T extends z.ZodRawShape>(shape: T) {
  return z.preprocess((v) => (typeof v === 'string' ? { zone: v } : v), z.object(shape).strict());
}

export interface ZoneOptions {
  zone: string;
  codes?: string[] | Record<string, string>;
  bitmask?: number | Record<string, string>;
  any_answer: boolean;
  txt: boolean;
  message?: string;
  on_lookup_error?: LookupErrorPolicy;
}

/** What one query of one item in one zone found. */
export interface ListLookup {
  zone: string;
  /** What was looked up: an IP address or a domain. */
  item: string;
  /** The DNS name queried. */
  name: string;
  status: DnsStatus;
  /** The status is a failure (servfail, timeout, refused, error): nothing is known. */
  failed: boolean;
  listed: boolean;
  /** Answers that count as listed. */
  codes: string[];
  /** Answers the zone's map does not cover (refusal codes, lying resolvers). */
  ignored: string[];
  /** The reason for a listing: the mapped texts, else the TXT record, else the codes. */
  reason?: string;
  /** The TXT record of a listed item, cleaned for a reply line. */
  txt?: string;
  error?: string;
}

/**
 * Answers lists use to say "not answered": URIBL's and SURBL's 127.0.0.1,
 * dnswl's 127.0.0.255, Spamhaus' 127.255.255.x and the DBL's 127.0.1.255.
 */
const REFUSAL = new CidrList(['127.0.0.1', '127.0.0.255', '127.0.1.255', '127.255.255.0/24']);
const LOOPBACK_NET = new CidrList(['127.0.0.0/8']);

/** Longest TXT text kept for a reply (lists put a URL there; anything longer is not for humans). */
const TXT_MAX = 200;
/** Longest reply text built from a template (SMTP allows 512 octets a reply line). */
const MESSAGE_MAX = 400;

/** One line, printable, bounded: DNS data is untrusted input that ends up in a reply. */
export function cleanText(text: string, max = TXT_MAX): string {
  const one = text.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return one.length > max ? one.slice(0, max - 3).trimEnd() + '...' : one;
}

/** Fills `{name}` placeholders; values are cleaned, missing ones are empty. */
export function renderMessage(template: string, vars: Record<string, string | undefined>): string {
  return cleanText(
    template.replace(/\{(\w+)\}/g, (_, k: string) => vars[k] ?? ''),
    MESSAGE_MAX,
  );
}

/** A zone ready for lookups: its return-code rules compiled once. */
export class ListZone {
  readonly name: string;
  private readonly codes: { net: CidrList; reason?: string }[];
  private readonly bits: { mask: number; reason?: string }[];

  constructor(readonly options: ZoneOptions) {
    this.name = options.zone;
    const c = options.codes;
    this.codes = !c
      ? []
      : Array.isArray(c)
        ? c.map((code) => ({ net: new CidrList([code]) }))
        : Object.entries(c).map(([code, reason]) => ({ net: new CidrList([code]), reason: reason || undefined }));
    const b = options.bitmask;
    this.bits = b === undefined ? [] : typeof b === 'number' ? [{ mask: b }] : Object.entries(b).map(([m, reason]) => ({ mask: Number(m), reason: reason || undefined }));
  }

  /** Which of a zone's answers count as listed, and the reasons the map gives for them. */
  classify(answers: readonly string[]): { codes: string[]; ignored: string[]; reasons: string[] } {
    const codes: string[] = [];
    const ignored: string[] = [];
    const reasons: string[] = [];
    const unconfigured = this.codes.length === 0 && this.bits.length === 0;
    for (const a of answers) {
      let hit = false;
      if (isIPv4(a)) {
        for (const c of this.codes) {
          if (!c.net.contains(a)) continue;
          hit = true;
          if (c.reason) reasons.push(c.reason);
        }
        if (this.bits.length && LOOPBACK_NET.contains(a)) {
          const last = Number(a.split('.')[3]);
          for (const b of this.bits) {
            if ((last & b.mask) === 0) continue;
            hit = true;
            if (b.reason) reasons.push(b.reason);
          }
        }
        if (unconfigured && LOOPBACK_NET.contains(a) && !REFUSAL.contains(a)) hit = true;
      }
      if (this.options.any_answer) hit = true;
      (hit ? codes : ignored).push(a);
    }
    return { codes, ignored, reasons: [...new Set(reasons)] };
  }

  /**
   * Looks `label.zone` up (label: a reversed IP or a domain) for `item`.
   * Never throws: a failure is a lookup with `failed` set.
   */
  async lookup(dns: DnsResolver, item: string, label: string): Promise<ListLookup> {
    const name = `${label}.${this.name}`;
    const base = { zone: this.name, item, name };
    try {
      const a = await dns.query(name, 'A');
      if (isFailure(a.status)) return { ...base, status: a.status, failed: true, listed: false, codes: [], ignored: [], error: a.error ?? a.status };
      const { codes, ignored, reasons } = this.classify(a.records);
      const listed = codes.length > 0;
      const result: ListLookup = { ...base, status: a.status, failed: false, listed, codes, ignored };
      if (!listed) return result;
      if (this.options.txt) {
        // Only listed items get the second query; a failed TXT just leaves the reason to the codes.
        const t = await dns.query(name, 'TXT');
        if (t.status === 'ok' && t.records.length) result.txt = cleanText(t.records.map((r) => r.join('')).join('; '));
      }
      result.reason = reasons.length ? reasons.join(', ') : result.txt || `returned ${codes.join(', ')}`;
      return result;
    } catch (err) {
      return { ...base, status: 'error', failed: true, listed: false, codes: [], ignored: [], error: (err as Error).message };
    }
  }
}

/** What a set of lookups means for a verdict. */
export interface ListSummary<L extends ListLookup = ListLookup> {
  listed: L[];
  failed: L[];
  /** Failed lookups whose zone's policy is to defer. */
  deferring: L[];
}

export function summarize<L extends ListLookup>(lookups: readonly L[], policyOf: (zone: string) => LookupErrorPolicy): ListSummary<L> {
  const listed = lookups.filter((l) => l.listed);
  const failed = lookups.filter((l) => l.failed);
  return { listed, failed, deferring: failed.filter((l) => policyOf(l.zone) === 'defer') };
}

/** The zone's own on_lookup_error, else the plugin's. */
export function policyLookup(zones: readonly ListZone[], fallback: LookupErrorPolicy): (zone: string) => LookupErrorPolicy {
  const byName = new Map(zones.map((z) => [z.name, z.options.on_lookup_error ?? fallback]));
  return (zone) => byName.get(zone) ?? fallback;
}

/**
 * The verdict for a summary: a listing is a rejection (the first listed
 * zone's message); otherwise failed lookups under `defer` are a temporary
 * rejection; otherwise no opinion.
 */
export function listVerdict<L extends ListLookup>(s: ListSummary<L>, messageFor: (l: L) => string): Verdict {
  if (s.listed.length) return deny(messageFor(s.listed[0]!), '5.7.1');
  if (s.deferring.length) {
    const zones = [...new Set(s.deferring.map((l) => l.zone))].join(', ');
    return denysoft(`Could not check ${zones}, try again later`, '4.4.3');
  }
  return declined();
}

/** What karma and the log keep of a listing. */
export function listingDetail(l: ListLookup): Record<string, unknown> {
  return { zone: l.zone, item: l.item, codes: l.codes, ...(l.reason ? { reason: l.reason } : {}) };
}

/** `zone: status` strings for the results' err list, one per zone and status. */
export function failureNotes(failed: readonly ListLookup[]): string[] {
  const counts = new Map<string, number>();
  for (const l of failed) counts.set(`${l.zone}: ${l.status}`, (counts.get(`${l.zone}: ${l.status}`) ?? 0) + 1);
  return [...counts].map(([k, n]) => (n > 1 ? `${k} (${n} lookups)` : k));
}

/** Answers ignored because the zone does not map them, worth a log line: they often mean "query refused". */
export function ignoredNotes(lookups: readonly ListLookup[]): string[] {
  return lookups.filter((l) => l.ignored.length).map((l) => `${l.zone}: ${l.item} answered ${l.ignored.join(',')} (not mapped, ignored)`);
}

/**
 * Loopback, private, link-local, CGNAT, unspecified, ULA and multicast
 * ranges: nobody lists them, and a client there is local (a test, a
 * container network, a misconfigured relay).
 */
const PRIVATE = new CidrList([
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '224.0.0.0/4',
  '240.0.0.0/4',
  '::/128',
  '::1/128',
  'fc00::/7',
  'fe80::/10',
  'ff00::/8',
]);

export function isPrivateAddress(ip: string): boolean {
  return PRIVATE.contains(ip);
}
