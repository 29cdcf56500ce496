/**
 * dnsbl — IP block lists and allow lists (DNSBL, DNSWL) for the client address.
 *
 * The client is conn.client.addr: what XFORWARD says behind Postfix, the TCP
 * peer standalone. IPv4 is queried as 2.2.0.192.<zone>, IPv6 as its 32 nibbles
 * reversed. Every zone is queried in parallel as soon as the client is known
 * (connect); allow lists are awaited there, block lists where the verdict is
 * given (`reject_at`).
 *
 * Options:
 *   zones: list (required), each a zone name or an object:
 *     zone: string               the list's DNS zone (zen.spamhaus.org)
 *     type: block | allow        (default block)
 *     codes: [ip|cidr] | {ip|cidr: reason}
 *                                answers that count (and the reason each gives)
 *     bitmask: n | {bit: reason} bits of the answer's last octet that count
 *     any_answer: bool           every answer counts, even outside 127.0.0.0/8 (false)
 *     txt: bool                  fetch the TXT record of a listed address for the reply (true)
 *     message: string            reply template for this zone
 *     on_lookup_error: skip | defer   overrides the plugin's
 *     ipv4, ipv6: bool           which address families the zone is asked for (both true)
 *   reject_at: connect | mail | rcpt   where a listing is refused (default rcpt)
 *   exempt_recipients: [string]  local parts (`postmaster`) or addresses still
 *                                accepted at RCPT from a listed client (postmaster, abuse)
 *   message: string              reply template; placeholders {ip} {zone} {reason} {txt}
 *                                {code} {item} (default "Your address {ip} is listed in {zone}: {reason}")
 *   on_lookup_error: skip | defer   a zone that fails (SERVFAIL, timeout): skip it, or
 *                                answer 4xx (default skip; either way recorded and logged)
 *   skip_private: bool           no lookups for loopback, RFC 1918, link-local, CGNAT, ULA
 *                                clients (default true)
 *   allow_immunity: all | [plugin]   what an allow-list hit exempts the client from:
 *                                every immune-able plugin (default) or the ones named
 *
 * Return codes: with `codes` and/or `bitmask` only those answers count;
 * anything else is ignored and recorded (lists answer 127.0.0.1, 127.0.0.255,
 * 127.0.1.255 or 127.255.255.x when they refuse a query, which must not block
 * everyone). Without either, any 127.0.0.0/8 answer except those counts.
 *
 * Verdicts: a listing is a 5xx with the message; by default at RCPT (as in
 * qpsmtpd) so a listed client can still reach postmaster and abuse — list
 * dnsbl before rcpt_ok, whose OK ends the rcpt chain. `reject_at: connect`
 * refuses at the greeting standalone (behind Postfix, and for a client a
 * chained proxy handed over by XCLIENT, the core delivers it at MAIL/RCPT).
 * An allow-list hit skips the block lists and makes the client
 * immune for the connection. A failed lookup is never read as "not listed":
 * it is recorded (err) and logged, and with `defer` answers 4xx unless
 * another zone lists the client; an allow list that failed while a block list
 * lists the client defers too, since the client might have been allow-listed.
 *
 * Relay clients never get here (the core's immunity). Results: pass = zones
 * that do not list the client, fail = zones that do (details `listings` with
 * zone, item, codes, reason), err = failed zones, `allow:<zone>` for an allow-list hit.
 * Needs the shared resolver (config `dns:`).
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { exemptRecipient, exemptRecipientsOption, verdictForRecipient } from '../src/plugin/reject-at';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { declined, denysoft, type Verdict } from '../src/plugin/decision';
import { plainIp, reversedIp } from '../src/dns/names';
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
} from '../src/dns/lists';

const PLACEHOLDERS = ['ip', 'zone', 'reason', 'txt', 'code', 'item'] as const;

const zoneSchema = zoneEntry({
  ...zoneFields(PLACEHOLDERS),
  type: z.enum(['block', 'allow']).default('block'),
  ipv4: z.boolean().default(true),
  ipv6: z.boolean().default(true),
});

/** What the connection keeps: the lookups started at connect and what the allow lists said. */
interface ClientLookups {
  ip: string;
  /** Why nothing was looked up. */
  skipped?: string;
  allow: Promise<ListLookup[]>;
  block: Promise<ListLookup[]>;
  allowChecked?: boolean;
  allowedBy?: ListLookup;
  allowFailed: ListLookup[];
}

