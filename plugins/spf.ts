/**
 * spf — is the client allowed to send mail for the envelope sender's domain
 * (SPF, RFC 7208)? Checks MAIL FROM, or for the null sender the HELO name
 * (as postmaster@HELO), against the client address (behind Postfix the
 * XFORWARD ADDR), with mailauth's SPF evaluator and the shared resolver.
 *
 * Options:
 *   check_at: 'mail' | 'rcpt'      when to check and decide (default 'mail'); at rcpt the
 *                                  check runs once, at the first RCPT, and decides every RCPT
 *   actions: { <result>: 'accept' | 'reject' | 'defer' }
 *                                  what each result does; results are pass, fail, softfail,
 *                                  neutral, none, temperror, permerror. Defaults: fail reject
 *                                  (550 5.7.23), temperror defer (451 4.7.24), others accept
 *   received_spf: boolean          add a Received-SPF header at data_post (default true)
 *   receiver: string               our name in Received-SPF and comments (default: the
 *                                  config's hostname)
 *   max_lookups: number            DNS-querying mechanisms per check (default 10, RFC 7208 4.6.4)
 *   max_void_lookups: number       lookups answered "no such name/record" (default 2)
 *
 * Relay clients (and so authenticated clients) are skipped by the core's
 * immunity; an authenticated client (conn.auth) is skipped even with
 * `immune: false`. DNS failures give temperror, never "none": the default is
 * to defer. The result goes to the results store and, with the details, to
 * txn.notes.mailauth.spf, where dmarc and auth_results read it.
 */
import { hostname as osHostname } from 'node:os';
import { z } from 'zod';
import { foldWords, quoted } from '../src/mailauth/auth-results';
import { spf } from '../src/mailauth/lib';
import { spfResolver } from '../src/mailauth/resolver';
import { authNotes, type SpfNote, type SpfResultCode } from '../src/mailauth/notes';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { deny, denysoft, type Verdict } from '../src/plugin/decision';

const RESULTS: readonly SpfResultCode[] = ['pass', 'fail', 'softfail', 'neutral', 'none', 'temperror', 'permerror'];
const action = z.enum(['accept', 'reject', 'defer']);
type Action = z.infer<typeof action>;

const DEFAULT_ACTIONS: Record<SpfResultCode, Action> = {
  pass: 'accept',
  fail: 'reject',
  softfail: 'accept',
  neutral: 'accept',
  none: 'accept',
  temperror: 'defer',
  permerror: 'accept',
};

/** What the client is told, by result. */
function reason(n: SpfNote): string {
  switch (n.result) {
    case 'fail':
      return `SPF: ${n.ip} is not allowed to send mail from ${n.domain}`;
    case 'softfail':
      return `SPF: ${n.ip} is probably not allowed to send mail from ${n.domain} (softfail)`;
    case 'temperror':
      return `SPF: temporary error checking ${n.domain}, try again later`;
    case 'permerror':
      return `SPF: the SPF record of ${n.domain} is invalid (permerror)`;
    default:
      return `SPF: result ${n.result} for ${n.domain} is not accepted here`;
  }
}

/** RFC 7372: 7.23 for validation failures, 7.24 for errors. */
function enhanced(n: SpfNote, temporary: boolean): string {
  const detail = n.result === 'temperror' || n.result === 'permerror' ? '24' : '23';
  return `${temporary ? 4 : 5}.7.${detail}`;
}

