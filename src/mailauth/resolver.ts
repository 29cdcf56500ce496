/**
 * The shared resolver in the shape mailauth takes (src/dns/resolver.ts
 * nodeStyle), so its SPF, DKIM and DMARC lookups use our cache and servers.
 */
import { nodeStyle, type DnsResolver, type NodeStyleError } from '../dns/resolver';
import type { NodeResolver } from './lib';

export function mailauthResolver(dns: DnsResolver): NodeResolver {
  return nodeStyle(dns);
}

/**
 * For mailauth's SPF evaluator: a failed lookup carries an explicit temperror.
 * mailauth turns only ETIMEOUT and EREFUSED into temperror by itself; any other
 * failure (SERVFAIL) inside an include: or redirect= would be ignored, the
 * mechanism treated as not matching, and the result could become a wrong
 * "fail" (RFC 7208 5.2 wants temperror).
 */
export function spfResolver(dns: DnsResolver): NodeResolver {
  const base = nodeStyle(dns);
  return async (name, type) => {
    try {
      return await base(name, type);
    } catch (err) {
      const e = err as NodeStyleError & { spfResult?: { error: string; text: string } };
      if (e.code !== 'ENOTFOUND' && e.code !== 'ENODATA' && !e.spfResult) {
        e.spfResult = { error: 'temperror', text: `DNS ${e.code} looking up ${type ?? 'A'} ${name}` };
      }
      throw e;
    }
  };
}
