/**
 * DomainKeys (RFC 4870, historic) verification, which mailauth does not do.
 *
 * A DomainKey-Signature covers the header fields that follow it (only those
 * named in h=, if present, in message order), the empty line after the header
 * block, and the body, canonicalized as
 *   simple: unchanged;
 *   nofws:  every SP, HTAB, CR and LF removed from each header field (so
 *           folded fields are unfolded), SP and HTAB removed from body lines;
 * every line then ends in CRLF, and empty lines at the end of the body are
 * dropped (so is the header/body separator when the body is only empty lines).
 * The signature is RSA (PKCS#1 v1.5) over SHA-1 of that, the public key the p=
 * of the TXT record at selector._domainkey.domain. The signing domain must be
 * the domain of the sending address (Sender if present, else From), or a
 * parent of it, and that header must be signed.
 */
import { createPublicKey, createVerify, type KeyObject } from 'node:crypto';
import addressparser from 'nodemailer/lib/addressparser';
import type { DnsResolver } from '../dns/resolver';
import { isFailure } from '../dns/resolver';
import type { HeaderField } from '../message/types';
import { normalizeDomain } from './domains';
import type { DkimResultCode, DomainKeysNote } from './notes';

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HT = 0x09;
const CRLF = Buffer.from('\r\n');

export type DkCanon = 'simple' | 'nofws';

/** Tag list (tag=value; ...), values with whitespace removed (b= is folded base64). */
export function parseTags(value: string): Map<string, string> {
  const tags = new Map<string, string>();
  for (const part of value.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim().toLowerCase();
    if (name && !tags.has(name)) tags.set(name, part.slice(eq + 1).replace(/[ \t\r\n]+/g, ''));
  }
  return tags;
}

/** One header field canonicalized (raw bytes in, CRLF-terminated bytes out). */
export function canonHeader(raw: Buffer, canon: DkCanon): Buffer {
  if (canon === 'simple') return raw[raw.length - 1] === LF ? raw : Buffer.concat([raw, CRLF]);
  const out = Buffer.allocUnsafe(raw.length + 2);
  let n = 0;
  for (const c of raw) if (c !== SP && c !== HT && c !== CR && c !== LF) out[n++] = c;
  out[n++] = CR;
  out[n++] = LF;
  return out.subarray(0, n);
}

/**
 * Streaming body canonicalizer: feed it the separator line and the body in
 * any pieces; empty lines are held back until a non-empty line shows they are
 * not trailing.
 */
export class DkBodyCanon {
  private partial: Buffer[] = [];
  private pendingEmpty = 0;

  constructor(private readonly canon: DkCanon) {}

  /** Canonical bytes for the complete lines in `chunk`. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let start = 0;
    for (let lf = chunk.indexOf(LF); lf !== -1; lf = chunk.indexOf(LF, start)) {
      let line = chunk.subarray(start, lf);
      if (this.partial.length) {
        line = Buffer.concat([...this.partial, line]);
        this.partial = [];
      }
      this.line(line, out);
      start = lf + 1;
    }
    if (start < chunk.length) this.partial.push(chunk.subarray(start));
    return out;
  }

  /** The rest: a last line without CRLF counts as a line; trailing empty lines are dropped. */
  end(): Buffer[] {
    const out: Buffer[] = [];
    if (this.partial.length) {
      const line = Buffer.concat(this.partial);
      this.partial = [];
      this.line(line, out);
    }
    this.pendingEmpty = 0;
    return out;
  }

  private line(raw: Buffer, out: Buffer[]): void {
    let line = raw.length && raw[raw.length - 1] === CR ? raw.subarray(0, raw.length - 1) : raw;
    if (this.canon === 'nofws' && (line.includes(SP) || line.includes(HT) || line.includes(CR))) {
      const b = Buffer.allocUnsafe(line.length);
      let n = 0;
      for (const c of line) if (c !== SP && c !== HT && c !== CR) b[n++] = c;
      line = b.subarray(0, n);
    }
    if (line.length === 0) {
      this.pendingEmpty++;
      return;
    }
    for (; this.pendingEmpty > 0; this.pendingEmpty--) out.push(CRLF);
    out.push(line, CRLF);
  }
}

interface Prepared {
  note: DomainKeysNote;
  canon?: DkCanon;
  verifier?: ReturnType<typeof createVerify>;
  key?: KeyObject;
  signature?: Buffer;
  testing?: boolean;
}

/** The sending address: the first Sender field's, else the first From field's. */
function sendingAddress(fields: readonly HeaderField[]): { header: 'from' | 'sender'; field: HeaderField; address: string } | undefined {
  for (const header of ['sender', 'from'] as const) {
    const field = fields.find((f) => f.name.toLowerCase() === header);
    if (!field) continue;
    const text = Buffer.from(field.value, 'latin1').toString('utf8');
    const address = addressparser(text, { flatten: true }).find((a) => a.address)?.address ?? '';
    return { header, field, address };
  }
  return undefined;
}

/** g= granularity: a local part pattern with at most one '*'. */
function granularityMatches(pattern: string, local: string): boolean {
  if (pattern === '' || pattern === '*') return true;
  const star = pattern.indexOf('*');
  if (star < 0) return pattern === local;
  const [pre, post] = [pattern.slice(0, star), pattern.slice(star + 1)];
  return local.length >= pre.length + post.length && local.startsWith(pre) && local.endsWith(post);
}

