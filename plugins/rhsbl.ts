/**
 * rhsbl — right-hand-side block lists (dbl.spamhaus.org, multi.surbl.org,
 * URIBL's domain lists) for the domains a client names: the HELO name, the
 * envelope sender's domain and, optionally, the From header's domains.
 *
 * Options:
 *   zones: list (required), each a zone name or an object:
 *     zone, codes, bitmask, any_answer, txt, message, on_lookup_error
 *                                as in dnsbl (return-code map, bitmask on the last octet,
 *                                TXT for the reason, per-zone template and failure policy)
 *   helo: bool                   check the HELO/EHLO name (default true)
 *   sender: bool                 check the envelope sender's domain (default true)
 *   from_header: bool            check the From header's domains, at the end of the
 *                                header block; the rejection comes after the data (default false)
 *   registrable_domain: bool     also look up the registrable domain (Public Suffix List)
 *                                of a subdomain: mail.spam.example.co.uk and spam.example.co.uk
 *                                (default true)
 *   reject_at: mail | rcpt       where a listed HELO or sender is refused (default rcpt, so
 *                                postmaster and abuse stay reachable; list it before rcpt_ok)
 *   exempt_recipients: [string]  local parts or addresses still accepted at RCPT (postmaster, abuse)
 *   message: string              reply template; placeholders {what} {domain} {zone} {reason}
 *                                {txt} {code} {item} (default "{what} {domain} is listed in {zone}: {reason}")
 *   on_lookup_error: skip | defer   a zone that fails: skip it (recorded, logged) or answer 4xx (default skip)
 *
 * The HELO name is looked up as soon as it is given (behind Postfix: when
 * XFORWARD brings it), the sender's domain at MAIL; both are awaited at MAIL.
 * The null sender, IP-literal HELOs and single-label names are skipped (and
 * recorded). Return codes, TXT reasons and lookup failures work as in dnsbl.
 *
 * Results: pass = `helo:<domain>`/`sender:<domain>`/`from:<domain>` found on no
 * list, fail = `<zone>:<domain>` (details `listings` with zone, item, source,
 * codes, reason), err = failed zones. Needs the shared resolver (config `dns:`).
 */
import { z } from 'zod';
import { exemptRecipient, exemptRecipientsOption, verdictForRecipient } from '../src/plugin/reject-at';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { declined, type Verdict } from '../src/plugin/decision';
import { domainCandidates, headerAddressDomains } from '../src/dns/domain';
import {
  ListZone,
  failureNotes,
  ignoredNotes,
  listVerdict,
  listingDetail,
  policyLookup,
  renderMessage,
  summarize,
  templateSchema,
  zoneEntry,
  zoneFields,
  type ListLookup,
} from '../src/dns/lists';

const PLACEHOLDERS = ['what', 'domain', 'zone', 'reason', 'txt', 'code', 'item'] as const;

type Source = 'helo' | 'sender' | 'from';
const WHAT: Record<Source, string> = { helo: 'HELO name', sender: 'Sender domain', from: 'From domain' };

interface SourcedLookup extends ListLookup {
  source: Source;
}

/** The HELO lookups, started at HELO and kept for the connection. */
interface HeloLookups {
  helo: string;
  lookups: Promise<SourcedLookup[]>;
}

