/**
 * auth_results — one Authentication-Results header (RFC 8601) for the
 * message, at data_post, with what spf, dkim (and ARC), domainkeys and dmarc
 * found (txn.notes.mailauth) and, for an authenticated client, `auth=pass
 * smtp.auth=<user>`. List it after those plugins.
 *
 * Authentication-Results fields that arrive with our authserv-id (compared
 * case-insensitively) are removed first, from every message: downstream
 * filters trust that id, so nobody outside may use it (RFC 8601 5). Fields of
 * other authserv-ids are left alone. When no check produced a result no
 * header is added.
 *
 * Options:
 *   authserv_id: string   the name in the header (default: the config's hostname); use the
 *                         same one your MDA/filters are told to trust
 *
 * Not immune: forged fields are removed from relay clients' mail too.
 */
import { hostname as osHostname } from 'node:os';
import { z } from 'zod';
import { claims, formatAuthResults, type ResInfo } from '../src/mailauth/auth-results';
import { peekAuthNotes } from '../src/mailauth/notes';
import { definePlugin } from '../src/plugin/api';

export default definePlugin({
  description: 'one Authentication-Results header with the SPF, DKIM, ARC, DomainKeys and DMARC results; forged ones removed',
  options: z
    .object({
      authserv_id: z
        .string()
        .regex(/^[^\s;()"\\]+$/, 'a host name (no whitespace, ";", parentheses or quotes)')
        .optional(),
    })
    .strict(),
  defaults: { immune: false },
  create(opts, env) {
    const id = opts.authserv_id ?? env.hostname ?? osHostname();
    return {
      data_post(ctx, message) {
        const removed = message.headers.remove('Authentication-Results', (f) => claims(f.value, id));
        if (removed) ctx.result({ msg: `removed ${removed} Authentication-Results claiming ${id}` });

        const entries: ResInfo[] = [];
        const auth = ctx.conn.auth;
        if (auth) entries.push({ method: 'auth', result: 'pass', props: [['smtp.auth', auth.user]] });
        const n = peekAuthNotes(ctx.txn);
        if (n?.spf) {
          const s = n.spf;
          const props: [string, string][] = s.scope === 'mfrom' ? [['smtp.mailfrom', s.identity]] : [];
          if (s.helo) props.push(['smtp.helo', s.helo]);
          entries.push({ method: 'spf', result: s.result, comment: s.comment, props });
        }
        for (const d of n?.dkim ?? []) {
          entries.push({
            method: 'dkim',
            result: d.result,
            comment: d.comment,
            props: [
              ['header.d', d.domain],
              ['header.i', d.domain ? `@${d.domain}` : ''],
              ['header.s', d.selector],
              ['header.a', d.algorithm ?? ''],
              ['header.b', d.b ?? ''],
            ],
          });
        }
        for (const d of n?.domainkeys ?? []) {
          const props: [string, string][] = [['header.d', d.domain]];
          if (d.senderHeader && d.sender) props.push([`header.${d.senderHeader}`, d.sender]);
          entries.push({ method: 'domainkeys', result: d.result, comment: d.comment, props });
        }
        if (n?.arc) {
          // mailauth's comment already starts with the instance (i=2 ...).
          entries.push({ method: 'arc', result: n.arc.result, comment: n.arc.comment ?? (n.arc.i ? `i=${n.arc.i}` : undefined), props: [] });
        }
        if (n?.dmarc) entries.push({ method: 'dmarc', result: n.dmarc.result, comment: n.dmarc.comment, props: [['header.from', n.dmarc.headerFrom]] });

        if (!entries.length) {
          ctx.result({ skip: 'no results to report' });
          return;
        }
        message.headers.prepend('Authentication-Results', formatAuthResults(id, entries));
        ctx.result({ pass: entries.map((e) => `${e.method}=${e.result}`).join(' ') });
      },
    };
  },
});
