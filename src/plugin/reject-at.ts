/**
 * Delivering a check's verdict at RCPT instead of where it was reached, so
 * that postmaster@ and abuse@ stay reachable from a client or sender the
 * check refuses (RFC 5321 4.5.1; what mail administrators expect from
 * DNSBL-style checks). dnsbl, rhsbl, helo and resolvable_fromhost share it
 * through their `reject_at` and `exempt_recipients` options.
 */
import { z } from 'zod';
import type { HookContext } from './api';
import { Decision, type Verdict } from './decision';

/** The `exempt_recipients` option: local parts (any domain) or whole addresses. */
export const exemptRecipientsOption = z.array(z.string().min(1)).default(['postmaster', 'abuse']);

/** Whether a recipient stays reachable: its local part or its whole address is listed (case-insensitive). */
export function exemptRecipient(entries: readonly string[]): (address: { address: string; user: string }) => boolean {
  const locals = new Set(entries.filter((e) => !e.includes('@')).map((e) => e.toLowerCase()));
  const full = new Set(entries.filter((e) => e.includes('@')).map((e) => e.toLowerCase()));
  return (a) => locals.has(a.user.toLowerCase()) || full.has(a.address.toLowerCase());
}

/**
 * The verdict for one RCPT: nothing when the check had no objection or the
 * recipient is exempt (recorded as a skip, so the log shows why it passed).
 */
export function verdictForRecipient(
  ctx: HookContext,
  rcpt: { address: string; user: string },
  verdict: Verdict,
  exempt: (address: { address: string; user: string }) => boolean,
): Verdict | undefined {
  if (verdict.decision === Decision.DECLINED) return undefined;
  if (exempt(rcpt)) {
    ctx.result({ skip: `rcpt ${rcpt.address}` });
    return undefined;
  }
  return verdict;
}
