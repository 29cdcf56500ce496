/**
 * headers — basic RFC 5322 sanity of the header block, at data_post.
 *
 * Options:
 *   required: string[]   headers that must be present (default From, Date)
 *   singular: string[]   headers allowed at most once (default RFC 5322 3.6's: Date, From, Sender,
 *                        Reply-To, To, Cc, Bcc, Message-ID, In-Reply-To, References, Subject)
 *   future: number       days a Date may lie ahead of our clock (default 2; 0 = no limit)
 *   past: number         days a Date may lie behind (default 15; 0 = no limit)
 *
 *   checks: {...}        what each of the checks below does: reject (refuse and record), record (only
 *                        record, for karma and the log), or off
 *     from_invalid        (reject) From has no parsable mailbox, or more <addresses> than mailboxes
 *                         ("Alice <a@example.com> <b@example.org>", a way to fool address display)
 *     from_multiple       (reject) From holds several mailboxes but there is no Sender with exactly
 *                         one (RFC 5322 3.6.2)
 *     message_id_missing  (off) no Message-ID; off by default since submission clients leave it to
 *                         the MSA (Postfix's cleanup adds one); add Message-ID to `required` to refuse
 *     message_id_invalid  (record) Message-ID is not "<left@right>"; many bulk mailers get it wrong
 *     from_envelope       (record) the From domain differs from the envelope sender's domain
 *                         (null sender not compared): mailing lists and mail services do this all the
 *                         time, so it is a hint for karma, not a reason to refuse
 *     from_recipient      (record) From is one of the recipients while the envelope sender is
 *                         someone else (the "mail from yourself" spam pattern)
 *   alignment: relaxed | strict   from_envelope compares organizational domains (relaxed, the
 *                        default: bounces.example.com matches example.com) or exact domains (strict)
 *
 * A Date that is not an RFC 5322 date-time is always a failure (obsolete
 * syntax such as 2-digit years and zone names is accepted, a missing zone
 * counts as UTC). Every problem found is recorded in `fail`
 * (`required:<Name>`, `singular:<Name>`, `date:invalid|future|past`,
 * `from:invalid`, `from:multiple`, `message-id:missing`, `message-id:invalid`,
 * `from:envelope`, `from:recipient`); checks that pass add `required`,
 * `singular` and `date` to `pass`. Details: `date_offset` (seconds the Date lies
 * ahead of our clock, negative behind), `from_domain`, `envelope_domain`,
 * `from_aligned`. The rejection names each problem of the rejecting checks.
 */
import addressparser from 'nodemailer/lib/addressparser';
import { getDomain } from 'tldts';
import { z } from 'zod';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import type { MessageHeaders } from '../src/message/types';

const DAY = 86_400_000;
const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
/** RFC 5322 4.3 obs-zone; military letters are "-0000" there since RFC 822 got their sign wrong. */
const ZONES: Record<string, number> = { ut: 0, gmt: 0, z: 0, est: -300, edt: -240, cst: -360, cdt: -300, mst: -420, mdt: -360, pst: -480, pdt: -420 };

const DATE_RE =
  /^(?:([a-z]{3})\s*,\s*)?(\d{1,2})\s+([a-z]{3})\s+(\d{2,4})\s+(\d{1,2})\s*:\s*(\d{2})(?:\s*:\s*(\d{2}))?(?:\s+([+-]\d{4}|[a-z]{1,3}))?$/i;