export default definePlugin({
  description: 'DNS block and allow lists for the client IP (IPv4 and IPv6)',
  options: z
    .object({
      zones: z.array(zoneSchema).min(1),
      reject_at: z.enum(['connect', 'mail', 'rcpt']).default('rcpt'),
      exempt_recipients: exemptRecipientsOption,
      message: templateSchema(PLACEHOLDERS).default('Your address {ip} is listed in {zone}: {reason}'),
      on_lookup_error: z.enum(['skip', 'defer']).default('skip'),
      skip_private: z.boolean().default(true),
      allow_immunity: z.union([z.literal('all'), z.array(z.string().min(1)).min(1)]).default('all'),
    })
    .strict(),
  create(opts, env) {
    const zones = opts.zones.map((z) => ({ list: new ListZone(z), type: z.type, ipv4: z.ipv4, ipv6: z.ipv6, message: z.message }));
    const policy = policyLookup(
      zones.map((z) => z.list),
      opts.on_lookup_error,
    );
    const templates = new Map(zones.map((z) => [z.list.name, z.message ?? opts.message]));
    const exempt = exemptRecipient(opts.exempt_recipients);
    // A verdict per transaction, so MAIL and every RCPT see the same one and results are recorded once.
    const verdicts = new WeakMap<object, Promise<Verdict>>();

    const messageFor = (l: ListLookup): string =>
      renderMessage(templates.get(l.zone)!, { ip: l.item, item: l.item, zone: l.zone, reason: l.reason, txt: l.txt, code: l.codes.join(', ') });

    const start = (ctx: HookContext): ClientLookups => {
      const ip = plainIp(ctx.conn.client.addr);
      const family = isIP(ip);
      const none = Promise.resolve([] as ListLookup[]);
      let state: ClientLookups;
      if (!family) state = { ip, skipped: 'no client address', allow: none, block: none, allowFailed: [] };
      else if (opts.skip_private && isPrivateAddress(ip)) state = { ip, skipped: `private address ${ip}`, allow: none, block: none, allowFailed: [] };
      else {
        const label = reversedIp(ip);
        const asked = zones.filter((z) => (family === 4 ? z.ipv4 : z.ipv6));
        const query = (type: 'block' | 'allow') => Promise.all(asked.filter((z) => z.type === type).map((z) => z.list.lookup(env.dns, ip, label)));
        state = { ip, allow: query('allow'), block: query('block'), allowFailed: [] };
        if (!asked.length) state.skipped = `no zone for IPv${family}`;
      }
      ctx.conn.notes[ctx.name] = state;
      return state;
    };

    /** The lookups for the current client; started here if connect did not run for it (e.g. a reload mid-session). */
    const lookupsFor = (ctx: HookContext): ClientLookups => {
      const s = ctx.conn.notes[ctx.name] as ClientLookups | undefined;
      return s && s.ip === plainIp(ctx.conn.client.addr) ? s : start(ctx);
    };

    const checkAllowLists = async (ctx: HookContext, s: ClientLookups): Promise<void> => {
      if (s.allowChecked) return;
      const lookups = await s.allow;
      s.allowChecked = true;
      s.allowFailed = lookups.filter((l) => l.failed);
      if (s.allowFailed.length) {
        ctx.result({ err: failureNotes(s.allowFailed).map((n) => `allow ${n}`) });
        ctx.log.warn(`allow list lookup failed for ${s.ip}: ${s.allowFailed.map((l) => `${l.zone} ${l.status}`).join(', ')}`);
      }
      const hit = lookups.find((l) => l.listed);
      if (!hit) return;
      s.allowedBy = hit;
      if (opts.allow_immunity === 'all') ctx.conn.immunity.all = true;
      else for (const name of opts.allow_immunity) ctx.conn.immunity.plugins.add(name);
      ctx.result({ pass: `allow:${hit.zone}`, allowed: listingDetail(hit) });
      ctx.log.info(`${s.ip} is allow-listed in ${hit.zone} (${hit.codes.join(', ')})`);
    };

    const evaluate = async (ctx: HookContext, s: ClientLookups): Promise<Verdict> => {
      const lookups = await s.block;
      const summary = summarize(lookups, policy);
      const { listed, failed } = summary;
      ctx.result({
        pass: lookups.filter((l) => !l.listed && !l.failed).map((l) => l.zone),
        fail: listed.map((l) => l.zone),
        err: failureNotes(failed),
        msg: ignoredNotes(lookups),
        ip: s.ip,
        ...(listed.length ? { listings: listed.map(listingDetail) } : {}),
      });
      if (listed.length) ctx.log.info(`${s.ip} is listed in ${listed.map((l) => `${l.zone} (${l.codes.join(', ')})`).join(', ')}`);
      if (failed.length) ctx.log.warn(`block list lookup failed for ${s.ip}: ${failed.map((l) => `${l.zone} ${l.status}`).join(', ')}`);
      const allowDeferring = s.allowFailed.filter((l) => policy(l.zone) === 'defer');
      if (listed.length && allowDeferring.length) {
        return denysoft(`Could not check ${allowDeferring.map((l) => l.zone).join(', ')}, try again later`, '4.4.3');
      }
      return listVerdict(summary, messageFor);
    };

    const verdictFor = (ctx: HookContext): Promise<Verdict> => {
      const key = ctx.txn ?? ctx.conn;
      let v = verdicts.get(key);
      if (!v) {
        v = (async () => {
          const s = lookupsFor(ctx);
          if (s.skipped) {
            ctx.result({ skip: s.skipped });
            return declined();
          }
          await checkAllowLists(ctx, s);
          if (s.allowedBy) {
            // Also when allow_immunity names other plugins only: an allow-listed client skips the block lists.
            ctx.result({ skip: `allow-listed in ${s.allowedBy.zone}` });
            return declined();
          }
          return evaluate(ctx, s);
        })();
        verdicts.set(key, v);
      }
      return v;
    };

    return {
      async connect(ctx) {
        const s = start(ctx);
        if (s.skipped) {
          ctx.result({ skip: s.skipped });
          return;
        }
        // Allow lists first, so that plugins after this one already see the immunity.
        await checkAllowLists(ctx, s);
        if (opts.reject_at === 'connect') return verdictFor(ctx);
      },
      async mail(ctx) {
        const v = await verdictFor(ctx);
        if (opts.reject_at === 'mail') return v;
      },
      async rcpt(ctx, rcpt) {
        if (opts.reject_at !== 'rcpt') return;
        const v = await verdictFor(ctx);
        return verdictForRecipient(ctx, rcpt, v, exempt);
      },
    };
  },
});
