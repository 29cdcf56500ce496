/**
 * count_denies — disconnect clients that collect too many rejections, like
 * Postfix's smtpd_hard_error_limit.
 *
 * Options:
 *   max: integer            rejections allowed per connection (default 10)
 *   include_temp: boolean   count temporary rejections (DENYSOFT) too (default false)
 *
 * Counts every plugin rejection through the deny meta-hook. The reply to the
 * max-th rejection is already decided when deny runs, so the connection is only
 * marked; the next HELO/EHLO, MAIL, RCPT, DATA, VRFY, NOOP or unrecognized
 * command gets "421 4.7.0 too many errors" and the connection is closed.
 * Temporary by default, as in Postfix: the command refused may well be
 * legitimate (a valid recipient after nine typos) and must not bounce; set
 * reject_type: disconnect for a 5xx. Temporary rejections are not counted by
 * default since greylisting alone can produce many. List it first: a plugin
 * that decides before it in a hook would let the command through. Keeps its
 * count in the connection's notes.
 */
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { denysoftDisconnect, isDeny, isTemporary } from '../src/plugin/decision';

interface Count {
  denies: number;
  exceeded: boolean;
}

export default definePlugin({
  description: 'disconnect after too many rejections on one connection',
  // Counting protects the server; relay clients get no exemption from it.
  defaults: { immune: false },
  options: z
    .object({
      max: z.number().int().min(1).default(10),
      include_temp: z.boolean().default(false),
    })
    .strict(),
  create(opts) {
    const state = (ctx: HookContext): Count =>
      ((ctx.conn.notes[ctx.name] as Count | undefined) ??= { denies: 0, exceeded: false });

    const enforce = (ctx: HookContext) => {
      if (!state(ctx).exceeded) return;
      return denysoftDisconnect('too many errors', '4.7.0');
    };

    return {
      deny(ctx, info) {
        const d = info.verdict.decision;
        if (!isDeny(d) || (isTemporary(d) && !opts.include_temp)) return;
        const s = state(ctx);
        s.denies++;
        if (s.denies >= opts.max && !s.exceeded) {
          s.exceeded = true;
          ctx.result({ fail: `${s.denies} rejections`, denies: s.denies });
          ctx.log.info(`${s.denies} rejections, the next command closes the connection`);
        }
      },
      helo: enforce,
      ehlo: enforce,
      mail: enforce,
      rcpt: enforce,
      data: enforce,
      vrfy: enforce,
      noop: enforce,
      unrecognized_command: enforce,
    };
  },
});