function publicKey(p: string): KeyObject | undefined {
  const der = Buffer.from(p, 'base64');
  for (const type of ['spki', 'pkcs1'] as const) {
    try {
      const k = createPublicKey({ key: der, format: 'der', type });
      if (k.asymmetricKeyType === 'rsa') return k;
    } catch {
      // try the other encoding
    }
  }
  return undefined;
}

const done = (p: Prepared, result: DkimResultCode, comment: string): Prepared => {
  p.note.result = result;
  p.note.comment = comment;
  return p;
};

/** Checks one signature's tags, fetches its key, and starts its hash over the signed header fields. */
async function prepare(fields: readonly HeaderField[], index: number, dns: DnsResolver): Promise<Prepared> {
  const tags = parseTags(fields[index]!.value);
  const domain = normalizeDomain(tags.get('d') ?? '');
  const selector = tags.get('s') ?? '';
  const p: Prepared = { note: { result: 'neutral', domain, selector } };
  const a = (tags.get('a') ?? 'rsa-sha1').toLowerCase();
  const c = (tags.get('c') ?? 'simple').toLowerCase();
  const q = (tags.get('q') ?? 'dns').toLowerCase();
  const b = tags.get('b') ?? '';
  if (!domain || !selector || !b) return done(p, 'neutral', 'bad format: d=, s= and b= are required');
  if (a !== 'rsa-sha1') return done(p, 'neutral', `unsupported algorithm ${a}`);
  if (c !== 'simple' && c !== 'nofws') return done(p, 'neutral', `unsupported canonicalization ${c}`);
  if (q !== 'dns') return done(p, 'neutral', `unsupported query method ${q}`);

  const after = fields.slice(index + 1);
  const listed = tags.has('h') ? new Set((tags.get('h') ?? '').toLowerCase().split(':').filter(Boolean)) : undefined;
  const signed = listed ? after.filter((f) => listed.has(f.name.toLowerCase())) : after;
  const sender = sendingAddress(fields);
  if (!sender || !sender.address.includes('@')) return done(p, 'permerror', 'no sending address (Sender or From)');
  p.note.senderHeader = sender.header;
  p.note.sender = sender.address;
  if (!signed.includes(sender.field)) return done(p, 'fail', `the ${sender.header === 'from' ? 'From' : 'Sender'} field is not signed`);
  const at = sender.address.lastIndexOf('@');
  const senderDomain = normalizeDomain(sender.address.slice(at + 1));
  if (senderDomain !== domain && !senderDomain.endsWith(`.${domain}`)) return done(p, 'fail', `d=${domain} is not the sending domain ${senderDomain}`);

  const answer = await dns.query(`${selector}._domainkey.${domain}`, 'TXT');
  if (isFailure(answer.status)) return done(p, 'temperror', `key lookup failed (${answer.status})`);
  const record = answer.records.map((r) => r.join('')).find((r) => /(^|;)\s*p\s*=/.test(r));
  if (!record) return done(p, 'permerror', 'no key');
  const key = parseTags(record);
  if ((key.get('k') ?? 'rsa').toLowerCase() !== 'rsa') return done(p, 'permerror', `unsupported key type ${key.get('k')}`);
  if (!key.get('p')) return done(p, 'permerror', 'key revoked');
  if (!granularityMatches(key.get('g') ?? '', sender.address.slice(0, at))) return done(p, 'fail', 'key granularity does not cover the sender');
  p.key = publicKey(key.get('p')!);
  if (!p.key) return done(p, 'permerror', 'invalid public key');
  p.testing = /^y$/i.test(key.get('t') ?? '');

  p.canon = c;
  p.signature = Buffer.from(b, 'base64');
  p.verifier = createVerify('RSA-SHA1');
  for (const f of signed) p.verifier.update(canonHeader(f.raw, c));
  return p;
}

export interface DomainKeysInput {
  /** The header fields as received. */
  fields: readonly HeaderField[];
  /** Whether the received message had the empty line after its header block. */
  separator: boolean;
  /** The body (opened only if a signature needs it). */
  body: () => AsyncIterable<Buffer>;
}

/** At most this many signatures are checked (each costs a DNS query and a hash). */
export const MAX_SIGNATURES = 5;

/** Verifies each DomainKey-Signature field; an empty list when there is none. */
export async function verifyDomainKeys(input: DomainKeysInput, dns: DnsResolver): Promise<DomainKeysNote[]> {
  const indexes: number[] = [];
  input.fields.forEach((f, i) => f.name.toLowerCase() === 'domainkey-signature' && indexes.push(i));
  const prepared = await Promise.all(indexes.slice(0, MAX_SIGNATURES).map((i) => prepare(input.fields, i, dns)));
  const live = prepared.filter((p) => p.verifier);
  const canons = [...new Set(live.map((p) => p.canon!))].map((c) => ({ c, body: new DkBodyCanon(c) }));
  const feed = (c: DkCanon, pieces: Buffer[]): void => {
    for (const p of live) if (p.canon === c) for (const piece of pieces) p.verifier!.update(piece);
  };
  if (canons.length) {
    for (const { c, body } of canons) if (input.separator) feed(c, body.push(CRLF));
    for await (const chunk of input.body()) for (const { c, body } of canons) feed(c, body.push(chunk));
    for (const { c, body } of canons) feed(c, body.end());
  }
  for (const p of live) {
    const ok = p.verifier!.verify(p.key!, p.signature!);
    if (ok) done(p, 'pass', p.testing ? 'key in testing mode' : '');
    else done(p, p.testing ? 'neutral' : 'fail', p.testing ? 'bad signature, key in testing mode (t=y)' : 'bad signature');
    if (!p.note.comment) delete p.note.comment;
  }
  return prepared.map((p) => p.note);
}
