/**
 * clamav — scan the message for viruses with a running ClamAV clamd, at data_post.
 *
 * The message is streamed to clamd (UNIX socket or TCP) with zINSTREAM, in
 * length-prefixed chunks (src/scan/clamd.ts); clamd decodes MIME itself. An
 * infected message is refused naming what clamd found: DENY "Virus found:
 * Eicar-Signature". Results: `pass: clean`, `fail: virus:<name>` (detail
 * `virus`), `skip: unscanned: ...`, `err: ...`.
 *
 * Size: messages over `max_size` are not read at all; they pass unscanned,
 * marked (result skip, header "X-Virus-Scanned: Unscanned, ..."). clamd
 * itself stops reading at its StreamMaxLength (there is no command to ask it
 * for that value): keep `max_size` at or below it. A message clamd refuses as
 * too large is treated like one over `max_size` (passes unscanned, marked, and
 * a warning says to lower max_size): deferring it would only retry a message
 * that can never be scanned. Scanning just the first StreamMaxLength bytes is
 * not done: a truncated MIME message hides what lies past the cut anyway.
 *
 * Options:
 *   server: string           clamd address: a UNIX socket path (default /var/run/clamav/clamd.ctl,
 *                            Debian's LocalSocket), or host:port / [v6]:port (clamd's TCPSocket, usually 3310)
 *   scan_timeout: number     seconds for the whole scan (default 10; keep it below the plugin's `timeout`
 *                            and, with other scanners, within data_post_budget)
 *   max_size: number         bytes; larger messages pass unscanned, marked (default 26214400 = 25 MiB,
 *                            Debian clamd.conf's StreamMaxLength 25M)
 *   on_scan_error: defer | accept   clamd down, timing out or answering an error: 451 (default) or
 *                            pass unscanned (marked, result err)
 *   add_header: boolean      add "X-Virus-Scanned: ClamAV at <host>" to scanned mail and
 *                            "X-Virus-Scanned: Unscanned, <why>" to mail that was not, after removing
 *                            copies that came from outside (default true); with the core's `reject: false`
 *                            an infected message passes as "X-Virus-Scanned: ClamAV at <host>; infected: <name>",
 *                            and one clamd failed to scan as "X-Virus-Scanned: Unscanned, clamd failed"
 *
 * Not immune by default (`immune: false`): mail from your own relay clients is
 * scanned too, since an infected workstation is exactly where viruses come from.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import type { Message } from '../src/message/types';
import { clamdScan, CLAMD_DEFAULT_SOCKET } from '../src/scan/clamd';
import { runScan, scanFailure, scannerOptionFields, scannerTarget, unscannedValue } from '../src/scan/policy';

const CLAMD_DEFAULT_PORT = 3310;
const HEADER = 'X-Virus-Scanned';

const options = z
  .object({
    ...scannerOptionFields({ server: CLAMD_DEFAULT_SOCKET, scan_timeout: 10, max_size: 25 * 1024 * 1024 }),
    add_header: z.boolean().default(true),
  })
  .strict();

/** Virus names go into the SMTP reply: printable ASCII only. */
const printable = (s: string): string => s.replace(/[^\x21-\x7e ]/g, '?').slice(0, 200);

export default definePlugin({
  description: 'scan the message with ClamAV (clamd) and refuse infected mail',
  options,
  defaults: { immune: false },
  create(opts) {
    const target = scannerTarget(opts, CLAMD_DEFAULT_PORT);
    const scannedBy = `ClamAV at ${hostname()}`;

    const mark = (message: Message, value: string): void => {
      if (!opts.add_header) return;
      message.headers.remove(HEADER);
      message.headers.prepend(HEADER, value);
    };

    return {
      async data_post(ctx, message) {
        const outcome = await runScan(message, opts, () => clamdScan(message, { target, timeoutMs: opts.scan_timeout * 1000 }));
        if (outcome.status === 'skipped') {
          ctx.result({ skip: `unscanned: ${outcome.reason}` });
          mark(message, unscannedValue(outcome.reason));
          return;
        }
        if (outcome.status === 'failed') {
          // Marked even when deferring: under the core's reject: false the deferral is only
          // logged and the message goes on, unscanned.
          mark(message, unscannedValue('clamd failed'));
          return scanFailure(ctx, opts, outcome.error, 'Virus scanner');
        }
        const v = outcome.verdict;
        if (v.status === 'too_large') {
          ctx.log.warn(`clamd refused a message of ${message.size()} bytes as too large (${v.detail}): set max_size at or below clamd's StreamMaxLength`);
          const reason = `message of ${message.size()} bytes exceeds clamd's StreamMaxLength`;
          ctx.result({ skip: `unscanned: ${reason}` });
          mark(message, unscannedValue(reason));
          return;
        }
        if (v.status === 'infected') {
          const name = printable(v.virus);
          ctx.result({ fail: `virus:${name}`, virus: name, scan_ms: outcome.ms });
          // Seen only when the rejection is not enforced (core option reject: false).
          mark(message, `${scannedBy}; infected: ${name}`);
          return deny(`Virus found: ${name}`, '5.7.1');
        }
        ctx.result({ pass: 'clean', scan_ms: outcome.ms });
        mark(message, scannedBy);
      },
    };
  },
});