export default definePlugin({
  description: 'right-hand-side block lists for the HELO, sender and From domains',
  options: z
    .object({
      zones: z.array(zoneEntry(zoneFields(PLACEHOLDERS))).min(1),
      helo: z.boolean().default(true),
      sender: z.boolean().default(true),
      from_header: z.boolean().default(false),
      registrable_domain: z.boolean().default(true),
      reject_at: z.enum(['mail', 'rcpt']).default('rcpt'),
      exempt_recipients: exemptRecipientsOption,
      message: templateSchema(PLACEHOLDERS).default('{what} {domain} is listed in {zone}: {reason}'),
      on_lookup_error: z.enum(['skip', 'defer']).default('skip'),
    })
    .strict(),
  create(opts, env) {
    const zones = opts.zones.map((z) => new ListZone(z));
    const policy = policyLookup(zones, opts.on_lookup_error);
    const templates = new Map(zones.map((z) => [z.name, z.options.message ?? opts.message]));
    const exempt = exemptRecipient(opts.exempt_recipients);
    const verdicts = new WeakMap<object, Promise<Verdict>>();

    const messageFor = (l: ListLookup): string =>
      renderMessage(templates.get(l.zone)!, {
        what: WHAT[(l as SourcedLookup).source],
        domain: l.item,
        item: l.item,
        zone: l.zone,
        reason: l.reason,
        txt: l.txt,
        code: l.codes.join(', '),
      });

    /** Every zone for every candidate name of each domain; names asked twice (HELO = sender domain) share the resolver's query. */
    const lookUp = (source: Source, domains: readonly string[]): Promise<SourcedLookup[]> => {
      const names = [...new Set(domains.flatMap((d) => domainCandidates(d, opts.registrable_domain)))];
      return Promise.all(names.flatMap((n) => zones.map(async (z) => ({ ...(await z.lookup(env.dns, n, n)), source }))));
    };

    const heloLookups = (ctx: HookContext): Promise<SourcedLookup[]> | undefined => {
      const helo = ctx.conn.client.helo;
      if (!opts.helo || !helo) return undefined;
      const kept = ctx.conn.notes[ctx.name] as HeloLookups | undefined;
      if (kept && kept.helo === helo) return kept.lookups;
      const lookups = lookUp('helo', [helo]);
      ctx.conn.notes[ctx.name] = { helo, lookups } satisfies HeloLookups;
      return lookups;
    };

    /** Records what a set of lookups found and turns it into a verdict. */
    const judge = (ctx: HookContext, lookups: SourcedLookup[], checked: { source: Source; domain: string }[]): Verdict => {
      const summary = summarize(lookups, policy);
      const { listed, failed } = summary;
      const listedItems = new Set(listed.map((l) => `${l.source}:${l.item}`));
      const failedItems = new Set(failed.map((l) => `${l.source}:${l.item}`));
      const clean = checked.filter((c) => {
        const names = domainCandidates(c.domain, opts.registrable_domain);
        return !names.some((n) => listedItems.has(`${c.source}:${n}`) || failedItems.has(`${c.source}:${n}`));
      });
      ctx.result({
        pass: clean.map((c) => `${c.source}:${c.domain}`),
        fail: listed.map((l) => `${l.zone}:${l.item}`),
        err: failureNotes(failed),
        msg: ignoredNotes(lookups),
        ...(listed.length ? { listings: listed.map((l) => ({ ...listingDetail(l), source: l.source })) } : {}),
      });
      if (listed.length) ctx.log.info(`listed: ${listed.map((l) => `${l.source} ${l.item} in ${l.zone} (${l.codes.join(', ')})`).join(', ')}`);
      if (failed.length) ctx.log.warn(`lookup failed: ${failed.map((l) => `${l.item} in ${l.zone}: ${l.status}`).join(', ')}`);
      return listVerdict(summary, messageFor);
    };

    const envelopeVerdict = (ctx: HookContext): Promise<Verdict> => {
      const key = ctx.txn ?? ctx.conn;
      let v = verdicts.get(key);
      if (!v) {
        v = (async () => {
          const checked: { source: Source; domain: string }[] = [];
          const pending: Promise<SourcedLookup[]>[] = [];
          const skip: string[] = [];
          const helo = ctx.conn.client.helo;
          if (opts.helo && helo) {
            if (domainCandidates(helo, false).length) {
              checked.push({ source: 'helo', domain: helo.toLowerCase() });
              pending.push(heloLookups(ctx)!);
            } else skip.push(`helo ${helo}: not a domain`);
          }
          const sender = ctx.txn?.sender;
          if (opts.sender && sender) {
            if (!sender.address) skip.push('null sender');
            else if (!domainCandidates(sender.host, false).length) skip.push(`sender ${sender.host}: not a domain`);
            else {
              checked.push({ source: 'sender', domain: sender.host.toLowerCase() });
              pending.push(lookUp('sender', [sender.host]));
            }
          }
          if (skip.length) ctx.result({ skip });
          return judge(ctx, (await Promise.all(pending)).flat(), checked);
        })();
        verdicts.set(key, v);
      }
      return v;
    };

    const startHelo = (ctx: HookContext): void => {
      // Looked up now, awaited at MAIL: the answer is usually there by then.
      void heloLookups(ctx);
    };

    return {
      helo: startHelo,
      ehlo: startHelo,
      async mail(ctx) {
        const v = await envelopeVerdict(ctx);
        if (opts.reject_at === 'mail') return v;
      },
      async rcpt(ctx, rcpt) {
        if (opts.reject_at !== 'rcpt') return;
        const v = await envelopeVerdict(ctx);
        return verdictForRecipient(ctx, rcpt, v, exempt);
      },
      async data_headers_end(ctx, headers) {
        if (!opts.from_header) return;
        const domains = [...new Set(headers.getAll('from').flatMap((v) => headerAddressDomains(v)))];
        const usable = domains.filter((d) => domainCandidates(d, false).length);
        if (!usable.length) {
          ctx.result({ skip: domains.length ? `from: ${domains.join(', ')}: not a domain` : 'from: no address' });
          return declined();
        }
        const lookups = await lookUp('from', usable);
        return judge(
          ctx,
          lookups,
          usable.map((domain) => ({ source: 'from' as const, domain })),
        );
      },
    };
  },
});
