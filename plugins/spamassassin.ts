/**
 * spamassassin — score the message with a running SpamAssassin spamd, at data_post.
 *
 * The message is streamed to spamd (TCP or UNIX socket) with the SPAMC/1.5
 * SYMBOLS command by prequeue's own small client (src/scan/spamd.ts: the npm
 * clients are unmaintained and load the whole message into a string). Score,
 * threshold and the names of the rules that hit are recorded as this plugin's
 * result (details `score`, `threshold`, `reject_threshold`, `tests`; `pass:
 * ham` or `fail: spam`) for the log line and karma.
 *
 * Headers: X-Spam-Flag, X-Spam-Score, X-Spam-Level, X-Spam-Status (SpamAssassin's
 * formats) are added at the top; copies that came from outside (X-Spam-Flag,
 * -Status, -Score, -Level, -Report, -Checker-Version) are removed first, so
 * nobody downstream trusts a sender's own "X-Spam-Flag: NO". Optionally the
 * Subject gets `subject_prefix` when spamd calls it spam.
 *
 * Rejection: DENY when the score reaches the reject threshold. One message
 * gets one answer, so with several recipients the smallest threshold among
 * them applies: a recipient's `spamassassin_reject_threshold` (per-recipient
 * options, set by the aliases plugin) or else `reject_threshold`. The strictest
 * recipient wins because a refusal at the end of DATA is a bounce the sender
 * sees (nothing is lost silently), whereas accepting would deliver spam to a
 * mailbox whose owner asked for it to be refused. A recipient value that is
 * not a number is ignored (logged).
 *
 * Options:
 *   server: string           spamd address: host:port, [v6]:port, or a UNIX socket path (default 127.0.0.1:783)
 *   scan_timeout: number     seconds for the whole scan (default 15; keep it below the plugin's `timeout`
 *                            and, with other scanners, within data_post_budget)
 *   max_size: number         bytes; larger messages are not scanned (default 512000, spamc's default),
 *                            they pass with result skip and "X-Spam-Status: Unscanned, ..."
 *   on_scan_error: defer | accept   spamd down, timing out or answering nonsense: 451 (default) or
 *                            pass unscanned (marked like an oversized message, result err)
 *   reject_threshold: number | null  score at (>=) which the message is refused (default 10; null: never,
 *                            unless a recipient's option says so)
 *   subject_prefix: string   prepended to the Subject of spam (default none), e.g. "[SPAM] "
 *   user: string             spamd User header: whose preferences spamd applies (default none)
 *   received_header: auto | boolean  prepend a Received line describing the client to what spamd
 *                            sees (not to the message): spamd needs it to know the client's address
 *                            for its network and trust-path rules. auto = in standalone mode, where
 *                            the core adds its own Received only after data_post; behind Postfix its
 *                            before-queue smtpd already added one (default auto)
 *   mark_unscanned: boolean  add "X-Spam-Status: Unscanned, <why>" to messages not scanned (default true)
 *
 * Relay clients (and allow-listed senders) are not scanned by default (core
 * `immune: true`): SpamAssassin's scores are tuned for inbound mail and
 * misjudge mail your users submit. Set `immune: false` to scan outbound too.
 * The core's `reject: false` turns both the spam rejection and the deferral
 * for a failed scan into log-only; a message that then passes unscanned is
 * marked "X-Spam-Status: Unscanned, spamd failed" (with `mark_unscanned`).
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import type { Message, MessageHeaders } from '../src/message/types';
import { rfc5322Date } from '../src/util/date';
import { runScan, scanFailure, scannerOptionFields, scannerTarget, unscannedValue } from '../src/scan/policy';
import { spamdCheck, SPAMD_DEFAULT_PORT, type SpamdVerdict } from '../src/scan/spamd';

/** Per-recipient option (aliases plugin) that overrides reject_threshold for that recipient. */
export const RECIPIENT_THRESHOLD_OPTION = 'spamassassin_reject_threshold';

/** Headers SpamAssassin writes; a sender's copies are removed before ours are added. */
const SPAM_HEADERS = ['X-Spam-Flag', 'X-Spam-Status', 'X-Spam-Score', 'X-Spam-Level', 'X-Spam-Report', 'X-Spam-Checker-Version'];
/** A header line must stay under RFC 5322's 998 characters; we never fold. */
const MAX_STATUS_LENGTH = 900;

const options = z
  .object({
    ...scannerOptionFields({ server: `127.0.0.1:${SPAMD_DEFAULT_PORT}`, scan_timeout: 15, max_size: 512_000 }),
    reject_threshold: z.number().nullable().default(10),
    subject_prefix: z.string().min(1).regex(/^[^\r\n]*$/, 'no line breaks').optional(),
    user: z.string().regex(/^[^\s]+$/, 'a user name without whitespace').optional(),
    received_header: z.union([z.literal('auto'), z.boolean()]).default('auto'),
    mark_unscanned: z.boolean().default(true),
  })
  .strict();

