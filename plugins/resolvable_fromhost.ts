/**
 * resolvable_fromhost — the envelope sender's domain must be able to receive
 * mail (bounces go there): it must have MX records, or A/AAAA records
 * (RFC 5321 5.1: the implicit MX), and no null MX.
 *
 * Options:
 *   reject_at: mail | rcpt          where a bad sender domain is refused (default rcpt, so
 *                                   postmaster and abuse stay reachable; list it before rcpt_ok)
 *   exempt_recipients: string[]     local parts or addresses still accepted at RCPT
 *                                   (default [postmaster, abuse])
 *   check_mx_hosts: boolean         the mail hosts (the MX targets, or the domain itself
 *                                   without MX, or an address literal) must have at least one
 *                                   address outside reserved_networks (default true)
 *   reserved_networks: string[]     addresses no public mail host has (default: loopback,
 *                                   RFC 1918, CGNAT, link-local, documentation, benchmarking,
 *                                   multicast, reserved; ULA, link-local, documentation and
 *                                   multicast IPv6 — see RESERVED_NETWORKS)
 *   max_mx: integer                 MX hosts looked up at most, lowest preference first (default 10)
 *   on_dns_error: defer | skip      a DNS failure (SERVFAIL, timeout): answer 4xx or let the
 *                                   sender through, recorded (default defer)
 *
 * The sender domain is looked up at MAIL (IDN domains as A-labels):
 *   null sender <>                      pass (bounces have no domain to check)
 *   not a valid domain, single label    DENY 5.1.7 (fail invalid_domain)
 *   NXDOMAIN                            DENY 5.1.8 "Sender domain ... does not exist" (fail nxdomain)
 *   null MX (RFC 7505 `MX 0 .`)          DENY 5.7.27 (fail null_mx)
 *   no MX and no A/AAAA (NODATA)        DENY 5.1.8 (fail no_mx_or_a)
 *   MX hosts that do not resolve        DENY 5.1.8 (fail mx_unresolvable) — check_mx_hosts
 *   only reserved addresses             DENY 5.1.8 (fail reserved_address) — check_mx_hosts
 *   SERVFAIL, timeout, REFUSED          DENYSOFT 4.4.3 (err), or pass with on_dns_error skip
 *   otherwise                           pass mx / a (with check_mx_hosts: host names)
 * An address literal sender (`user@[192.0.2.1]`) needs no DNS: it passes
 * unless check_mx_hosts finds it reserved. An MX set that mixes the null MX
 * with real ones (against RFC 7505) is judged by the real ones. When some MX
 * hosts resolve and others fail, one public address is enough; with none
 * found, any DNS failure among them makes it temporary, never a rejection.
 *
 * check_mx_hosts is on by default: a domain whose mail hosts are all in
 * private or reserved ranges cannot receive a bounce from the Internet
 * either, and the lookups are a few cached A/AAAA queries. Turn it off (or
 * set reserved_networks: []) on an internal network whose senders' domains
 * point to private addresses.
 *
 * Results (for karma: resolvable_fromhost fail -2): pass mx/a, fail as
 * above, err for DNS failures, skip for the null sender and literals;
 * details `domain`, `mx`. Relay clients and whitelisted senders skip the
 * plugin (the core's immunity). Needs the shared resolver (config `dns:`).
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { exemptRecipient, exemptRecipientsOption, verdictForRecipient } from '../src/plugin/reject-at';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { Decision, declined, deny, denysoft, type Verdict } from '../src/plugin/decision';
import { isFailure, type DnsAnswer } from '../src/dns/resolver';
import { asciiDomain, isMailDomain, normaliseHost } from '../src/dns/domain';
import { CidrList, parseCidr } from '../src/util/cidr';
import type { Address } from '../src/session/state';

/** IANA special-purpose ranges that are not globally reachable (RFC 6890 and successors). */
export const RESERVED_NETWORKS = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.0.2.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '198.51.100.0/24',
  '203.0.113.0/24',
  '224.0.0.0/4',
  '240.0.0.0/4',
  '::/128',
  '::1/128',
  '100::/64',
  '2001:db8::/32',
  'fc00::/7',
  'fe80::/10',
  'ff00::/8',
];

const TEMP_TEXT = (domain: string) => `Temporary DNS failure looking up sender domain ${domain}, try again later`;