/** Milliseconds since the epoch of an RFC 5322 date-time, or undefined if it is not one. */
export function parseRfc5322Date(value: string): number | undefined {
  let text = value;
  // CFWS may hold comments, typically the zone name after the offset: "+0200 (CEST)".
  for (let prev = ''; prev !== text; ) [prev, text] = [text, text.replace(/\((?:[^()\\]|\\.)*\)/g, ' ')];
  const m = DATE_RE.exec(text.replace(/\s+/g, ' ').trim());
  if (!m) return undefined;
  const [, dow, dd, mon, yy, hh, mi, ss, zone] = m;
  if (dow && !DAYS.includes(dow.toLowerCase())) return undefined;
  const month = MONTHS.indexOf(mon.toLowerCase());
  if (month < 0) return undefined;
  let year = Number(yy);
  if (yy.length === 2) year += year < 50 ? 2000 : 1900;
  else if (yy.length === 3) year += 1900;
  const day = Number(dd);
  const [hour, minute, second] = [Number(hh), Number(mi), Math.min(Number(ss ?? 0), 59)];
  const daysInMonth = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  if (year < 1900 || day < 1 || day > daysInMonth || hour > 23 || minute > 59 || Number(ss ?? 0) > 60) return undefined;
  let offset = 0;
  if (zone && /^[+-]/.test(zone)) {
    const [h, mm] = [Number(zone.slice(1, 3)), Number(zone.slice(3))];
    if (mm > 59) return undefined;
    offset = (zone[0] === '-' ? -1 : 1) * (h * 60 + mm);
  } else if (zone) {
    const z = zone.toLowerCase();
    if (z in ZONES) offset = ZONES[z];
    else if (!/^[a-ik-z]$/.test(z)) return undefined;
  }
  // Date.UTC maps 2-digit years to 19xx: set the year separately.
  const t = new Date(Date.UTC(2000, month, day, hour, minute, second));
  t.setUTCFullYear(year);
  return t.getTime() - offset * 60_000;
}

type Action = 'reject' | 'record' | 'off';
const action = (d: Action) => z.enum(['reject', 'record', 'off']).default(d);

/** The mailboxes of an address-list header value (groups flattened), and how many "<...>" it holds. */
export function parseMailboxes(value: string): { mailboxes: string[]; angles: number } {
  const mailboxes: string[] = [];
  const walk = (list: ReturnType<typeof addressparser>): void => {
    for (const a of list) {
      if ('group' in a && Array.isArray(a.group)) walk(a.group);
      else mailboxes.push((a as { address?: string }).address ?? '');
    }
  };
  walk(addressparser(value));
  let text = value.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  for (let prev = ''; prev !== text; ) [prev, text] = [text, text.replace(/\((?:[^()\\]|\\.)*\)/g, ' ')];
  const angles = (text.match(/<[^<>]*>/g) ?? []).length;
  return { mailboxes, angles };
}

const LABEL = /^(?:[a-z0-9_\x80-\uffff](?:[a-z0-9_\x80-\uffff-]*[a-z0-9_\x80-\uffff])?)$/i;

/** A mailbox address as RFC 5322 allows it (local part, one @, a domain name or literal). */
export function isMailbox(address: string): boolean {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return false;
  const local = address.slice(0, at);
  const domain = address.slice(at + 1);
  if (/\s/.test(local) && !/^".*"$/.test(local)) return false;
  if (!local.startsWith('"') && local.includes('@')) return false;
  if (/^\[[^\[\]\s]+\]$/.test(domain)) return true;
  return domain.split('.').every((l) => LABEL.test(l));
}

/** RFC 5322 msg-id: "<" id-left "@" id-right ">" (with the obsolete forms' leniency), comments allowed around it. */
export function isMessageId(value: string): boolean {
  let text = value;
  for (let prev = ''; prev !== text; ) [prev, text] = [text, text.replace(/\((?:[^()\\]|\\.)*\)/g, ' ')];
  return /^<[^<>@\s]+@[^<>@\s]+>$/.test(text.trim());
}

const domainOf = (address: string): string => address.slice(address.lastIndexOf('@') + 1).toLowerCase().replace(/\.$/, '');
const organizational = (domain: string): string => getDomain(domain, { allowPrivateDomains: false }) ?? domain;

interface Findings {
  pass: string[];
  fail: string[];
  /** Problems of checks set to reject: the rejection text. */
  problems: string[];
  details: Record<string, unknown>;
}

type Checks = Record<'from_invalid' | 'from_multiple' | 'message_id_missing' | 'message_id_invalid' | 'from_envelope' | 'from_recipient', Action>;

function finding(f: Findings, how: Action, fail: string, problem: string): void {
  if (how === 'off') return;
  f.fail.push(fail);
  if (how === 'reject') f.problems.push(problem);
}

