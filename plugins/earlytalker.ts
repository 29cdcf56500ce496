/**
 * earlytalker — clients that talk before it is their turn (qpsmtpd's
 * earlytalker): before our greeting, or message data before the 354 reply to
 * DATA. A real MTA waits for each reply it needs (RFC 5321 4.3.1, RFC 2920
 * 3.1); spam bots and ratware often fire off their script without listening.
 *
 * Options:
 *   check_at: connect | data | both   where to check (default connect)
 *   wait: number       seconds the greeting is held back so that an early talker
 *                      gets the chance to give itself away (default 1, at most 20 so
 *                      that it stays below the plugin timeout; 0 = only look at what
 *                      arrived while the connect hooks ran). It ends as soon as the
 *                      client talks.
 *   data_wait: number  seconds to listen after DATA before the 354 goes out
 *                      (default 0: only what already arrived with or after DATA; at most 20)
 *   message: string    reply text at connect (default "You talk too soon: wait for the greeting")
 *   data_message: string  reply text at DATA (default "You talk too soon: message data sent before the 354 reply")
 *
 * Connect: DENY (554 at the greeting, the connection is closed). With
 * `deferred_rejection.connection` (or `reject: defer`) the rejection is held
 * until MAIL or RCPT instead, so the client still learns why and whitelisted
 * senders or recipients get through. Data: DENY_DISCONNECT (554 and close):
 * what the client sent after DATA would otherwise be read as commands.
 * `reject_type` overrides either; `reject: false` only records the result.
 *
 * A pipelining client (RFC 2920) sends EHLO after the greeting and may then
 * send MAIL, RCPT and DATA in one go: that is never flagged, since DATA ends a
 * command group and nothing may follow it before the 354.
 *
 * Results: `pass: connect` / `pass: data` for a client that waited, `fail:
 * connect` / `fail: data` for one that did not (karma's default rule gives
 * earlytalker fail -3); `skip` where nothing could be checked.
 *
 * Needs the live client connection (standalone mode): the front end records
 * the peer's input timing (ctx.conn.input). Behind Postfix (mode postfix) the
 * TCP peer is Postfix itself, which never talks early, so the plugin does
 * nothing there (a `skip` result; Postfix's own `smtpd_client_restrictions`
 * with `reject_unauth_pipelining` and postscreen's pregreet test do this
 * job). Likewise for a client described by XCLIENT/XFORWARD in standalone
 * mode. Relay clients are immune (common option `immune`).
 */
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { declined, deny, denyDisconnect, type Verdict } from '../src/plugin/decision';

const POLL_MS = 20;

/** Waits up to `seconds` for `talked()` to become true; true if it did. */
async function listen(talked: () => boolean, seconds: number): Promise<boolean> {
  const deadline = Date.now() + seconds * 1000;
  while (!talked()) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(POLL_MS, left)));
  }
  return true;
}

export default definePlugin({
  description: 'reject clients that talk before the greeting or send data before the 354',
  options: z
    .object({
      check_at: z.enum(['connect', 'data', 'both']).default('connect'),
      wait: z.number().min(0).max(20).default(1),
      data_wait: z.number().min(0).max(20).default(0),
      message: z.string().min(1).default('You talk too soon: wait for the greeting'),
      data_message: z.string().min(1).default('You talk too soon: message data sent before the 354 reply'),
    })
    .strict(),
  create(opts, env) {
    if (env.mode === 'postfix') {
      // Input timing describes the TCP peer, which is Postfix here: nothing to learn about the client.
      env.log.info('mode postfix: the TCP peer is Postfix, earlytalker checks nothing (use postscreen or reject_unauth_pipelining there)');
      return {
        connect(ctx) {
          ctx.result({ skip: 'postfix mode' });
        },
      };
    }
    const atConnect = opts.check_at !== 'data';
    const atData = opts.check_at !== 'connect';

    /** The input timing to judge, or undefined (recorded as skip) when it does not describe the client. */
    const input = (ctx: HookContext, hook: string) => {
      const conn = ctx.conn;
      if (conn.client.via !== 'tcp') {
        ctx.result({ skip: `${hook}: client described by ${conn.client.via.toUpperCase()}` });
        return undefined;
      }
      if (!conn.input) {
        ctx.result({ skip: `${hook}: no input timing` });
        return undefined;
      }
      return conn.input;
    };

    return {
      async connect(ctx): Promise<Verdict> {
        if (!atConnect) return declined();
        const timing = input(ctx, 'connect');
        if (!timing) return declined();
        if (await listen(() => timing.talkedBeforeGreeting, opts.wait)) {
          ctx.result({ fail: 'connect' });
          ctx.log.info(`${ctx.conn.client.addr} talked before the greeting`);
          return deny(opts.message, '5.5.0');
        }
        ctx.result({ pass: 'connect' });
        return declined();
      },
      async data(ctx): Promise<Verdict> {
        if (!atData) return declined();
        const timing = input(ctx, 'data');
        if (!timing) return declined();
        if (await listen(() => timing.hasUnreadInput(), opts.data_wait)) {
          ctx.result({ fail: 'data' });
          ctx.log.info(`${ctx.conn.client.addr} sent message data before the 354`);
          return denyDisconnect(opts.data_message, '5.5.0');
        }
        ctx.result({ pass: 'data' });
        return declined();
      },
    };
  },
});
