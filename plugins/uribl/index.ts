/**
 * uribl — URI block lists (multi.uribl.com, multi.surbl.org, dbl.spamhaus.org)
 * for the domains and IP addresses a message links to, at data_post.
 *
 * Options:
 *   zones: list (required), each a zone name or an object:
 *     zone, codes, bitmask, any_answer, txt, message, on_lookup_error
 *                                as in dnsbl; e.g. multi.uribl.com with
 *                                bitmask: { 2: black, 8: red } (grey, 4, left out)
 *     domains: bool              ask this zone for domains (default true)
 *     ips: bool                  ask this zone for IPs, reversed like a DNSBL (default true)
 *   body: bool                   scan the body's text and HTML parts (default true)
 *   helo, sender, from_header: bool   also check the HELO name, the envelope sender's
 *                                domain and the From header's domains (default true)
 *   bare_domains: bool           take domain-looking words in the text too, when their
 *                                suffix is a known TLD (`cheap-pills.com`, not `file.txt`) (default true)
 *   exclude: [string]            domains never looked up, with their subdomains, and IPs or
 *                                networks: your own, big senders (default: w3.org and
 *                                microsoft.com, which every HTML mail names in its markup)
 *   exclude_file: string         more exclusions, one a line ('#' comments); relative to the config dir
 *   max_lookups: n               distinct names and IPs looked up per message, each in every
 *                                zone; the rest is skipped and recorded (default 20)
 *   max_size: bytes              larger messages are not parsed (recorded as skip; the
 *                                envelope and From are still checked) (default 1048576)
 *   private_domains: bool        reduce with the PSL's private section too, so that
 *                                `x.github.io` is looked up as itself (default false)
 *   message: string              reply template; placeholders {domain} {zone} {reason} {txt}
 *                                {code} {item} (default "{item} is listed in {zone}: {reason}")
 *   on_lookup_error: skip | defer   failed lookups: skip (recorded, logged) or answer 4xx (default skip)
 *
 * The message is parsed with mailparser's simpleParser from the spool's
 * stream (decoded text and HTML); hosts are reduced to their registrable
 * domain with the Public Suffix List (www.spam.example.co.uk ->
 * spam.example.co.uk), which is what these lists list. Envelope names come
 * first, then the body's in order of appearance, up to max_lookups. A listing
 * is a 5xx after the data naming the first listed item; return codes, TXT
 * reasons and lookup failures work as in dnsbl.
 *
 * Results: pass = how many names were found on no list, fail =
 * `<zone>:<item>` (details `listings` with zone, item, codes, reason;
 * `checked` with every name looked up), skip = oversize, excluded names,
 * names over the cap; err = failed zones. Needs the shared resolver (config `dns:`).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { simpleParser } from 'mailparser';
import { z } from 'zod';
import { definePlugin, type HookContext } from '../../src/plugin/api';
import type { Message } from '../../src/message/types';
import { domainCandidates, headerAddressDomains, registrableDomain } from '../../src/dns/domain';
import { reversedIp } from '../../src/dns/names';
import {
  ListZone,
  failureNotes,
  ignoredNotes,
  isPrivateAddress,
  listVerdict,
  listingDetail,
  policyLookup,
  renderMessage,
  summarize,
  templateSchema,
  zoneEntry,
  zoneFields,
  type ListLookup,
} from '../../src/dns/lists';
import { CidrList, parseCidr } from '../../src/util/cidr';
import { Found, extractFrom, extractFromHtml } from './extract';

const PLACEHOLDERS = ['domain', 'zone', 'reason', 'txt', 'code', 'item'] as const;

const zoneSchema = zoneEntry({
  ...zoneFields(PLACEHOLDERS),
  domains: z.boolean().default(true),
  ips: z.boolean().default(true),
});

/** Exclusions: domains (with subdomains) and IP networks. */
class Exclusions {
  private readonly domains = new Set<string>();
  private readonly nets: CidrList;

  constructor(entries: readonly string[]) {
    const nets: string[] = [];
    for (const raw of entries) {
      const e = raw.trim().replace(/^\*?\./, '').replace(/\.$/, '').toLowerCase();
      if (!e) continue;
      if (parseCidr(e)) nets.push(e);
      else this.domains.add(e);
    }
    this.nets = new CidrList(nets);
  }

  has(item: string): boolean {
    if (isIP(item)) return this.nets.contains(item);
    for (let d = item; d; d = d.slice(d.indexOf('.') + 1)) {
      if (this.domains.has(d)) return true;
      if (!d.includes('.')) break;
    }
    return false;
  }
}

function readExclusions(file: string, configDir: string): string[] {
  return readFileSync(resolve(configDir, file), 'utf8')
    .split(/\r?\n/)
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean);
}