/** From, Sender and Message-ID, and the From against the envelope. */
function checkOriginator(ctx: HookContext, h: MessageHeaders, checks: Checks, alignment: 'relaxed' | 'strict', f: Findings): void {
  const fromValue = h.get('From');
  let from: string | undefined;
  if (fromValue !== undefined) {
    const { mailboxes, angles } = parseMailboxes(fromValue);
    const valid = mailboxes.filter(isMailbox);
    if (!mailboxes.length || valid.length !== mailboxes.length || angles > mailboxes.length) {
      finding(f, checks.from_invalid, 'from:invalid', 'From header has no valid address');
    } else {
      from = valid[0];
      if (valid.length > 1) {
        const sender = h.get('Sender');
        const senders = sender === undefined ? [] : parseMailboxes(sender).mailboxes.filter(isMailbox);
        if (senders.length !== 1) {
          finding(f, checks.from_multiple, 'from:multiple', `From header has ${valid.length} addresses but no Sender header with one`);
        }
      }
    }
  }

  const mid = h.get('Message-ID');
  if (mid === undefined) finding(f, checks.message_id_missing, 'message-id:missing', 'Message-ID header is missing');
  else if (!isMessageId(mid)) finding(f, checks.message_id_invalid, 'message-id:invalid', 'Message-ID header is not valid');

  const envelope = ctx.txn?.sender?.address;
  if (from === undefined || !envelope) return; // no usable From, or the null sender (bounces)
  const fromDomain = domainOf(from);
  const envDomain = domainOf(envelope);
  const aligned = alignment === 'strict' ? fromDomain === envDomain : organizational(fromDomain) === organizational(envDomain);
  f.details.from_domain = fromDomain;
  f.details.envelope_domain = envDomain;
  f.details.from_aligned = aligned;
  if (!aligned) {
    finding(f, checks.from_envelope, 'from:envelope', `From domain ${fromDomain} does not match the envelope sender's ${envDomain}`);
  }
  const fromLower = from.toLowerCase();
  const toSelf = (ctx.txn?.recipients ?? []).some((r) => r.address.toLowerCase() === fromLower);
  if (toSelf && envelope.toLowerCase() !== fromLower) {
    finding(f, checks.from_recipient, 'from:recipient', 'From header names a recipient but the envelope sender is someone else');
  }
}

export default definePlugin({
  description: 'require, limit and date-check RFC 5322 headers; check From, Sender, Message-ID and From against the envelope',
  options: z
    .object({
      required: z.array(z.string().min(1)).default(['From', 'Date']),
      singular: z
        .array(z.string().min(1))
        .default(['Date', 'From', 'Sender', 'Reply-To', 'To', 'Cc', 'Bcc', 'Message-ID', 'In-Reply-To', 'References', 'Subject']),
      future: z.number().nonnegative().default(2),
      past: z.number().nonnegative().default(15),
      checks: z
        .object({
          from_invalid: action('reject'),
          from_multiple: action('reject'),
          message_id_missing: action('off'),
          message_id_invalid: action('record'),
          from_envelope: action('record'),
          from_recipient: action('record'),
        })
        .strict()
        .prefault({}),
      alignment: z.enum(['relaxed', 'strict']).default('relaxed'),
    })
    .strict(),
  create(opts) {
    return {
      data_post(ctx, message) {
        const h = message.headers;
        const f: Findings = { pass: [], fail: [], problems: [], details: {} };
        const { pass, fail, problems } = f;

        const missing = opts.required.filter((name) => h.count(name) === 0);
        for (const name of missing) {
          fail.push(`required:${name}`);
          problems.push(`required header ${name} is missing`);
        }
        if (opts.required.length && !missing.length) pass.push('required');

        const repeated = opts.singular.filter((name) => h.count(name) > 1);
        for (const name of repeated) {
          fail.push(`singular:${name}`);
          problems.push(`header ${name} appears ${h.count(name)} times, RFC 5322 allows one`);
        }
        if (opts.singular.length && !repeated.length) pass.push('singular');

        const date = h.get('Date');
        if (date !== undefined) {
          const t = parseRfc5322Date(date);
          const now = Date.now();
          if (t !== undefined) f.details.date_offset = Math.round((t - now) / 1000);
          if (t === undefined) {
            fail.push('date:invalid');
            problems.push('Date header is not a valid RFC 5322 date');
          } else if (opts.future && t - now > opts.future * DAY) {
            fail.push('date:future');
            problems.push('Date header is too far in the future');
          } else if (opts.past && now - t > opts.past * DAY) {
            fail.push('date:past');
            problems.push('Date header is too far in the past');
          } else {
            pass.push('date');
          }
        }

        checkOriginator(ctx, h, opts.checks, opts.alignment, f);

        ctx.result({ pass, fail, ...f.details });
        if (problems.length) return deny(problems.join('; '));
      },
    };
  },
});
