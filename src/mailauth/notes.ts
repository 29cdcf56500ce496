/**
 * What the sender-authentication plugins (spf, dkim, domainkeys, dmarc) found,
 * kept in the transaction's notes under one key so that dmarc can use the spf
 * and dkim results and auth_results can write them all into one
 * Authentication-Results header. Each plugin also records a summary with
 * ctx.result() for the log line and karma; these notes carry the detail.
 */
import type { TransactionState } from '../session/state';

/** The key in txn.notes. */
export const NOTES_KEY = 'mailauth';

export type SpfResultCode = 'pass' | 'fail' | 'softfail' | 'neutral' | 'none' | 'temperror' | 'permerror';
/** RFC 8601 2.7.1 results for dkim (and domainkeys). */
export type DkimResultCode = 'pass' | 'fail' | 'policy' | 'neutral' | 'none' | 'temperror' | 'permerror';
export type DmarcResultCode = 'pass' | 'fail' | 'none' | 'temperror' | 'permerror';
export type DmarcPolicy = 'none' | 'quarantine' | 'reject';

export interface SpfNote {
  result: SpfResultCode;
  /** The domain checked: the MAIL FROM domain, or the HELO name for the null sender. */
  domain: string;
  /** mfrom (MAIL FROM) or helo (null sender: postmaster@HELO). */
  scope: 'mfrom' | 'helo';
  /** The identity checked: the envelope sender, or postmaster@HELO. */
  identity: string;
  ip: string;
  helo?: string;
  comment?: string;
}

export interface DkimNote {
  result: DkimResultCode;
  /** d= */
  domain: string;
  /** s= */
  selector: string;
  /** a= */
  algorithm?: string;
  /** The first 8 characters of b=, to tell signatures apart (RFC 6008). */
  b?: string;
  comment?: string;
}

export interface ArcNote {
  result: string;
  /** Instance of the newest ARC set. */
  i?: number;
  comment?: string;
}

export interface DomainKeysNote {
  result: DkimResultCode;
  domain: string;
  selector: string;
  /** The header the sending domain was taken from, and its address. */
  senderHeader?: 'from' | 'sender';
  sender?: string;
  comment?: string;
}

export interface DmarcNote {
  result: DmarcResultCode;
  /** The RFC5322.From domain. */
  headerFrom: string;
  /** The domain whose record applied (the From domain or its organisational domain). */
  policyDomain?: string;
  /** The policy that applied (sp for a subdomain when the organisational record has one). */
  policy?: DmarcPolicy;
  p?: string;
  sp?: string;
  pct?: number;
  /** What was done: the policy, or less after pct sampling; 'none' for a pass. */
  disposition: DmarcPolicy;
  /** The authenticated identifiers that aligned, if any. */
  alignedDkim?: string;
  alignedSpf?: string;
  comment?: string;
}

export interface AuthNotes {
  spf?: SpfNote;
  /** One entry per DKIM-Signature; empty when the message had none. */
  dkim?: DkimNote[];
  arc?: ArcNote;
  domainkeys?: DomainKeysNote[];
  dmarc?: DmarcNote;
}

/** The transaction's authentication notes, created on first use. */
export function authNotes(txn: TransactionState): AuthNotes {
  let n = txn.notes[NOTES_KEY] as AuthNotes | undefined;
  if (!n) {
    n = {};
    txn.notes[NOTES_KEY] = n;
  }
  return n;
}

/** The notes if any plugin left some, without creating them. */
export function peekAuthNotes(txn: TransactionState | undefined): AuthNotes | undefined {
  return txn?.notes[NOTES_KEY] as AuthNotes | undefined;
}
