/**
 * dmarc — does the From domain's DMARC policy (RFC 7489) accept this message?
 * At data_post: the RFC5322.From domain must align with a passing SPF
 * identity or a passing DKIM signature (relaxed: the same organisational
 * domain, from the Public Suffix List; strict, adkim=s / aspf=s: the same
 * domain). The record is looked up at _dmarc.<From domain>, then at the
 * organisational domain, whose `sp` applies to subdomains.
 *
 * Needs: dkim listed before it (its results in txn.notes.mailauth.dkim; without
 * them DMARC can only pass through SPF, which is logged), and the spf plugin's
 * result if spf is configured; otherwise dmarc checks SPF itself (the same
 * check: MAIL FROM, or the HELO name for the null sender).
 *
 * Outcomes: pass, fail, none (no record), temperror (a lookup failed, or an
 * aligned DKIM/SPF check had a temporary error, so a pass was possible),
 * permerror (no single From domain). For a fail the policy applies: `pct`
 * samples it (a message outside the sample gets the next milder treatment:
 * quarantine instead of reject, none instead of quarantine).
 *   reject:     DENY (550 5.7.1) with `reject_on_reject: true`; otherwise
 *               treated as quarantine.
 *   quarantine: the header `quarantine_header` is added (incoming copies of it
 *               are removed) and txn.notes.mailauth.dmarc.disposition is
 *               'quarantine', for a later plugin (or the MDA) to file it away.
 *
 * Options:
 *   reject_on_reject: boolean      refuse mail failing DMARC of a p=reject domain (default false)
 *   quarantine_header: string|false   header for quarantined mail (default X-DMARC-Quarantine)
 *   defer_on_temperror: boolean    answer 451 when DMARC could not be evaluated (default false: accept)
 *   report_file: string            append one JSON line per message with a DMARC record, for
 *                                  aggregate reports (format in plugins/README.md); relative to
 *                                  the config dir
 *
 * Relay clients are skipped (immune).
 */
import { appendFile } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { aligned, authorDomains, organizationalDomain } from '../src/mailauth/domains';
import { getDmarcRecord, spf, type DmarcRecord } from '../src/mailauth/lib';
import { receivedHeaderFields } from '../src/mailauth/message';
import { mailauthResolver, spfResolver } from '../src/mailauth/resolver';
import { authNotes, type DmarcNote, type DmarcPolicy, type SpfNote, type SpfResultCode } from '../src/mailauth/notes';
import { definePlugin, type HookContext } from '../src/plugin/api';
import { deny, denysoft, type Verdict } from '../src/plugin/decision';

const POLICIES = new Set<DmarcPolicy>(['none', 'quarantine', 'reject']);
const SPF_CODES = new Set<SpfResultCode>(['pass', 'fail', 'softfail', 'neutral', 'none', 'temperror', 'permerror']);
const MILDER: Record<DmarcPolicy, DmarcPolicy> = { reject: 'quarantine', quarantine: 'none', none: 'none' };

const asPolicy = (v: unknown): DmarcPolicy | undefined => {
  const p = typeof v === 'string' ? v.trim().toLowerCase() : '';
  return POLICIES.has(p as DmarcPolicy) ? (p as DmarcPolicy) : undefined;
};

/** One line of report_file: what an aggregate report row needs (RFC 7489 appendix C). */
export interface ReportLine {
  time: string;
  source_ip: string;
  header_from: string;
  envelope_from: string;
  policy_published: { domain: string; p?: string; sp?: string; pct: number; adkim: string; aspf: string };
  policy_evaluated: { disposition: DmarcPolicy; dkim: 'pass' | 'fail'; spf: 'pass' | 'fail'; reason?: string };
  dmarc: DmarcNote['result'];
  auth_results: {
    dkim: { domain: string; selector: string; result: string }[];
    spf: { domain: string; scope: string; result: string } | null;
  };
}

