import { isIP } from 'node:net';

/** Expands an IPv6 address to its 32 nibbles (no separators). */
function ipv6Nibbles(ip: string): string {
  let addr = ip.replace(/%.*$/, '');
  // An embedded IPv4 tail (::ffff:192.0.2.1) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(addr);
  if (v4) {
    const o = v4[1]!.split('.').map(Number);
    addr = addr.slice(0, -v4[1]!.length) + `${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const [head, tail] = addr.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.map((g) => g.padStart(4, '0')).join('').toLowerCase();
}

/**
 * The label sequence a DNS list or reverse zone uses for an address:
 * 192.0.2.1 -> 1.2.0.192; IPv6 -> its nibbles reversed.
 */
export function reversedIp(ip: string): string {
  const plain = ip.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
  const v = isIP(plain);
  if (v === 4) return plain.split('.').reverse().join('.');
  if (v === 6) return ipv6Nibbles(plain).split('').reverse().join('.');
  throw new Error(`not an IP address: "${ip}"`);
}

/** The PTR name of an address (in-addr.arpa or ip6.arpa). */
export function reverseName(ip: string): string {
  const plain = ip.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
  return `${reversedIp(plain)}.${isIP(plain) === 4 ? 'in-addr.arpa' : 'ip6.arpa'}`;
}

/** The IPv4 form of an IPv4-mapped IPv6 address; anything else unchanged. */
export function plainIp(ip: string): string {
  return ip.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
}

/** A syntactically valid host name (LDH labels, at most 253 octets); no trailing dot. */
export function isHostname(name: string): boolean {
  const n = name.replace(/\.$/, '');
  if (!n || n.length > 253) return false;
  return n.split('.').every((l) => /^[a-z0-9_](?:[a-z0-9-_]{0,61}[a-z0-9_])?$/i.test(l));
}
