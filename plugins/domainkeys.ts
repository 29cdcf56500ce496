/**
 * domainkeys — verify historic DomainKeys signatures (RFC 4870), at data_post.
 *
 * Each DomainKey-Signature field (up to 5) gets a result: pass, fail (bad
 * signature, the signing domain is not the sender's, the sender field not
 * signed), neutral (a signature it cannot process, or a failure under a key in
 * testing mode), permerror (no key, revoked or unusable key), temperror (the
 * key lookup failed: never read as "no key"); none when there is no
 * signature. Only rsa-sha1 with simple or nofws canonicalization exists; the
 * key is the TXT record at selector._domainkey.domain, looked up through the
 * shared resolver. No signing: DomainKeys is obsolete, DKIM replaced it.
 *
 * It never rejects; results go to the results store and
 * txn.notes.mailauth.domainkeys, which auth_results reports. Like dkim it
 * checks the message as received: the header block copied at
 * data_headers_end and the body read from the spool as it arrived, whatever
 * plugins listed before it changed. List it before auth_results.
 *
 * Options: none besides the common ones. Relay clients are skipped (immune).
 */
import { z } from 'zod';
import { verifyDomainKeys } from '../src/mailauth/domainkeys';
import { receivedHeaderFields, rememberReceivedHeaders } from '../src/mailauth/message';
import { authNotes } from '../src/mailauth/notes';
import { definePlugin } from '../src/plugin/api';

export default definePlugin({
  description: 'DomainKeys (RFC 4870): verify DomainKey-Signature fields, record the results',
  options: z.object({}).strict(),
  create(_opts, env) {
    return {
      data_headers_end(ctx, headers) {
        rememberReceivedHeaders(ctx.txn, headers);
      },
      async data_post(ctx, message) {
        if (!ctx.txn) return;
        const fields = receivedHeaderFields(ctx.txn, message);
        if (!fields.some((f) => f.name.toLowerCase() === 'domainkey-signature')) {
          authNotes(ctx.txn).domainkeys = [];
          ctx.result({ msg: 'none (no signature)' });
          return;
        }
        const notes = await verifyDomainKeys(
          { fields, separator: message.hasBody, body: () => message.receivedBodyStream() as AsyncIterable<Buffer> },
          env.dns,
        );
        authNotes(ctx.txn).domainkeys = notes;
        const label = (n: (typeof notes)[number]): string => `${n.domain || '?'} s=${n.selector || '?'}${n.comment ? ` (${n.comment})` : ''}`;
        ctx.result({
          pass: notes.filter((n) => n.result === 'pass').map(label),
          fail: notes.filter((n) => n.result === 'fail').map((n) => `fail: ${label(n)}`),
          err: notes.filter((n) => n.result === 'temperror' || n.result === 'permerror').map((n) => `${n.result}: ${label(n)}`),
          msg: notes.filter((n) => n.result === 'neutral').map((n) => `neutral: ${label(n)}`),
        });
      },
    };
  },
});
