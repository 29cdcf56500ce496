/**
 * dkim — verify DKIM signatures (RFC 6376, and the ARC chain if there is one)
 * on incoming mail, and sign outgoing mail.
 *
 * Verifying (data_post): every DKIM-Signature gets a result (pass, fail,
 * neutral, policy, temperror, permerror; none when unsigned) with its d= and
 * s=, in the results store and in txn.notes.mailauth.dkim for dmarc and
 * auth_results. It never rejects by itself: a failed signature makes the mail
 * unsigned, and dmarc decides. What is verified is the message as it arrived,
 * before any plugin changed it: the header block is copied at
 * data_headers_end, and the body is read from the spool as received, so header
 * fields or a footer (addsig) that other data_post plugins add do not matter.
 * List dkim before dmarc and auth_results, which read its results (first among
 * the data_post plugins is simplest). Mail from relay clients and
 * authenticated clients is not verified unless `verify_relay_clients` is set.
 *
 * Signing (queue hook): only mail from relay clients or authenticated clients
 * (conn.relayClient / conn.auth), for the From header's domain (or the
 * envelope sender's, `sign.domain_from: sender`) when a key is configured for
 * it. It runs at the queue hook, which comes after every data_post plugin
 * (addsig's footer, added headers) whatever their order, so the signature
 * covers the message as relayed; the Received header the core prepends in
 * standalone mode comes after signing and is not signed, which is fine. A
 * queue plugin listed before dkim that takes the message (answers OK) gets it
 * unsigned. Signing errors count as a plugin failure (on_error: defer = 451, so
 * mail never leaves unsigned by accident; `on_error: skip` sends it unsigned).
 *
 * Options:
 *   verify: boolean                  verify incoming signatures (default true)
 *   verify_relay_clients: boolean    also verify mail from relay/authenticated clients (default false)
 *   arc: boolean                     verify the ARC chain too (default true)
 *   min_key_bits: number             RSA keys below this give `policy` (weak key) (default 1024)
 *   sign:                            absent = no signing
 *     keys: { <domain>: {selector, file} | [{selector, file}, ...] }
 *                                    PEM private keys (RSA >= 1024 bits, or Ed25519), relative
 *                                    to the config dir; several per domain sign several times
 *                                    (e.g. RSA and Ed25519)
 *     headers: string[]              fields to sign (default mailauth's list: From, Sender,
 *                                    Reply-To, Subject, Date, Message-ID, To, Cc, MIME and
 *                                    List-* fields...); each instance present is signed
 *     canonicalization: string       header/body: relaxed/relaxed (default), relaxed/simple,
 *                                    simple/relaxed, simple/simple
 *     domain_from: 'from' | 'sender' which domain picks the key (default 'from')
 *     subdomains: boolean            sign mail of sub.example.org with example.org's key (default false)
 *     expire: number                 seconds until signatures expire (x=), default none
 *
 * Typical config: `dkim` (verify) first among the data_post plugins and, for
 * readability, a second instance `dkim:sign` with `verify: false` and the keys
 * listed last, after addsig.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import { loadSigningKey, signMessage, type SigningKey } from '../src/mailauth/dkim-sign';
import { verifyDkim } from '../src/mailauth/dkim-verify';
import { authorDomains, normalizeDomain } from '../src/mailauth/domains';
import { bodyChanged, receivedHeaderFields, receivedMessageStream, rememberReceivedHeaders } from '../src/mailauth/message';
import { authNotes } from '../src/mailauth/notes';
import { mailauthResolver } from '../src/mailauth/resolver';
import type { Message } from '../src/message/types';
import { definePlugin, type HookContext, type PluginHooks } from '../src/plugin/api';

const keyEntry = z.object({ selector: z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'a selector is a DNS label (or dotted labels)'), file: z.string().min(1) }).strict();

const signSchema = z
  .object({
    keys: z.record(z.string().min(1), z.union([keyEntry, z.array(keyEntry).min(1)])),
    headers: z.array(z.string().regex(/^[\x21-\x39\x3b-\x7e]+$/, 'a header field name')).min(1).optional(),
    canonicalization: z.enum(['relaxed/relaxed', 'relaxed/simple', 'simple/relaxed', 'simple/simple']).default('relaxed/relaxed'),
    domain_from: z.enum(['from', 'sender']).default('from'),
    subdomains: z.boolean().default(false),
    expire: z.number().int().positive().optional(),
  })
  .strict();

const isRelay = (ctx: HookContext): boolean => ctx.conn.relayClient || !!ctx.conn.auth;

export default definePlugin({
  description: 'DKIM: verify signatures of incoming mail (data_post), sign mail of relay clients (queue)',
  options: z
    .object({
      verify: z.boolean().default(true),
      verify_relay_clients: z.boolean().default(false),
      arc: z.boolean().default(true),
      min_key_bits: z.number().int().min(512).max(16384).default(1024),
      sign: signSchema.optional(),
    })
    .strict(),
  // Relay clients are whom signing is for; verification skips them itself.
  defaults: { immune: false },
  async create(opts, env) {
    const resolver = mailauthResolver(env.dns);
    const keys = new Map<string, SigningKey[]>();
    if (opts.sign) {
      for (const [domain, entry] of Object.entries(opts.sign.keys)) {
        const d = normalizeDomain(domain);
        const list: SigningKey[] = [];
        for (const k of Array.isArray(entry) ? entry : [entry]) list.push(await loadSigningKey(resolve(env.configDir, k.file), d, k.selector));
        keys.set(d, list);
      }
      if (!keys.size) env.log.warn('sign: no keys configured, nothing will be signed');
    }
    if (!opts.verify && !opts.sign) env.log.warn('neither verify nor sign: this instance does nothing');

    /** The configured domain whose keys sign for `domain` (itself, or a parent with `subdomains`). */
    const keysFor = (domain: string): SigningKey[] | undefined => {
      let d = normalizeDomain(domain);
      for (;;) {
        const k = keys.get(d);
        if (k || !opts.sign?.subdomains) return k;
        const dot = d.indexOf('.');
        if (dot < 0) return undefined;
        d = d.slice(dot + 1);
      }
    };

    const signingKeys = (ctx: HookContext, message: Message): { domain: string; keys?: SigningKey[] } => {
      if (opts.sign!.domain_from === 'sender') {
        const host = ctx.txn?.sender?.host ?? '';
        return { domain: host, keys: host ? keysFor(host) : undefined };
      }
      const { domains } = authorDomains(message.headers.getAll('From'));
      for (const d of domains) {
        const k = keysFor(d);
        if (k) return { domain: d, keys: k };
      }
      return { domain: domains.join(',') };
    };

    const hooks: PluginHooks = {};
    if (opts.verify) {
      hooks.data_headers_end = (ctx, headers) => {
        rememberReceivedHeaders(ctx.txn, headers);
      };
      hooks.data_post = async (ctx, message) => {
        if (!ctx.txn) return;
        if (isRelay(ctx) && !opts.verify_relay_clients) {
          ctx.result({ skip: 'verify: relay client' });
          return;
        }
        if (bodyChanged(message)) ctx.log.debug('the body was changed by a plugin listed before dkim: verifying the body as received');
        const v = await verifyDkim(receivedMessageStream(ctx.txn, message), receivedHeaderFields(ctx.txn, message), {
          resolver,
          minKeyBits: opts.min_key_bits,
          arc: opts.arc,
        });
        const notes = authNotes(ctx.txn);
        notes.dkim = v.dkim;
        if (v.arc) notes.arc = v.arc;
        if (!v.dkim.length) {
          ctx.result({ msg: 'none (no signature)' });
        } else {
          const label = (n: (typeof v.dkim)[number]): string => `${n.domain || '?'}${n.selector ? ` s=${n.selector}` : ''}${n.comment ? ` (${n.comment})` : ''}`;
          ctx.result({
            pass: v.dkim.filter((n) => n.result === 'pass').map(label),
            fail: v.dkim.filter((n) => n.result === 'fail' || n.result === 'policy').map((n) => `${n.result}: ${label(n)}`),
            err: v.dkim.filter((n) => n.result === 'temperror' || n.result === 'permerror').map((n) => `${n.result}: ${label(n)}`),
            msg: v.dkim.filter((n) => n.result === 'neutral').map((n) => `neutral: ${label(n)}`),
            signatures: v.dkim.map((n) => ({ d: n.domain, s: n.selector, result: n.result })),
          });
        }
        if (v.arc) ctx.result({ msg: `arc=${v.arc.result}${v.arc.i ? ` i=${v.arc.i}` : ''}` });
      };
    }
    if (opts.sign) {
      const sign = opts.sign;
      hooks.queue = async (ctx, message) => {
        if (!isRelay(ctx)) return;
        const { domain, keys: k } = signingKeys(ctx, message);
        if (!k) {
          ctx.result({ skip: `sign: no key for ${domain || 'no domain'}` });
          return;
        }
        const values = await signMessage(message, k, { headers: sign.headers, canonicalization: sign.canonicalization, expire: sign.expire });
        // Prepended last first, so they read in key order from the top.
        for (let i = values.length - 1; i >= 0; i--) message.headers.prepend('DKIM-Signature', values[i]!);
        ctx.result({ pass: k.map((x) => `signed d=${x.domain} s=${x.selector} (${x.algorithm})`) });
      };
    }
    return hooks;
  },
});