export default definePlugin({
  description: 'URI block lists for the domains and IPs a message links to',
  options: z
    .object({
      zones: z.array(zoneSchema).min(1),
      body: z.boolean().default(true),
      helo: z.boolean().default(true),
      sender: z.boolean().default(true),
      from_header: z.boolean().default(true),
      bare_domains: z.boolean().default(true),
      exclude: z.array(z.string().min(1)).default(['w3.org', 'microsoft.com']),
      exclude_file: z.string().min(1).optional(),
      max_lookups: z.number().int().min(1).default(20),
      max_size: z.number().int().min(1).default(1048576),
      private_domains: z.boolean().default(false),
      message: templateSchema(PLACEHOLDERS).default('{item} is listed in {zone}: {reason}'),
      on_lookup_error: z.enum(['skip', 'defer']).default('skip'),
    })
    .strict(),
  create(opts, env) {
    const zones = opts.zones.map((z) => ({ list: new ListZone(z), domains: z.domains, ips: z.ips }));
    const policy = policyLookup(
      zones.map((z) => z.list),
      opts.on_lookup_error,
    );
    const templates = new Map(zones.map((z) => [z.list.name, z.list.options.message ?? opts.message]));
    const exclusions = new Exclusions([...opts.exclude, ...(opts.exclude_file ? readExclusions(opts.exclude_file, env.configDir) : [])]);
    const psl = { privateDomains: opts.private_domains };

    const messageFor = (l: ListLookup): string =>
      renderMessage(templates.get(l.zone)!, { domain: l.item, item: l.item, zone: l.zone, reason: l.reason, txt: l.txt, code: l.codes.join(', ') });

    /** The decoded text and HTML of the body, through mailparser. */
    const scanBody = async (message: Message, found: Found): Promise<void> => {
      const parsed = await simpleParser(message.stream(), {
        skipHtmlToText: true,
        skipTextToHtml: true,
        skipTextLinks: true,
        skipImageLinks: true,
      });
      if (parsed.text) extractFrom(parsed.text, found, opts.bare_domains);
      if (typeof parsed.html === 'string') extractFromHtml(parsed.html, found, opts.bare_domains);
    };

    /** Envelope and From names; they go first, ahead of whatever the body pads itself with. */
    const envelopeNames = (ctx: HookContext, message: Message, found: Found): void => {
      if (opts.helo && ctx.conn.client.helo && domainCandidates(ctx.conn.client.helo, false).length) found.add(ctx.conn.client.helo);
      const sender = ctx.txn?.sender;
      if (opts.sender && sender?.address && sender.host) found.add(sender.host);
      if (opts.from_header) for (const v of message.headers.getAll('from')) for (const d of headerAddressDomains(v)) found.add(d);
    };

    return {
      async data_post(ctx, message) {
        const skip: string[] = [];
        const errs: string[] = [];
        const found = new Found();
        envelopeNames(ctx, message, found);
        if (opts.body) {
          const size = message.size();
          if (size > opts.max_size) skip.push(`body: ${size} bytes, over max_size ${opts.max_size}`);
          else {
            try {
              await scanBody(message, found);
            } catch (err) {
              // A message mailparser cannot read is still checked by its envelope; the log says why the body was not.
              errs.push(`body not parsed: ${(err as Error).message}`);
              ctx.log.warn(`could not parse the message body: ${(err as Error).message}`);
            }
          }
        }

        // Reduce to what the lists list, drop exclusions and local addresses, keep order.
        const items: { item: string; ip: boolean }[] = [];
        const seen = new Set<string>();
        const excluded = new Set<string>();
        for (const host of found.hosts) {
          const domain = registrableDomain(host, psl);
          if (!domain || seen.has(domain)) continue;
          seen.add(domain);
          if (exclusions.has(host) || exclusions.has(domain)) excluded.add(domain);
          else items.push({ item: domain, ip: false });
        }
        for (const ip of found.ips) {
          if (seen.has(ip) || isPrivateAddress(ip)) continue;
          seen.add(ip);
          if (exclusions.has(ip)) excluded.add(ip);
          else items.push({ item: ip, ip: true });
        }
        if (excluded.size) skip.push(`excluded: ${[...excluded].join(',')}`);
        // Envelope names were added first, then the body's: order of discovery, except domains before IPs.
        const checked = items.slice(0, opts.max_lookups);
        if (items.length > checked.length) {
          skip.push(`max_lookups: ${items.length - checked.length} of ${items.length} not looked up (${items.slice(checked.length).map((i) => i.item).join(',')})`);
        }

        const lookups = await Promise.all(
          checked.flatMap(({ item, ip }) =>
            zones.filter((z) => (ip ? z.ips : z.domains)).map((z) => z.list.lookup(env.dns, item, ip ? reversedIp(item) : item)),
          ),
        );
        const summary = summarize(lookups, policy);
        const { listed, failed } = summary;
        const bad = new Set([...listed, ...failed].map((l) => l.item));
        ctx.result({
          pass: checked.length ? [`${checked.filter((c) => !bad.has(c.item)).length} of ${checked.length} names not listed`] : [],
          fail: listed.map((l) => `${l.zone}:${l.item}`),
          skip,
          err: [...errs, ...failureNotes(failed)],
          msg: ignoredNotes(lookups),
          checked: checked.map((c) => c.item),
          ...(listed.length ? { listings: listed.map(listingDetail) } : {}),
        });
        if (listed.length) ctx.log.info(`listed: ${listed.map((l) => `${l.item} in ${l.zone} (${l.codes.join(', ')})`).join(', ')}`);
        if (failed.length) ctx.log.warn(`lookup failed: ${failureNotes(failed).join(', ')}`);
        return listVerdict(summary, messageFor);
      },
    };
  },
});
