/**
 * badmailfrom — reject listed envelope senders.
 *
 * Options:
 *   addresses: string[]          entries (default [])
 *   file: string                 more entries, one a line ('#' starts a comment line); relative to the config dir
 *   reject_at: 'mail' | 'rcpt'   when to reject (default 'rcpt')
 *
 * An entry is `user@domain` (exact), `@domain` (anyone there), `/regex/flags`
 * (tested against the address without brackets; add `i` to ignore case) or `<>`
 * (the null sender, which nothing else matches), optionally followed by
 * whitespace and the reason given to the client. Addresses and domains compare
 * case-insensitively.
 *
 * As in qpsmtpd the rejection waits for RCPT by default, so a listed sender can
 * still reach postmaster and abuse: the match is recorded at MAIL and every
 * other recipient is denied; list it before rcpt_ok, whose OK ends the rcpt
 * chain. Needs only the envelope.
 *
 * The entry syntax (src/plugin/address-list.ts) is shared with badrcptto.
 */
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import { loadAddressList } from '../src/plugin/address-list';
import type { Address } from '../src/session/state';

const DEFAULT_REASON = 'Your envelope sender is in my badmailfrom list';

/** What the mail hook leaves for the rcpt hook when the rejection waits for RCPT. */
interface Pending {
  entry: string;
  reason: string;
}

const exempt = (rcpt: Address): boolean => {
  const user = rcpt.user.toLowerCase();
  return user === 'postmaster' || (user === 'abuse' && rcpt.host !== '');
};

export default definePlugin({
  description: 'reject listed envelope senders (at RCPT, so postmaster stays reachable)',
  options: z
    .object({
      addresses: z.array(z.string().min(1)).default([]),
      file: z.string().min(1).optional(),
      reject_at: z.enum(['mail', 'rcpt']).default('rcpt'),
    })
    .strict(),
  async create(opts, env) {
    const list = await loadAddressList(opts.addresses, opts.file, env.configDir);
    if (list.size === 0) env.log.warn('no entries: nothing will be rejected');

    return {
      mail(ctx, sender) {
        const hit = list.match(sender);
        if (!hit) {
          ctx.result({ pass: 'not listed' });
          return;
        }
        const reason = hit.reason ?? DEFAULT_REASON;
        ctx.result({ fail: hit.entry, reason });
        if (opts.reject_at === 'rcpt' && ctx.txn) {
          ctx.txn.notes[ctx.name] = { entry: hit.entry, reason } satisfies Pending;
          return;
        }
        return deny(reason, '5.7.1');
      },
      rcpt(ctx, rcpt) {
        const pending = ctx.txn?.notes[ctx.name] as Pending | undefined;
        if (!pending) return;
        if (exempt(rcpt)) {
          ctx.result({ skip: `rcpt ${rcpt.address}` });
          return;
        }
        return deny(pending.reason, '5.7.1');
      },
    };
  },
});