export default definePlugin({
  description: 'DMARC: From-domain alignment with SPF/DKIM and the domain policy (reject, quarantine)',
  options: z
    .object({
      reject_on_reject: z.boolean().default(false),
      quarantine_header: z.union([z.string().regex(/^[\x21-\x39\x3b-\x7e]+$/, 'a header field name'), z.literal(false)]).default('X-DMARC-Quarantine'),
      defer_on_temperror: z.boolean().default(false),
      report_file: z.string().min(1).optional(),
    })
    .strict(),
  create(opts, env) {
    const resolver = mailauthResolver(env.dns);
    const forSpf = spfResolver(env.dns);
    const reportFile = opts.report_file ? resolve(env.configDir, opts.report_file) : undefined;
    const receiver = env.hostname ?? osHostname();

    /** The spf plugin's result, or the same check done here when it has not run. */
    async function spfResult(ctx: HookContext): Promise<SpfNote | undefined> {
      const notes = authNotes(ctx.txn!);
      if (notes.spf) return notes.spf;
      const sender = ctx.txn!.sender?.address ?? '';
      const helo = ctx.conn.client.helo;
      if (sender === '' && !helo) return undefined;
      const scope = sender === '' ? 'helo' : 'mfrom';
      const identity = scope === 'helo' ? `postmaster@${helo}` : sender;
      const r = await spf({ sender: identity, ip: ctx.conn.client.addr, helo, mta: receiver, resolver: forSpf });
      const result = SPF_CODES.has(r.status.result as SpfResultCode) ? (r.status.result as SpfResultCode) : 'temperror';
      return { result, domain: r.domain, scope, identity, ip: ctx.conn.client.addr, helo, comment: r.status.comment };
    }

    async function report(line: ReportLine, ctx: HookContext): Promise<void> {
      if (!reportFile) return;
      try {
        await appendFile(reportFile, JSON.stringify(line) + '\n', { mode: 0o640 });
      } catch (err) {
        ctx.log.error(`cannot write the DMARC report file ${reportFile}: ${(err as Error).message}`);
      }
    }

    return {
      async data_post(ctx, message): Promise<Verdict | undefined> {
        const txn = ctx.txn;
        if (!txn) return;
        const notes = authNotes(txn);
        if (opts.quarantine_header) message.headers.remove(opts.quarantine_header);

        const fromValues = receivedHeaderFields(txn, message)
          .filter((f) => f.name.toLowerCase() === 'from')
          .map((f) => f.value);
        const { domains } = authorDomains(fromValues);
        if (domains.length !== 1) {
          const comment = domains.length ? `several From domains (${domains.join(', ')})` : 'no From domain';
          notes.dmarc = { result: 'permerror', headerFrom: domains.join(','), disposition: 'none', comment };
          ctx.result({ err: `permerror: ${comment}` });
          return;
        }
        const fromDomain = domains[0]!;

        let record: DmarcRecord | false;
        try {
          record = await getDmarcRecord(fromDomain, resolver);
        } catch (err) {
          const comment = `DMARC record lookup failed: ${(err as Error).message}`;
          notes.dmarc = { result: 'temperror', headerFrom: fromDomain, disposition: 'none', comment };
          ctx.result({ err: `temperror: ${fromDomain}`, why: comment });
          if (opts.defer_on_temperror) return denysoft(`DMARC: temporary error looking up the policy of ${fromDomain}, try again later`, '4.7.0');
          return;
        }
        let p = record ? asPolicy(record.p) : undefined;
        // RFC 7489 6.6.3: a record without a valid p= counts as p=none if it asks for reports.
        if (record && !p && typeof record.rua === 'string' && record.rua) p = 'none';
        if (!record || !p) {
          notes.dmarc = { result: 'none', headerFrom: fromDomain, disposition: 'none', comment: record ? 'invalid DMARC record' : undefined };
          ctx.result({ msg: `none: ${fromDomain}${record ? ' (invalid record)' : ''}` });
          return;
        }
        const sp = asPolicy(record.sp);
        const policy = record.isOrgRecord && sp ? sp : p;
        // From the record text: mailauth reads an unparsable pct as 0, which would disable the policy.
        const pctTag = /(?:^|;)\s*pct\s*=\s*(\d{1,3})\s*(?:;|$)/i.exec(record.rr);
        const pct = pctTag && Number(pctTag[1]) <= 100 ? Number(pctTag[1]) : 100;
        const strictDkim = (record.adkim ?? '').toLowerCase() === 's';
        const strictSpf = (record.aspf ?? '').toLowerCase() === 's';
        const policyDomain = record.isOrgRecord ? organizationalDomain(fromDomain) : fromDomain;

        if (!notes.dkim) ctx.log.warn('no DKIM results: is dkim listed before dmarc? DMARC can only pass through SPF');
        const dkim = notes.dkim ?? [];
        const spfNote = await spfResult(ctx);
        const dkimAligned = dkim.find((d) => d.result === 'pass' && aligned(fromDomain, d.domain, strictDkim));
        const spfAligned = spfNote?.result === 'pass' && aligned(fromDomain, spfNote.domain, strictSpf) ? spfNote : undefined;
        const temporary =
          dkim.some((d) => d.result === 'temperror' && aligned(fromDomain, d.domain, strictDkim)) ||
          (spfNote?.result === 'temperror' && aligned(fromDomain, spfNote.domain, strictSpf));

        const result: DmarcNote['result'] = dkimAligned || spfAligned ? 'pass' : temporary ? 'temperror' : 'fail';
        let disposition: DmarcPolicy = 'none';
        let reason: string | undefined;
        if (result === 'fail') {
          disposition = policy;
          if (pct < 100 && Math.random() * 100 >= pct) {
            disposition = MILDER[policy];
            reason = 'sampled_out';
          }
          if (disposition === 'reject' && !opts.reject_on_reject) {
            disposition = 'quarantine';
            reason = 'local_policy';
          }
        }
        const note: DmarcNote = {
          result,
          headerFrom: fromDomain,
          policyDomain,
          policy,
          p,
          sp: sp ?? p,
          pct,
          disposition,
          alignedDkim: dkimAligned?.domain,
          alignedSpf: spfAligned?.domain,
          comment: `p=${p.toUpperCase()}${sp ? ` sp=${sp.toUpperCase()}` : ''} dis=${disposition.toUpperCase()}${reason ? ` ${reason}` : ''}`,
        };
        notes.dmarc = note;

        await report(
          {
            time: new Date().toISOString(),
            source_ip: ctx.conn.client.addr,
            header_from: fromDomain,
            envelope_from: spfNote?.domain ?? txn.sender?.host ?? '',
            policy_published: { domain: policyDomain, p, sp: sp ?? p, pct, adkim: strictDkim ? 's' : 'r', aspf: strictSpf ? 's' : 'r' },
            policy_evaluated: { disposition, dkim: dkimAligned ? 'pass' : 'fail', spf: spfAligned ? 'pass' : 'fail', reason },
            dmarc: result,
            auth_results: {
              dkim: dkim.map((d) => ({ domain: d.domain, selector: d.selector, result: d.result })),
              spf: spfNote ? { domain: spfNote.domain, scope: spfNote.scope, result: spfNote.result } : null,
            },
          },
          ctx,
        );

        const summary = { domain: fromDomain, policy, disposition };
        if (result === 'pass') {
          ctx.result({ pass: `pass: ${fromDomain} (${dkimAligned ? `dkim ${dkimAligned.domain}` : `spf ${spfAligned!.domain}`})`, ...summary });
          return;
        }
        if (result === 'temperror') {
          ctx.result({ err: `temperror: ${fromDomain}`, ...summary });
          if (opts.defer_on_temperror) return denysoft(`DMARC: temporary error checking ${fromDomain}, try again later`, '4.7.0');
          return;
        }
        ctx.result({ fail: `fail: ${fromDomain} ${note.comment}`, ...summary });
        if (disposition === 'reject') return deny(`DMARC: ${fromDomain} asks to reject mail that fails authentication (p=${policy})`, '5.7.1');
        if (disposition === 'quarantine' && opts.quarantine_header) {
          message.headers.prepend(opts.quarantine_header, `yes (DMARC policy of ${fromDomain}: ${policy})`);
        }
        return undefined;
      },
    };
  },
});
