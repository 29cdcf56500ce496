/**
 * whitelist — clients, HELO names, senders and recipients exempt from the
 * other checks: from all immune-able plugins, or only from the ones named.
 *
 * Options (each list also from a file, one entry a line):
 *   hosts: entries          client IPs and networks (192.0.2.7, 198.51.100.0/24, 2001:db8::/32)
 *   hosts_file: string
 *   helos: entries          HELO/EHLO names (mx.partner.example; .partner.example = any name below it)
 *   helos_file: string
 *   senders: entries        envelope senders (user@domain, @domain or domain, @.domain = subdomains)
 *   senders_file: string
 *   recipients: entries     recipients, same syntax, plus user@ for that user at any domain
 *   recipients_file: string (postmaster@ also matches <postmaster>)
 *   check_interval: number  seconds between looks at the files for changes (default 2)
 *
 * An entry is a string (exempt from every immune-able plugin) or names the
 * plugins it exempts from: `{ net: 203.0.113.0/24, plugins: [greylisting] }`
 * (a farm of load-balanced senders that never retries from the same
 * address), `{ name: ..., plugins }` for HELO names, `{ address: ...,
 * plugins }` for senders and recipients. A plugin name covers all its
 * instances (`dnsbl` covers `dnsbl:spamhaus`). In a file: the entry, then
 * optionally the plugin names (spaces or commas), `#` comments:
 *
 *   203.0.113.0/24   greylisting        # example.net's outbound farm
 *   192.0.2.25
 *
 * Files are relative to the config dir and re-read when they change; a
 * changed file with an error is logged and the previous version kept.
 *
 * Scope: a host (for Postfix mode the client XFORWARD names) or HELO entry
 * exempts the whole connection, a sender entry the transaction, a recipient
 * entry only that recipient's RCPT: its rcpt checks and rejections held back
 * to RCPT (deferred_rejection.stage: rcpt), never the other recipients of the
 * same transaction, nor the message checks after DATA, which concern every
 * recipient (a plugin may look at `Address.immunity` itself).
 *
 * ORDER MATTERS: the chain consults immunity as it goes, so list whitelist
 * before every plugin it should exempt, ideally first. A held-back rejection
 * (a DNSBL verdict deferred to MAIL or RCPT) is judged after the plugins ahead
 * of the first immune-able one, so a whitelist listed first also exempts
 * senders and recipients from those.
 *
 * The HELO name is whatever the client says; list names only where that is
 * enough. Never rejects; what matched is recorded as `pass` results
 * ("host 203.0.113.0/24 (greylisting)"). Not immune itself.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import type { Address, Immunity } from '../src/session/state';
import { CidrList, parseCidr } from '../src/util/cidr';
import { ReloadingFile } from '../src/util/reloading-file';

/** One whitelist entry: what it matches, and what it exempts from (undefined: everything). */
interface Entry {
  text: string;
  plugins?: string[];
  test(value: string): boolean;
}

type Kind = 'host' | 'helo' | 'sender' | 'recipient';

const normName = (s: string): string => s.trim().toLowerCase().replace(/\.$/, '');

function hostTest(text: string): (addr: string) => boolean {
  if (!parseCidr(text)) throw new Error(`not an IP address or network: "${text}"`);
  const list = new CidrList([text]);
  return (addr) => list.contains(addr);
}

function heloTest(text: string): (helo: string) => boolean {
  const name = normName(text);
  if (!name || /[\s@]/.test(name) || name === '.') throw new Error(`not a host name: "${text}"`);
  return name.startsWith('.') ? (helo) => normName(helo).endsWith(name) : (helo) => normName(helo) === name;
}

/** `user@domain`, `@domain`/`domain`, `@.domain`/`.domain` (below it), and for recipients `user@` (any domain). */
function addressTest(text: string, kind: 'sender' | 'recipient'): (address: string) => boolean {
  const t = text.trim().replace(/^<(.*)>$/, '$1').toLowerCase();
  const bad = (): never => {
    throw new Error(`not an address, @domain or domain: "${text}"`);
  };
  if (!t || /\s/.test(t) || t.split('@').length > 2) bad();
  const at = t.indexOf('@');
  const local = at < 0 ? '' : t.slice(0, at);
  const domain = normName(at < 0 ? t : t.slice(at + 1));
  const parts = (a: string): [string, string] => {
    const i = a.lastIndexOf('@');
    return i < 0 ? [a.toLowerCase(), ''] : [a.slice(0, i).toLowerCase(), normName(a.slice(i + 1))];
  };
  if (!domain) {
    // `user@`: a recipient such as postmaster@ or abuse@ at every domain we serve.
    if (!local || kind === 'sender') bad();
    return (a) => a !== '' && parts(a)[0] === local;
  }
  if (domain === '.' || (at < 0 && !domain.includes('.'))) bad();
  const sub = domain.startsWith('.');
  const domainOk = (d: string): boolean => (sub ? d.endsWith(domain) : d === domain);
  return (a) => {
    if (!a.includes('@')) return false;
    const [l, d] = parts(a);
    return (!local || l === local) && domainOk(d);
  };
}

