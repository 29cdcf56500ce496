/**
 * helo — checks on the HELO/EHLO name (after qpsmtpd's helo plugin).
 *
 * Options:
 *   policy: lenient | rfc | strict   which checks run (default lenient):
 *       lenient: bad_helo, localhost, our_name, ip_literal
 *       rfc:     lenient's + not_fqdn, no_dns
 *       strict:  rfc's + address_literal, dns_match
 *   checks: { <check>: boolean }     turns single checks on or off over the policy's set (default {})
 *   bad_helo: string[]               refused names (default []): `name` exact, `.domain` any name
 *                                    below it, `/regex/flags` (case-insensitive); optionally
 *                                    followed by whitespace and the reason given to the client
 *   bad_helo_file: string            more entries, one a line, `#` comments; relative to the config dir
 *   our_names: string[]              our own names besides the config's `hostname` (default []):
 *                                    `mx.example.com` exact, `.example.com` any name below it
 *   match: either | forward | reverse | both
 *                                    what dns_match requires (default either)
 *   on_dns_error: skip | defer       a DNS failure (SERVFAIL, timeout): record it and go on,
 *                                    or answer 4xx (default skip)
 *   reject_at: helo | mail | rcpt    where a failure is refused (default rcpt)
 *   exempt_recipients: string[]      local parts or addresses still accepted at RCPT
 *                                    (default [postmaster, abuse])
 *
 * Checks (result labels in parentheses):
 *   bad_helo         the name is in the bad_helo list (fail bad_helo)
 *   localhost        `localhost` or `localhost.localdomain` from a client that is not loopback (fail localhost)
 *   our_name         the client claims our `hostname` or one of our_names, from outside
 *                    loopback (fail our_name): our own servers belong in relay_clients
 *   ip_literal       a bare IP (`192.0.2.1`) is no valid HELO (fail plain_ip); an address
 *                    literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) must be the client's
 *                    address (fail forged_literal / invalid_literal, pass literal)
 *   address_literal  any address literal is refused (fail address_literal)
 *   not_fqdn         the name needs a dot and LDH labels (fail not_fqdn / invalid_name)
 *   no_dns           the name has A or AAAA records (fail no_dns on NXDOMAIN,
 *                    no_address when it exists without address records; pass dns)
 *   dns_match        the name matches the client: `forward`, its A/AAAA include the
 *                    client address; `reverse`, the client's reverse DNS name is the HELO
 *                    name or in the same registrable domain (mx1.example.com for
 *                    mx0.example.com); `either` (qpsmtpd's no_matching_dns) fails only
 *                    when neither matches (fail no_match; pass forward_match / reverse_match)
 *
 * The cheap checks run first; when one fails no DNS lookup is made. Names
 * that are literals or not valid domain names skip the DNS checks (recorded).
 * A DNS failure is never read as "does not exist": it is recorded as `err`
 * and passes, unless `on_dns_error: defer` makes it a temporary rejection.
 * RFC 5321 4.1.4 forbids refusing mail only because the HELO name does not
 * match the client's address, which is why dns_match is strict's alone; try
 * it with `reject: false` first (the fail still counts for karma: -1).
 *
 * The client is `conn.client`: behind Postfix the XFORWARD HELO and ADDR
 * (and NAME as the reverse name), standalone the TCP peer and the name it
 * greeted with. The reverse name is the verified name (XFORWARD NAME, or the
 * one fcrdns confirmed), else fcrdns's PTR names, else (standalone, no
 * fcrdns) a PTR lookup of our own.
 *
 * The checks start when the name is given, so the EHLO reply is not held up
 * by DNS; with reject_at mail or rcpt they are awaited there. The default
 * refuses at RCPT so that postmaster and abuse stay reachable from a
 * misconfigured server, and a sender the whitelist exempts gets through;
 * keep helo before rcpt_ok, whose OK ends the rcpt chain. With reject_at
 * helo the EHLO itself is refused in standalone mode; behind Postfix (or
 * with deferred_rejection.connection) the core holds it to
 * deferred_rejection.stage. Relay clients and whitelisted clients skip the
 * plugin (the core's immunity). Results go to the connection (karma: helo
 * fail -1); a client that sends no HELO is recorded as skip, never refused.
 * Needs the shared resolver (config `dns:`) for no_dns and dns_match.
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { z } from 'zod';
import { exemptRecipient, exemptRecipientsOption, verdictForRecipient } from '../src/plugin/reject-at';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { declined, deny, denysoft, type Verdict } from '../src/plugin/decision';
import { isFailure } from '../src/dns/resolver';
import { asciiDomain, isMailDomain, normaliseHost, registrableDomain } from '../src/dns/domain';
import { CidrList } from '../src/util/cidr';
import type { FcrdnsNote } from './fcrdns';

export const CHECKS = ['bad_helo', 'localhost', 'our_name', 'ip_literal', 'address_literal', 'not_fqdn', 'no_dns', 'dns_match'] as const;
export type HeloCheck = (typeof CHECKS)[number];

export const POLICIES: Record<'lenient' | 'rfc' | 'strict', readonly HeloCheck[]> = {
  lenient: ['bad_helo', 'localhost', 'our_name', 'ip_literal'],
  rfc: ['bad_helo', 'localhost', 'our_name', 'ip_literal', 'not_fqdn', 'no_dns'],
  strict: ['bad_helo', 'localhost', 'our_name', 'ip_literal', 'not_fqdn', 'no_dns', 'address_literal', 'dns_match'],
};

const LOCALHOST = new Set(['localhost', 'localhost.localdomain']);
const LOOPBACK = new CidrList(['127.0.0.0/8', '::1/128']);

interface NameEntry {
  entry: string;
  reason?: string;
  test(name: string): boolean;
}

/** `name`, `.domain` (names below it) or `/regex/flags`, then an optional reason. */
export function parseNameEntry(line: string, where: string): NameEntry {
  const text = line.trim();
  const re = /^\/((?:\\.|[^\\/])+)\/([a-z]*)(?:\s+(.*))?$/.exec(text);
  if (text.startsWith('/')) {
    if (!re) throw new Error(`${where}: not a /regex/ entry: ${text}`);
    let pattern: RegExp;
    try {
      // g and y would make test() stateful; matching ignores case like DNS does.
      pattern = new RegExp(re[1]!, re[2]!.replace(/[gyi]/g, '') + 'i');
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
    return { entry: `/${re[1]}/${re[2]}`, reason: re[3]?.trim() || undefined, test: (n) => pattern.test(n) };
  }
  const m = /^(\S+)(?:\s+(.*))?$/.exec(text);
  if (!m) throw new Error(`${where}: empty entry`);
  const name = normaliseHost(m[1]!);
  const reason = m[2]?.trim() || undefined;
  if (name.startsWith('.')) {
    if (name.length < 2) throw new Error(`${where}: empty domain in ${m[1]}`);
    return { entry: m[1]!, reason, test: (n) => n.endsWith(name) };
  }
  return { entry: m[1]!, reason, test: (n) => n === name };
}

async function loadEntries(entries: readonly string[], file: string | undefined, configDir: string): Promise<NameEntry[]> {
  const out = entries.map((e, i) => parseNameEntry(e, `bad_helo[${i}]`));
  if (file) {
    const path = resolve(configDir, file);
    (await readFile(path, 'utf8')).split(/\r?\n/).forEach((line, i) => {
      const text = line.replace(/(^|\s)#.*$/, '').trim();
      if (text) out.push(parseNameEntry(text, `${path}:${i + 1}`));
    });
  }
  return out;
}

function sameAddress(a: string, b: string): boolean {
  try {
    return new CidrList([a]).contains(b);
  } catch {
    return false;
  }
}

/** What an address literal holds: the IP, or undefined when the brackets hold no address. */
function literalAddress(helo: string): string | undefined {
  const inner = helo.slice(1, -1).replace(/^ipv6:/i, '');
  return isIP(inner) ? inner : undefined;
}

/** What the checks leave in conn.notes[<instance>]. */
interface Pending {
  helo: string;
  addr: string;
  verdict: Promise<Verdict>;
}

const MATCH_TEXT = {
  either: 'your address {addr} or its reverse DNS name',
  forward: 'your address {addr}',
  reverse: 'the reverse DNS name of {addr}',
  both: 'your address {addr} and its reverse DNS name',
} as const;

export default definePlugin({
  description: 'HELO/EHLO name checks: bad names, localhost, our own name, IP literals, FQDN, DNS, match with the client',
  options: z
    .object({
      policy: z.enum(['lenient', 'rfc', 'strict']).default('lenient'),
      checks: z.object(Object.fromEntries(CHECKS.map((c) => [c, z.boolean().optional()])) as Record<HeloCheck, z.ZodOptional<z.ZodBoolean>>).strict().default({}),
      bad_helo: z.array(z.string().min(1)).default([]),
      bad_helo_file: z.string().min(1).optional(),
      our_names: z.array(z.string().regex(/^\.?[^\s.][^\s]*$/, 'a host name, or .domain')).default([]),
      match: z.enum(['either', 'forward', 'reverse', 'both']).default('either'),
      on_dns_error: z.enum(['skip', 'defer']).default('skip'),
      reject_at: z.enum(['helo', 'mail', 'rcpt']).default('rcpt'),
      exempt_recipients: exemptRecipientsOption,
    })
    .strict(),
  async create(opts, env) {
    const enabled = new Set<HeloCheck>(POLICIES[opts.policy]);
    for (const [check, on] of Object.entries(opts.checks) as [HeloCheck, boolean | undefined][]) {
      if (on === true) enabled.add(check);
      else if (on === false) enabled.delete(check);
    }
    const badList = await loadEntries(opts.bad_helo, opts.bad_helo_file, env.configDir);
    const ours = [...(env.hostname ? [parseNameEntry(env.hostname, 'hostname')] : []), ...opts.our_names.map((n, i) => parseNameEntry(n, `our_names[${i}]`))];
    const exempt = exemptRecipient(opts.exempt_recipients);
    if (enabled.has('our_name') && !ours.length) env.log.debug('our_name: no hostname configured and no our_names: nothing to compare');

    /** The client's reverse DNS names as far as they are known, and whether looking them up failed. */
    const reverseNames = async (ctx: HookContext): Promise<{ names: string[]; error?: string }> => {
      const c = ctx.conn.client;
      // Postfix sends [UNAVAILABLE] when it has no verified name.
      if (c.name && !/^\[.*\]$/.test(c.name)) return { names: [normaliseHost(c.name)] };
      const note = ctx.conn.notes.fcrdns as FcrdnsNote | undefined;
      if (note) return { names: note.names };
      if (c.via !== 'tcp') return { names: [] };
      const ptr = await env.dns.ptr(c.addr);
      if (isFailure(ptr.status)) return { names: [], error: `PTR ${ptr.status}` };
      return { names: ptr.records.map(normaliseHost) };
    };

    const evaluate = async (ctx: HookContext, raw: string): Promise<Verdict> => {
      const addr = ctx.conn.client.addr;
      const helo = normaliseHost(raw);
      const loopback = LOOPBACK.contains(addr);
      const pass: string[] = [];
      const fail: string[] = [];
      const skip: string[] = [];
      const err: string[] = [];
      let verdict: Verdict | undefined;
      let temporary: string | undefined;
      const failed = (label: string, text: string): void => {
        fail.push(label);
        verdict ??= deny(`HELO ${raw}: ${text}`, '5.7.1');
      };

      const bracketed = helo.startsWith('[') && helo.endsWith(']');
      const plainIp = isIP(helo) !== 0;
      const name = bracketed || plainIp ? '' : asciiDomain(helo);

      if (enabled.has('bad_helo')) {
        const hit = badList.find((e) => e.test(helo) || (!!name && e.test(name)));
        if (hit) failed('bad_helo', hit.reason ?? 'not accepted here');
      }
      if (enabled.has('localhost') && LOCALHOST.has(helo) && !loopback) failed('localhost', 'you are not localhost');
      if (enabled.has('our_name') && !loopback && ours.some((e) => e.test(helo) || (!!name && e.test(name)))) {
        failed('our_name', 'that is our own name, not yours');
      }
      if (enabled.has('ip_literal')) {
        if (plainIp) failed('plain_ip', `a bare IP address is not a valid HELO name, use an address literal [${raw}]`);
        else if (bracketed) {
          const ip = literalAddress(helo);
          if (!ip) failed('invalid_literal', 'not a valid address literal');
          else if (!sameAddress(ip, addr)) failed('forged_literal', `that is not your address (${addr})`);
          else pass.push('literal');
        }
      }
      if (enabled.has('address_literal') && (bracketed || plainIp)) failed('address_literal', 'address literals are not accepted here, use your host name');
      const fqdn = !!name && name.includes('.') && isMailDomain(name);
      if (enabled.has('not_fqdn') && !bracketed && !plainIp) {
        if (name && !name.includes('.')) failed('not_fqdn', 'not a fully qualified domain name (RFC 5321 2.3.5)');
        else if (!fqdn) failed('invalid_name', 'not a valid domain name');
        else pass.push('fqdn');
      }

      const dnsChecks = (['no_dns', 'dns_match'] as const).filter((c) => enabled.has(c));
      if (dnsChecks.length) {
        if (bracketed || plainIp) skip.push(`${dnsChecks.join(',')}: address literal`);
        else if (!fqdn) skip.push(`${dnsChecks.join(',')}: not a domain name`);
        else if (verdict) skip.push(`${dnsChecks.join(',')}: already failed`);
        else {
          const found = await env.dns.addresses(name);
          if (isFailure(found.status)) err.push(`A/AAAA ${name}: ${found.status}`);
          if (enabled.has('no_dns')) {
            if (found.status === 'ok') pass.push('dns');
            else if (found.status === 'nxdomain') failed('no_dns', 'no such host in the DNS');
            else if (found.status === 'nodata') failed('no_address', 'the name has no address (A/AAAA) in the DNS');
            else temporary = 'temporary DNS failure, try again later';
          }
          if (enabled.has('dns_match') && !verdict) {
            const fwd = isFailure(found.status) ? undefined : found.records.some((r) => sameAddress(r, addr));
            let rev: boolean | undefined;
            if (opts.match !== 'forward' && !(opts.match === 'either' && fwd)) {
              const rn = await reverseNames(ctx);
              const domain = registrableDomain(name);
              const hit = rn.names.some((n) => n === name || (!!domain && registrableDomain(n) === domain));
              if (rn.error && !hit) err.push(rn.error);
              rev = rn.error && !hit ? undefined : hit;
            }
            if (fwd) pass.push('forward_match');
            if (rev) pass.push('reverse_match');
            const outcome = { either: fwd || rev ? true : fwd === false && rev === false ? false : undefined, forward: fwd, reverse: rev, both: fwd === false || rev === false ? false : fwd && rev ? true : undefined }[opts.match];
            if (outcome === false) failed('no_match', `the name does not match ${MATCH_TEXT[opts.match].replace('{addr}', addr)}`);
            else if (outcome === undefined) temporary ??= 'temporary DNS failure, try again later';
          } else if (enabled.has('dns_match')) skip.push('dns_match: already failed');
        }
      }

      // A property of the connection, whichever hook happened to ask first.
      ctx.conn.results.add(ctx.name, { pass, fail, skip, err, helo: raw, policy: opts.policy });
      if (fail.length) ctx.log.info(`HELO ${raw} from ${addr}: ${fail.join(', ')}`);
      if (err.length) ctx.log.warn(`HELO ${raw} from ${addr}: DNS lookup failed: ${err.join(', ')}`);
      if (verdict) return verdict;
      if (temporary && opts.on_dns_error === 'defer') return denysoft(`HELO ${raw}: ${temporary}`, '4.4.3');
      return declined();
    };

    /** The verdict for the connection's current HELO, checked once per name and client. */
    const verdictFor = (ctx: HookContext): Promise<Verdict> | undefined => {
      const helo = ctx.conn.client.helo;
      if (!helo) return undefined;
      const addr = ctx.conn.client.addr;
      const kept = ctx.conn.notes[ctx.name] as Pending | undefined;
      if (kept && kept.helo === helo && kept.addr === addr) return kept.verdict;
      const verdict = evaluate(ctx, helo);
      // Awaited later (or never, when reject_at is past the session's end): no unhandled rejection meanwhile.
      verdict.catch(() => undefined);
      ctx.conn.notes[ctx.name] = { helo, addr, verdict } satisfies Pending;
      return verdict;
    };

    const noHelo = (ctx: HookContext): void => {
      const key = `${ctx.name}:no_helo`;
      if (ctx.conn.notes[key]) return;
      ctx.conn.notes[key] = true;
      ctx.conn.results.add(ctx.name, { skip: 'no HELO' });
    };

    const greeting = async (ctx: HookContext): Promise<Verdict | undefined> => {
      const v = verdictFor(ctx);
      if (opts.reject_at === 'helo' && v) return v;
    };

    return {
      helo: greeting,
      ehlo: greeting,
      async mail(ctx) {
        const v = verdictFor(ctx);
        if (!v) return noHelo(ctx);
        if (opts.reject_at === 'mail') return v;
      },
      async rcpt(ctx, rcpt) {
        if (opts.reject_at !== 'rcpt') return;
        const pending = verdictFor(ctx);
        if (!pending) return noHelo(ctx);
        const v = await pending;
        return verdictForRecipient(ctx, rcpt, v, exempt);
      },
    };
  },
});
