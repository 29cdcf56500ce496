/**
 * DKIM (and ARC) verification with mailauth, its results put in RFC 8601
 * terms. mailauth calls several hard failures "neutral" (a body hash that does
 * not match, a missing or unusable key) and silently drops signatures it cannot
 * process; here a changed body is a fail, a key that is absent or unusable a
 * permerror, and every DKIM-Signature field gets a result.
 */
import type { Readable } from 'node:stream';
import type { HeaderField } from '../message/types';
import { arc, dkimVerify, type DkimSignatureResult, type NodeResolver } from './lib';
import type { ArcNote, DkimNote, DkimResultCode } from './notes';

const KEY_PROBLEMS = new Set(['no key', 'unknown key version', 'unknown key type', 'invalid public key']);
const CODES = new Set<DkimResultCode>(['pass', 'fail', 'policy', 'neutral', 'none', 'temperror', 'permerror']);

/** RFC 8601 result for one of mailauth's signature results. */
export function dkimResultCode(r: DkimSignatureResult): DkimResultCode {
  const { result, comment } = r.status;
  if (result === 'neutral' && comment === 'body hash did not verify') return 'fail';
  if (result === 'neutral' && comment && KEY_PROBLEMS.has(comment)) return 'permerror';
  return CODES.has(result as DkimResultCode) ? (result as DkimResultCode) : 'neutral';
}

function toNote(r: DkimSignatureResult): DkimNote {
  const comment = r.status.comment ?? (r.status.policy ? Object.values(r.status.policy).join(' ') : undefined);
  return {
    result: dkimResultCode(r),
    domain: (r.signingDomain ?? '').toLowerCase(),
    selector: r.selector ?? '',
    algorithm: r.algo,
    b: r.signature?.replace(/\s+/g, '').slice(0, 8),
    comment,
  };
}

/** Tags of a DKIM-Signature value (values with whitespace removed, enough to name it). */
export function signatureTags(value: string): Map<string, string> {
  const tags = new Map<string, string>();
  for (const part of value.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    tags.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).replace(/\s+/g, ''));
  }
  return tags;
}

export interface DkimVerification {
  /** One per DKIM-Signature field, empty if there was none. */
  dkim: DkimNote[];
  /** Only when the message carries an ARC set and ARC was asked for. */
  arc?: ArcNote;
}

export interface VerifyOptions {
  resolver: NodeResolver;
  /** Shorter RSA keys give `policy` (weak key). */
  minKeyBits: number;
  arc: boolean;
}

/**
 * Verifies every DKIM-Signature of the message streamed in; `fields` are the
 * same message's header fields, to account for signatures mailauth skipped.
 */
export async function verifyDkim(input: Readable, fields: readonly HeaderField[], opts: VerifyOptions): Promise<DkimVerification> {
  const res = await dkimVerify(input, { resolver: opts.resolver, minBitLength: opts.minKeyBits });
  const signed = res.results.filter((r) => r.signingDomain !== undefined || r.signature !== undefined);
  const dkim = signed.map(toNote);
  const seen = new Set(signed.map((r) => (r.signature ?? '').replace(/\s+/g, '')));
  for (const f of fields) {
    if (f.name.toLowerCase() !== 'dkim-signature') continue;
    const tags = signatureTags(f.value);
    if (seen.has(tags.get('b') ?? '')) continue;
    dkim.push({
      result: 'neutral',
      domain: (tags.get('d') ?? '').toLowerCase(),
      selector: tags.get('s') ?? '',
      algorithm: tags.get('a'),
      b: tags.get('b')?.slice(0, 8),
      comment: 'signature not usable (unsupported algorithm or canonicalization, or a required tag missing)',
    });
  }
  let arcNote: ArcNote | undefined;
  const chain = res.arc?.chain;
  if (opts.arc && res.arc && (res.arc.error || (Array.isArray(chain) && chain.length > 0))) {
    const a = await arc(res.arc, { resolver: opts.resolver, minBitLength: opts.minKeyBits });
    arcNote = { result: a.status.result, i: typeof a.i === 'number' ? a.i : undefined, comment: a.status.comment };
  }
  return { dkim, arc: arcNote };
}