/**
 * The threshold that decides for this message: each recipient's own (a valid
 * number) or else the global one; the smallest of them (see the header comment).
 * null: no recipient's threshold applies, the message is not refused for its score.
 */
export function effectiveThreshold(ctx: HookContext, global: number | null): number | null {
  const recipients = ctx.txn?.recipients ?? [];
  if (!recipients.length) return global;
  let min: number | null = null;
  for (const r of recipients) {
    let threshold = global;
    const raw = r.options?.[RECIPIENT_THRESHOLD_OPTION];
    if (raw !== undefined) {
      const own = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (Number.isFinite(own)) threshold = own;
      else ctx.log.warn(`ignoring ${RECIPIENT_THRESHOLD_OPTION}=${String(raw)} for <${r.address}>: not a number`);
    }
    if (threshold !== null) min = min === null ? threshold : Math.min(min, threshold);
  }
  return min;
}

function stars(score: number): string {
  return score >= 1 ? '*'.repeat(Math.min(50, Math.floor(score))) : '';
}

function statusValue(v: SpamdVerdict): string {
  const head = `${v.isSpam ? 'Yes' : 'No'}, score=${v.scoreText} required=${v.thresholdText} tests=`;
  let tests = '';
  for (const t of v.tests) {
    const next = tests ? `${tests},${t}` : t;
    if (head.length + next.length > MAX_STATUS_LENGTH) {
      tests += ',...';
      break;
    }
    tests = next;
  }
  return head + (tests || 'none');
}

function prefixSubject(h: MessageHeaders, prefix: string): void {
  const subject = h.get('Subject') ?? '';
  if (subject.startsWith(prefix.trim())) return;
  h.remove('Subject');
  h.append('Subject', prefix + subject);
}

const oneLine = (s: string): string => s.replace(/[\r\n]+/g, ' ');

/** What spamd alone sees on top of the message: our hop, with the client's address (like the core's Received). */
function receivedLine(ctx: HookContext): Buffer {
  const c = ctx.conn.client;
  const addr = c.addr.includes(':') ? `IPv6:${c.addr}` : c.addr;
  const proto = `${c.proto ?? 'SMTP'}${ctx.conn.tls ? 'S' : ''}${ctx.conn.auth ? 'A' : ''}`;
  const id = ctx.txn ? ` id ${ctx.txn.id}` : '';
  const from = `${oneLine(c.helo ?? 'unknown')} (${oneLine(c.name ?? 'unknown')} [${addr}])`;
  return Buffer.from(`Received: from ${from} by ${hostname()} (prequeue) with ${proto}${id}; ${rfc5322Date(new Date())}\r\n`, 'latin1');
}

export default definePlugin({
  description: 'score the message with SpamAssassin (spamd), add X-Spam-* headers, refuse high scores',
  options,
  create(opts, env) {
    const target = scannerTarget(opts, SPAMD_DEFAULT_PORT);
    const addReceived = opts.received_header === 'auto' ? env.mode === 'standalone' : opts.received_header;

    const markUnscanned = (message: Message, reason: string): void => {
      if (opts.mark_unscanned) message.headers.prepend('X-Spam-Status', unscannedValue(reason));
    };

    return {
      async data_post(ctx, message) {
        const h = message.headers;
        for (const name of SPAM_HEADERS) h.remove(name);

        const outcome = await runScan(message, opts, () =>
          spamdCheck(message, {
            target,
            timeoutMs: opts.scan_timeout * 1000,
            user: opts.user,
            prefix: addReceived ? receivedLine(ctx) : undefined,
          }),
        );
        if (outcome.status === 'skipped') {
          ctx.result({ skip: `unscanned: ${outcome.reason}` });
          markUnscanned(message, outcome.reason);
          return;
        }
        if (outcome.status === 'failed') {
          // Marked even when deferring: under the core's reject: false the deferral is only
          // logged and the message goes on, unscanned.
          markUnscanned(message, 'spamd failed');
          return scanFailure(ctx, opts, outcome.error, 'Spam scanner');
        }

        const v = outcome.verdict;
        const threshold = effectiveThreshold(ctx, opts.reject_threshold);
        ctx.result({
          [v.isSpam ? 'fail' : 'pass']: v.isSpam ? 'spam' : 'ham',
          score: v.score,
          threshold: v.threshold,
          reject_threshold: threshold,
          tests: v.tests,
          scan_ms: outcome.ms,
        });

        h.prepend('X-Spam-Status', statusValue(v));
        h.prepend('X-Spam-Level', stars(v.score));
        h.prepend('X-Spam-Score', v.scoreText);
        h.prepend('X-Spam-Flag', v.isSpam ? 'YES' : 'NO');
        if (v.isSpam && opts.subject_prefix) prefixSubject(h, opts.subject_prefix);

        if (threshold !== null && v.score >= threshold) {
          ctx.result({ fail: `score ${v.scoreText} >= reject threshold ${threshold}` });
          return deny(`Message rejected as spam (score ${v.scoreText}, limit ${threshold})`, '5.7.1');
        }
      },
    };
  },
});