const DOT_ATOM = /^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(?:\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*$/;

/** The Received-SPF value of RFC 7208 9.1. */
export function receivedSpf(n: SpfNote, receiver: string): string {
  const kv = (k: string, v: string): string => `${k}=${DOT_ATOM.test(v) ? v : quoted(v)};`;
  const words: string[] = [n.result];
  if (n.comment) words.push(`(${n.comment.replace(/[\\()]/g, (c) => `\\${c}`)})`);
  words.push(kv('client-ip', n.ip), `envelope-from=${quoted(n.scope === 'mfrom' ? n.identity : '')};`);
  if (n.helo) words.push(kv('helo', n.helo));
  words.push(kv('receiver', receiver), `identity=${n.scope === 'mfrom' ? 'mailfrom' : 'helo'};`);
  return foldWords(words, 'Received-SPF: '.length);
}

export default definePlugin({
  description: 'SPF: may the client send for the MAIL FROM domain (HELO for the null sender)',
  options: z
    .object({
      check_at: z.enum(['mail', 'rcpt']).default('mail'),
      actions: z.object(Object.fromEntries(RESULTS.map((r) => [r, action.optional()])) as Record<SpfResultCode, z.ZodOptional<typeof action>>).strict().default({}),
      received_spf: z.boolean().default(true),
      receiver: z.string().min(1).optional(),
      max_lookups: z.number().int().min(1).max(100).default(10),
      max_void_lookups: z.number().int().min(0).max(100).default(2),
    })
    .strict(),
  create(opts, env) {
    const actions: Record<SpfResultCode, Action> = { ...DEFAULT_ACTIONS };
    for (const r of RESULTS) if (opts.actions[r]) actions[r] = opts.actions[r]!;
    const receiver = opts.receiver ?? env.hostname ?? osHostname();
    const resolver = spfResolver(env.dns);

    async function check(ctx: HookContext): Promise<SpfNote | undefined> {
      const txn = ctx.txn;
      if (!txn) return undefined;
      if (ctx.conn.auth) {
        ctx.result({ skip: 'authenticated client' });
        return undefined;
      }
      const notes = authNotes(txn);
      if (notes.spf) return notes.spf;
      const sender = txn.sender?.address ?? '';
      const helo = ctx.conn.client.helo;
      const ip = ctx.conn.client.addr;
      let note: SpfNote;
      if (sender === '' && !helo) {
        note = { result: 'none', domain: '', scope: 'helo', identity: '', ip, comment: 'null sender and no HELO name to check' };
      } else {
        const scope = sender === '' ? 'helo' : 'mfrom';
        const identity = scope === 'helo' ? `postmaster@${helo}` : sender;
        const r = await spf({ sender: identity, ip, helo, mta: receiver, resolver, maxResolveCount: opts.max_lookups, maxVoidCount: opts.max_void_lookups });
        const code = (RESULTS as readonly string[]).includes(r.status.result) ? (r.status.result as SpfResultCode) : 'temperror';
        note = { result: code, domain: r.domain, scope, identity, ip, helo, comment: r.status.comment };
      }
      notes.spf = note;
      const summary = { result: note.result, domain: note.domain, scope: note.scope };
      if (note.result === 'pass') ctx.result({ pass: 'pass', ...summary });
      else if (note.result === 'fail' || note.result === 'softfail') ctx.result({ fail: note.result, ...summary });
      else if (note.result === 'temperror' || note.result === 'permerror') ctx.result({ err: note.result, ...summary, why: note.comment });
      else ctx.result({ msg: note.result, ...summary });
      return note;
    }

    function decide(note: SpfNote | undefined): Verdict | undefined {
      if (!note) return undefined;
      const a = actions[note.result];
      if (a === 'reject') return deny(reason(note), enhanced(note, false));
      if (a === 'defer') return denysoft(reason(note), enhanced(note, true));
      return undefined;
    }

    return {
      async mail(ctx) {
        if (opts.check_at === 'mail') return decide(await check(ctx));
      },
      async rcpt(ctx) {
        if (opts.check_at === 'rcpt') return decide(await check(ctx));
      },
      data_post(ctx, message) {
        const note = ctx.txn && authNotes(ctx.txn).spf;
        if (opts.received_spf && note) message.headers.prepend('Received-SPF', receivedSpf(note, receiver));
      },
    };
  },
});
