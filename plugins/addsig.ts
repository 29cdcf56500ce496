/**
 * addsig — add a footer (disclaimer, signature) to outgoing mail, at data_post.
 *
 * Options:
 *   signatures: { [domain]: {text} | {file} }   footer per sender domain (default {}); files relative to the config dir
 *   default: {text} | {file}                    footer for senders whose domain is not listed (default none)
 *   relay_only: boolean                         only mail from relay clients (default true)
 *   match: 'sender' | 'from'                    take the domain from the envelope sender or the From header (default 'sender')
 *
 * A plain text/plain body (7bit, 8bit or quoted-printable, ASCII-compatible
 * charset, not an attachment) gets "-- " and the footer appended in its own
 * encoding. Anything else — base64, HTML, multipart including signed, a
 * non-ASCII footer the part's charset cannot carry — is wrapped: the original
 * Content-* fields and body become the first part of a multipart/mixed, the
 * footer a text/plain part after it, so no byte of the original content (or a
 * signature over it) changes. A non-ASCII footer part is 8bit only if the mail
 * is 8-bit already (or the client said BODY=8BITMIME), else quoted-printable.
 * Null-sender mail, reports (DSN/MDN) and message/partial are left alone.
 * Not immune by default, since relay clients are whom it is for.
 */
import { isAscii } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import addressparser from 'nodemailer/lib/addressparser';
import { encode as qpEncode, wrap as qpWrap } from 'nodemailer/lib/qp';
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import type { Message, MessageHeaders } from '../src/message/types';
import type { Address } from '../src/session/state';

const CRLF = Buffer.from('\r\n');
/** Charsets in which ASCII bytes appended after a line end are ASCII text. */
const ASCII_COMPATIBLE =
  /^(us-ascii|ascii|utf-?8|iso-?8859-\d+|latin-?\d|windows-12\d\d|cp12\d\d|koi8-[a-z]+|iso-2022-[a-z0-9-]+|gb2312|gbk|gb18030|big5|euc-[a-z]+|shift_jis|tis-620)$/;

interface Footer {
  /** CRLF line ends, ending in CRLF. */
  text: string;
  ascii: boolean;
}

const footerSchema = z.union([z.object({ text: z.string().min(1) }).strict(), z.object({ file: z.string().min(1) }).strict()]);