export default definePlugin({
  description: 'the sender domain must exist and accept mail: MX or A/AAAA, no null MX, mail hosts with public addresses',
  options: z
    .object({
      reject_at: z.enum(['mail', 'rcpt']).default('rcpt'),
      exempt_recipients: exemptRecipientsOption,
      check_mx_hosts: z.boolean().default(true),
      reserved_networks: z
        .array(z.string().refine((s) => parseCidr(s) !== undefined, 'an IP address or CIDR network'))
        .default(RESERVED_NETWORKS),
      max_mx: z.number().int().min(1).max(50).default(10),
      on_dns_error: z.enum(['defer', 'skip']).default('defer'),
    })
    .strict(),
  create(opts, env) {
    const reserved = new CidrList(opts.reserved_networks);
    const exempt = exemptRecipient(opts.exempt_recipients);
    const publicAddress = (ip: string): boolean => !reserved.contains(ip);

    /** What the lookups of one sender domain came to. */
    interface Outcome {
      verdict: Verdict;
      result: Record<string, unknown>;
    }

    const temporary = (domain: string, error: string, details: Record<string, unknown> = {}): Outcome => ({
      verdict: opts.on_dns_error === 'defer' ? denysoft(TEMP_TEXT(domain), '4.4.3') : declined(),
      result: { err: error, domain, ...details },
    });
    const refused = (label: string, text: string, enhanced: string, details: Record<string, unknown>): Outcome => ({
      verdict: deny(text, enhanced),
      result: { fail: label, ...details },
    });

    /** The mail hosts' addresses: pass when one is public; reserved-only, unresolvable or failed otherwise. */
    const judgeHosts = (domain: string, hosts: string[], answers: DnsAnswer<'A' | 'AAAA'>[], label: 'mx' | 'a', details: Record<string, unknown>): Outcome => {
      const addresses = answers.flatMap((a) => a.records);
      if (addresses.some(publicAddress)) return { verdict: declined(), result: { pass: label, ...details } };
      const failed = answers.map((a, i) => (isFailure(a.status) ? `A/AAAA ${hosts[i]}: ${a.status}` : '')).filter(Boolean);
      if (failed.length) return temporary(domain, failed.join(', '), details);
      if (addresses.length) {
        return refused('reserved_address', `Sender domain ${domain} has mail hosts only in private or reserved address ranges (${addresses.join(', ')})`, '5.1.8', details);
      }
      return refused('mx_unresolvable', `Mail exchangers of sender domain ${domain} do not resolve (${hosts.join(', ')})`, '5.1.8', details);
    };

    const check = async (sender: Address): Promise<Outcome> => {
      if (!sender.address) return { verdict: declined(), result: { skip: 'null sender' } };
      const host = normaliseHost(sender.host);
      if (host.startsWith('[') && host.endsWith(']')) {
        const ip = host.slice(1, -1).replace(/^ipv6:/i, '');
        if (!isIP(ip)) return refused('invalid_domain', `Sender domain ${sender.host} is not a valid address literal`, '5.1.7', { domain: host });
        if (opts.check_mx_hosts && !publicAddress(ip)) {
          return refused('reserved_address', `Sender address literal ${sender.host} is a private or reserved address`, '5.1.8', { domain: host });
        }
        return { verdict: declined(), result: { skip: 'address literal', domain: host } };
      }
      const domain = asciiDomain(host);
      if (!domain.includes('.') || !isMailDomain(domain)) {
        return refused('invalid_domain', `Sender domain ${sender.host || '(none)'} is not a valid fully qualified domain name`, '5.1.7', { domain: host });
      }
      const mx = await env.dns.query(domain, 'MX');
      if (mx.status === 'nxdomain') return refused('nxdomain', `Sender domain ${domain} does not exist`, '5.1.8', { domain });
      if (isFailure(mx.status)) return temporary(domain, `MX ${domain}: ${mx.status}`, { domain });
      if (mx.status === 'ok') {
        const real = mx.records.filter((r) => r.exchange !== '');
        if (!real.length) return refused('null_mx', `Sender domain ${domain} does not accept mail (null MX)`, '5.7.27', { domain });
        const hosts = [...new Set([...real].sort((a, b) => a.priority - b.priority).map((r) => r.exchange))];
        const details = { domain, mx: hosts };
        if (!opts.check_mx_hosts) return { verdict: declined(), result: { pass: 'mx', ...details } };
        const looked = hosts.slice(0, opts.max_mx);
        return judgeHosts(domain, looked, await Promise.all(looked.map((h) => env.dns.addresses(h))), 'mx', details);
      }
      // NODATA for MX: the domain itself is the mail host (RFC 5321 5.1).
      const a = await env.dns.addresses(domain);
      if (isFailure(a.status)) return temporary(domain, `A/AAAA ${domain}: ${a.status}`, { domain });
      if (a.status !== 'ok') return refused('no_mx_or_a', `Sender domain ${domain} has no MX or A/AAAA record`, '5.1.8', { domain });
      if (!opts.check_mx_hosts) return { verdict: declined(), result: { pass: 'a', domain } };
      return judgeHosts(domain, [domain], [a], 'a', { domain });
    };

    /** The transaction's verdict, looked up once (at MAIL, or at the first RCPT if MAIL was not seen). */
    const verdictFor = (ctx: HookContext, sender: Address): Promise<Verdict> => {
      const notes = (ctx.txn ?? ctx.conn).notes;
      const kept = notes[ctx.name] as Promise<Verdict> | undefined;
      if (kept) return kept;
      const verdict = check(sender).then(({ verdict, result }) => {
        ctx.result(result);
        if (verdict.decision !== Decision.DECLINED) ctx.log.info(`sender ${sender.address}: ${verdict.message}`);
        else if (result.err) ctx.log.warn(`sender ${sender.address}: DNS failure ignored (on_dns_error: skip): ${String(result.err)}`);
        return verdict;
      });
      notes[ctx.name] = verdict;
      return verdict;
    };

    return {
      async mail(ctx, sender) {
        const v = await verdictFor(ctx, sender);
        if (opts.reject_at === 'mail') return v;
      },
      async rcpt(ctx, rcpt) {
        if (opts.reject_at !== 'rcpt') return;
        const sender = ctx.txn?.sender;
        if (!sender) return;
        const v = await verdictFor(ctx, sender);
        return verdictForRecipient(ctx, rcpt, v, exempt);
      },
    };
  },
});