function makeEntry(kind: Kind, text: string, plugins: string[] | undefined): Entry {
  const test = kind === 'host' ? hostTest(text) : kind === 'helo' ? heloTest(text) : addressTest(text, kind);
  return { text: text.trim(), ...(plugins ? { plugins } : {}), test };
}

/** A file of entries: one a line, then optionally the plugin names; `#` comments. */
function parseFile(kind: Kind): (text: string, path: string) => Entry[] {
  return (text, path) => {
    const entries: Entry[] = [];
    const problems: string[] = [];
    text.split(/\r?\n/).forEach((line, i) => {
      const m = /(?:^|\s)#/.exec(line);
      const body = (m ? line.slice(0, m.index) : line).trim();
      if (!body) return;
      const [first, ...rest] = body.split(/[\s,]+/);
      try {
        entries.push(makeEntry(kind, first!, rest.length ? rest : undefined));
      } catch (err) {
        problems.push(`${path}:${i + 1}: ${(err as Error).message}`);
      }
    });
    if (problems.length) throw new Error(problems.join('\n'));
    return entries;
  };
}

const pluginNames = z.array(z.string().min(1)).min(1);
const entries = <T extends z.ZodRawShape>(shape: T) =>
  z.array(z.union([z.string().min(1), z.object({ ...shape, plugins: pluginNames }).strict()])).default([]);

function grant(immunity: Immunity, hits: Entry[]): void {
  for (const h of hits) {
    if (!h.plugins) immunity.all = true;
    else for (const p of h.plugins) immunity.plugins.add(p);
  }
}

const describe = (kind: Kind, h: Entry): string => `${kind} ${h.text}${h.plugins ? ` (${h.plugins.join(',')})` : ''}`;

export default definePlugin({
  description: 'exempt listed clients, HELO names, senders and recipients from all or some of the other checks',
  options: z
    .object({
      hosts: entries({ net: z.string().min(1) }),
      hosts_file: z.string().min(1).optional(),
      helos: entries({ name: z.string().min(1) }),
      helos_file: z.string().min(1).optional(),
      senders: entries({ address: z.string().min(1) }),
      senders_file: z.string().min(1).optional(),
      recipients: entries({ address: z.string().min(1) }),
      recipients_file: z.string().min(1).optional(),
      check_interval: z.number().min(0).default(2),
    })
    .strict(),
  defaults: { immune: false },
  async create(opts, env) {
    const valueKey: Record<Kind, string> = { host: 'net', helo: 'name', sender: 'address', recipient: 'address' };
    const lists = {} as Record<Kind, () => Promise<Entry[]>>;
    let total = 0;
    const setup = async (kind: Kind, items: (string | Record<string, unknown>)[], file: string | undefined): Promise<void> => {
      const fixed = items.map((item, i) => {
        try {
          if (typeof item === 'string') return makeEntry(kind, item, undefined);
          return makeEntry(kind, item[valueKey[kind]] as string, item.plugins as string[]);
        } catch (err) {
          throw new Error(`${kind}s[${i}]: ${(err as Error).message}`);
        }
      });
      total += fixed.length;
      if (!file) {
        lists[kind] = async () => fixed;
        return;
      }
      const watched = await ReloadingFile.open(resolve(env.configDir, file), parseFile(kind), env.log, opts.check_interval * 1000);
      total += (await watched.current()).length;
      lists[kind] = async () => [...fixed, ...(await watched.current())];
    };
    await setup('host', opts.hosts, opts.hosts_file);
    await setup('helo', opts.helos, opts.helos_file);
    await setup('sender', opts.senders, opts.senders_file);
    await setup('recipient', opts.recipients, opts.recipients_file);
    if (total === 0) env.log.warn('no entries: nobody is exempted');

    /** Every entry that matches (their exemptions add up), recorded as results. */
    const match = async (ctx: HookContext, kind: Kind, value: string): Promise<Entry[]> => {
      const hits = (await lists[kind]()).filter((e) => e.test(value));
      if (hits.length) ctx.result({ pass: hits.map((h) => describe(kind, h)) });
      return hits;
    };
    const heloHook = async (ctx: HookContext, host: string): Promise<void> => {
      // Lasts for the connection, as the host's does.
      grant(ctx.conn.immunity, await match(ctx, 'helo', host));
    };

    return {
      async connect(ctx) {
        grant(ctx.conn.immunity, await match(ctx, 'host', ctx.conn.client.addr));
      },
      helo: heloHook,
      ehlo: heloHook,
      async mail(ctx, sender) {
        if (!sender.address || !ctx.txn) return;
        grant(ctx.txn.immunity, await match(ctx, 'sender', sender.address));
      },
      async rcpt(ctx, rcpt: Address) {
        const hits = await match(ctx, 'recipient', rcpt.address);
        if (!hits.length) return;
        rcpt.immunity ??= { all: false, plugins: new Set() };
        grant(rcpt.immunity, hits);
      },
    };
  },
});