function parseContentType(value: string): { type: string; params: Record<string, string> } {
  const semi = value.indexOf(';');
  const type = (semi < 0 ? value : value.slice(0, semi)).replace(/\(.*?\)/g, '').trim().toLowerCase();
  const params: Record<string, string> = {};
  for (const m of value.matchAll(/;\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)/g)) {
    let key = m[1].toLowerCase();
    let v = m[2].trim();
    if (v.startsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
    if (key.endsWith('*')) [key, v] = [key.replace(/\*.*$/, ''), v.replace(/^[^']*'[^']*'/, '')];
    params[key] ??= v.toLowerCase();
  }
  return { type, params };
}

const transferEncoding = (h: MessageHeaders): string =>
  (h.get('Content-Transfer-Encoding') ?? '7bit').replace(/\(.*?\)/g, '').trim().toLowerCase();

/** 'plain' or 'qp' if the footer can be appended to the body as it is, else why it must be wrapped. */
function appendMode(h: MessageHeaders, footer: Footer): 'plain' | 'qp' | { wrap: string } {
  if (h.count('Content-Type') > 1 || h.count('Content-Transfer-Encoding') > 1) return { wrap: 'repeated MIME fields' };
  const ctValue = h.get('Content-Type');
  const ct = ctValue === undefined ? { type: 'text/plain', params: {} as Record<string, string> } : parseContentType(ctValue);
  if (ct.type !== 'text/plain') return { wrap: ct.type || 'unparseable Content-Type' };
  // A text file sent as the whole message: appending would change the file.
  const disposition = h.get('Content-Disposition') ?? '';
  if (/^\s*attachment/i.test(disposition) || /filename/i.test(disposition) || ct.params.name) return { wrap: 'text attachment' };
  const charset = ct.params.charset ?? 'us-ascii';
  if (!ASCII_COMPATIBLE.test(charset)) return { wrap: `charset ${charset}` };
  if (!footer.ascii && !/^utf-?8$/.test(charset)) return { wrap: `non-ASCII footer in ${charset}` };
  const cte = transferEncoding(h);
  if (cte === 'quoted-printable') return 'qp';
  if (cte === '8bit' || (cte === '7bit' && footer.ascii)) return 'plain';
  return { wrap: cte === '7bit' ? 'non-ASCII footer in a 7bit part' : `${cte} encoding` };
}

/** One pass over the message: does it contain `needle`, and any 8-bit byte? */
async function scan(stream: Readable, needle: Buffer): Promise<{ found: boolean; eightBit: boolean }> {
  let carry: Buffer = Buffer.alloc(0);
  let found = false;
  let eightBit = false;
  for await (const chunk of stream) {
    const c = chunk as Buffer;
    eightBit ||= !isAscii(c);
    const buf = carry.length ? Buffer.concat([carry, c]) : c;
    found ||= buf.includes(needle);
    if (found && eightBit) break;
    carry = buf.subarray(Math.max(0, buf.length - needle.length + 1));
  }
  stream.destroy();
  return { found, eightBit };
}

/** A boundary that occurs nowhere in the message, and whether the message already has 8-bit content. */
async function freshBoundary(message: Message): Promise<{ boundary: string; eightBit: boolean }> {
  for (let i = 0; i < 5; i++) {
    const boundary = `=_prequeue_${randomBytes(18).toString('base64url')}`;
    const { found, eightBit } = await scan(message.stream(), Buffer.from(boundary));
    if (!found) return { boundary, eightBit };
  }
  throw new Error('could not find a boundary absent from the message');
}

function fromDomain(message: Message): string {
  const from = message.headers.get('From');
  const address = from ? (addressparser(from, { flatten: true })[0]?.address ?? '') : '';
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

/** The client announced an 8-bit body, so 8-bit content does not break its MAIL FROM. */
function eightBitDeclared(sender: Address): boolean {
  const body = Object.entries(sender.params).find(([k]) => k.toUpperCase() === 'BODY')?.[1];
  return typeof body === 'string' && /^(8BITMIME|BINARYMIME)$/i.test(body);
}

/** Returns false if the body could not be taken over. */
async function wrap(message: Message, footer: Footer, sender: Address): Promise<boolean> {
  const h = message.headers;
  // The current parts, not originalBody(): an earlier plugin may have changed the body.
  const body = [...message.bodyParts()];
  const { boundary, eightBit: has8bit } = await freshBoundary(message);

  const moved = h.fields().filter((f) => /^content-/i.test(f.name) && !/^content-length$/i.test(f.name));
  const partHeader = moved.map((f) => (f.raw.subarray(-2).equals(CRLF) ? f.raw : Buffer.concat([f.raw, CRLF])));
  if (!moved.some((f) => /^content-type$/i.test(f.name))) partHeader.unshift(Buffer.from('Content-Type: text/plain; charset=us-ascii\r\n'));

  // 8-bit footer bytes are only added to mail that is 8-bit already (declared or
  // in fact), so that a 7-bit message stays 7-bit for a 7-bit-only path.
  const originalCte = transferEncoding(h);
  const eightBit = has8bit || originalCte === '8bit' || originalCte === 'binary' || eightBitDeclared(sender);
  const footerCte = footer.ascii ? '7bit' : eightBit ? '8bit' : 'quoted-printable';
  const footerBody = footerCte === 'quoted-printable' ? qpWrap(qpEncode(Buffer.from(footer.text)), 76) : footer.text;
  // RFC 2045 6.4: a multipart's encoding is 7bit, 8bit or binary, and must cover its parts.
  const topCte = originalCte === 'binary' ? 'binary' : has8bit || originalCte === '8bit' || footerCte === '8bit' ? '8bit' : undefined;

  for (const name of new Set(moved.map((f) => f.name.toLowerCase()))) h.remove(name);
  if (h.count('MIME-Version') === 0) h.append('MIME-Version', '1.0');
  h.append('Content-Type', `multipart/mixed; boundary="${boundary}"`);
  if (topCte) h.append('Content-Transfer-Encoding', topCte);

  message.replaceBody([
    Buffer.from(`This is a multi-part message in MIME format.\r\n\r\n--${boundary}\r\n`),
    ...partHeader,
    CRLF,
    ...body,
    Buffer.from(
      `\r\n--${boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: ${footerCte}\r\n` +
        `Content-Disposition: inline\r\n\r\n`,
    ),
    Buffer.from(footerBody),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  return true;
}

export default definePlugin({
  description: 'add a per-domain footer to outgoing mail, keeping MIME valid',
  options: z
    .object({
      signatures: z.record(z.string().min(1), footerSchema).default({}),
      default: footerSchema.optional(),
      relay_only: z.boolean().default(true),
      match: z.enum(['sender', 'from']).default('sender'),
    })
    .strict(),
  defaults: { immune: false },
  async create(opts, env) {
    const load = async (f: z.infer<typeof footerSchema>, where: string): Promise<Footer> => {
      const raw = 'text' in f ? f.text : await readFile(resolve(env.configDir, f.file), 'utf8');
      const text = raw.replace(/\r\n?|\n/g, '\r\n').replace(/\s+$/, '') + '\r\n';
      if (!text.trim()) throw new Error(`${where}: empty footer`);
      if (/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(text)) throw new Error(`${where}: control characters in footer`);
      if (text.split('\r\n').some((l) => Buffer.byteLength(l) > 900)) throw new Error(`${where}: footer line over 900 bytes`);
      return { text, ascii: !/[^\x00-\x7f]/.test(text) };
    };
    const footers = new Map<string, Footer>();
    for (const [domain, f] of Object.entries(opts.signatures)) {
      footers.set(domain.toLowerCase().replace(/\.$/, ''), await load(f, `signatures.${domain}`));
    }
    const fallback = opts.default && (await load(opts.default, 'default'));
    if (!footers.size && !fallback) env.log.warn('no signatures configured: nothing will be added');

    return {
      async data_post(ctx, message) {
        if (opts.relay_only && !ctx.conn.relayClient) return void ctx.result({ skip: 'not a relay client' });
        const sender = ctx.txn?.sender;
        if (!sender || sender.address === '') return void ctx.result({ skip: 'null sender' });
        const domain = opts.match === 'from' ? fromDomain(message) : sender.host.toLowerCase().replace(/\.$/, '');
        const footer = footers.get(domain) ?? fallback;
        if (!footer) return void ctx.result({ skip: `no footer for ${domain || 'no domain'}` });
        // Both lose their meaning unless they are the top-level entity.
        const ct = message.headers.get('Content-Type');
        const type = ct === undefined ? '' : parseContentType(ct).type;
        if (type === 'multipart/report' || type === 'message/partial') return void ctx.result({ skip: type });

        const mode = appendMode(message.headers, footer);
        if (typeof mode === 'object') {
          if (await wrap(message, footer, sender)) ctx.result({ pass: 'wrapped', domain, why: mode.wrap });
          else ctx.result({ err: 'body changed by another plugin and too big to copy' });
          return;
        }
        const tail = message.bodySize() > 0 ? await message.bodyTail(2) : CRLF;
        const sig = (tail.equals(CRLF) ? '' : '\r\n') + (footer.text.startsWith('-- \r\n') ? '' : '\r\n-- \r\n') + footer.text;
        message.appendBody(mode === 'qp' ? qpWrap(qpEncode(Buffer.from(sig)), 76) : Buffer.from(sig));
        ctx.result({ pass: mode === 'qp' ? 'appended (quoted-printable)' : 'appended', domain });
      },
    };
  },
});
