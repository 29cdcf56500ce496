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
 * A Date that is not an RFC 5322 date-time is always a failure (obsolete
 * syntax such as 2-digit years and zone names is accepted, a missing zone
 * counts as UTC). Every problem found is recorded; the rejection names each
 * offending header.
 */
import { z } from 'zod';
import { definePlugin } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';

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

export default definePlugin({
  description: 'require, limit and date-check RFC 5322 headers',
  options: z
    .object({
      required: z.array(z.string().min(1)).default(['From', 'Date']),
      singular: z
        .array(z.string().min(1))
        .default(['Date', 'From', 'Sender', 'Reply-To', 'To', 'Cc', 'Bcc', 'Message-ID', 'In-Reply-To', 'References', 'Subject']),
      future: z.number().nonnegative().default(2),
      past: z.number().nonnegative().default(15),
    })
    .strict(),
  create(opts) {
    return {
      data_post(ctx, message) {
        const h = message.headers;
        const pass: string[] = [];
        const fail: string[] = [];
        const problems: string[] = [];

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

        ctx.result({ pass, fail });
        if (problems.length) return deny(problems.join('; '));
      },
    };
  },
});
