import { simpleParser, type ParsedMail, type AddressObject } from 'mailparser';
import type { Readable } from 'node:stream';

/**
 * Turns a message into the set of tokens the classifier counts.
 *
 * What is left out matters as much as what is kept: Received lines, dates
 * and message ids are unique per message and only teach the filter where a
 * training corpus came from, so they are skipped. Header tokens are
 * prefixed with the field name, so "free" in a Subject and "free" in the
 * text are different evidence, as in SpamBayes.
 */

export interface TokenizeOptions {
  /** Tokens kept per message at most (the first ones); keeps work bounded on huge mails. */
  maxTokens?: number;
  /** Body characters looked at per text part. */
  maxTextChars?: number;
}

const DEFAULTS = { maxTokens: 3000, maxTextChars: 200_000 };

/** Header fields whose words are tokens, each with its own prefix. */
const WORD_HEADERS = ['subject'];
/** Header fields kept whole (lower-cased), as one token each. */
const WHOLE_HEADERS = ['x-mailer', 'user-agent', 'content-transfer-encoding'];

const WORD = /[\p{L}\p{N}][\p{L}\p{N}'$!%.-]*[\p{L}\p{N}$!%]|[\p{L}\p{N}]/gu;
const URL = /\bhttps?:\/\/([a-z0-9.-]+)/gi;

export function words(text: string, prefix: string, out: Set<string>, max: number): void {
  for (const m of text.matchAll(WORD)) {
    if (out.size >= max) return;
    const w = m[0].toLowerCase();
    // Very short words carry no signal; very long ones are usually encoded junk: keep a marker of their length instead.
    if (w.length < 3) continue;
    if (w.length > 20) out.add(`${prefix}skip:${w[0]}${Math.floor(w.length / 10) * 10}`);
    else out.add(prefix + w);
  }
}

function addressTokens(field: AddressObject | AddressObject[] | undefined, prefix: string, out: Set<string>): void {
  const list = Array.isArray(field) ? field : field ? [field] : [];
  for (const group of list) {
    for (const a of group.value) {
      const addr = (a.address ?? '').toLowerCase();
      const at = addr.lastIndexOf('@');
      if (at > 0) {
        out.add(`${prefix}addr:${addr}`);
        out.add(`${prefix}domain:${addr.slice(at + 1)}`);
      }
      if (a.name) words(a.name, `${prefix}name:`, out, Infinity);
    }
  }
}

/** Tokens of an already parsed message. */
export function tokensOf(mail: ParsedMail, options: TokenizeOptions = {}): Set<string> {
  const { maxTokens, maxTextChars } = { ...DEFAULTS, ...options };
  const out = new Set<string>();
  for (const name of WORD_HEADERS) {
    const v = mail.headers.get(name);
    if (typeof v === 'string') words(v, `${name}:`, out, maxTokens);
  }
  for (const name of WHOLE_HEADERS) {
    const v = mail.headers.get(name);
    if (typeof v === 'string' && v.trim()) out.add(`${name}:${v.trim().toLowerCase().slice(0, 60)}`);
  }
  addressTokens(mail.from, 'from:', out);
  addressTokens(mail.replyTo, 'reply-to:', out);
  // Where the message id was made says which software and host sent it, not who the message is for.
  const mid = /@([^>\s]+)>?\s*$/.exec(mail.messageId ?? '');
  out.add(mid ? `message-id:${mid[1]!.toLowerCase()}` : 'message-id:none');
  const charset = (mail.headers.get('content-type') as { params?: { charset?: string } } | undefined)?.params?.charset;
  if (charset) out.add(`charset:${charset.toLowerCase()}`);
  const ct = mail.headers.get('content-type') as { value?: string } | undefined;
  if (ct?.value) out.add(`content-type:${ct.value.toLowerCase()}`);
  for (const att of mail.attachments) out.add(`attachment:${att.contentType.toLowerCase()}`);

  const text = (mail.text ?? '').slice(0, maxTextChars);
  const html = typeof mail.html === 'string' ? mail.html.slice(0, maxTextChars) : '';
  if (html) out.add('body:has-html');
  if (!text.trim() && html) out.add('body:html-only');
  for (const m of `${text}\n${html}`.matchAll(URL)) {
    if (out.size >= maxTokens) break;
    out.add(`url:${m[1]!.toLowerCase().replace(/^www\./, '')}`);
  }
  words(text || html.replace(/<[^>]*>/g, ' '), '', out, maxTokens);
  return out;
}

/** Parses and tokenises a message stream or buffer. */
export async function tokenize(source: Readable | Buffer | string, options: TokenizeOptions = {}): Promise<Set<string>> {
  const mail = await simpleParser(source, { skipImageLinks: true, skipTextToHtml: true, skipTextLinks: true });
  return tokensOf(mail, options);
}
