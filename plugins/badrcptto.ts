/**
 * badrcptto — reject listed recipients.
 *
 * Options:
 *   addresses: string[]   entries (default [])
 *   file: string          more entries, one a line ('#' starts a comment line); relative to the config dir
 *
 * Entries as in badmailfrom: `user@domain`, `@domain`, `/regex/flags`, each
 * optionally followed by whitespace and the reason given to the client.
 * List it before rcpt_ok, whose OK ends the rcpt chain. Needs only the envelope.
 */
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import { loadAddressList } from '../src/plugin/address-list';

export default definePlugin({
  description: 'reject listed recipients',
  options: z
    .object({
      addresses: z.array(z.string().min(1)).default([]),
      file: z.string().min(1).optional(),
    })
    .strict(),
  async create(opts, env) {
    const list = await loadAddressList(opts.addresses, opts.file, env.configDir);
    if (list.size === 0) env.log.warn('no entries: nothing will be rejected');

    return {
      rcpt(ctx, rcpt) {
        const hit = list.match(rcpt);
        if (!hit) {
          ctx.result({ pass: rcpt.address });
          return;
        }
        const reason = hit.reason ?? `mail to ${rcpt.address} not accepted here`;
        ctx.result({ fail: hit.entry, reason });
        return deny(reason, '5.7.1');
      },
    };
  },
});
