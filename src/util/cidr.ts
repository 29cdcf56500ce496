import { isIP, isIPv4 } from 'node:net';

/** An address or network in a form that makes membership a couple of bigint operations. */
export interface Cidr {
  family: 4 | 6;
  network: bigint;
  mask: bigint;
}

function toBigInt(addr: string): { family: 4 | 6; value: bigint } | undefined {
  if (addr.includes(':')) {
    const v4mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
    if (v4mapped) addr = v4mapped[1]!;
  }
  if (isIPv4(addr)) {
    // Every connection is checked against two lists: one BigInt per address, not one per octet.
    let n = 0;
    for (const o of addr.split('.')) n = n * 256 + Number(o);
    return { family: 4, value: BigInt(n) };
  }
  if (isIP(addr) !== 6) return undefined;
  let [head, tail] = addr.split('::') as [string, string | undefined];
  const expand = (part: string): string[] => {
    if (!part) return [];
    const groups = part.split(':');
    const last = groups[groups.length - 1]!;
    if (last.includes('.')) {
      const v = toBigInt(last)!.value;
      groups.splice(groups.length - 1, 1, ((v >> 16n) & 0xffffn).toString(16), (v & 0xffffn).toString(16));
    }
    return groups;
  };
  const h = expand(head);
  const t = tail === undefined ? [] : expand(tail);
  const fill = tail === undefined ? [] : new Array(8 - h.length - t.length).fill('0');
  const groups = [...h, ...fill, ...t];
  return { family: 6, value: groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n) };
}

export function parseCidr(text: string): Cidr | undefined {
  const [addr, bitsText] = text.trim().split('/') as [string, string | undefined];
  const ip = toBigInt(addr);
  if (!ip) return undefined;
  const width = ip.family === 4 ? 32 : 128;
  const bits = bitsText === undefined ? width : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > width) return undefined;
  const mask = bits === 0 ? 0n : ((1n << BigInt(bits)) - 1n) << BigInt(width - bits);
  return { family: ip.family, network: ip.value & mask, mask };
}

export class CidrList {
  private readonly nets: Cidr[];
  constructor(entries: readonly string[]) {
    this.nets = entries.map((e) => {
      const c = parseCidr(e);
      if (!c) throw new Error(`not an IP address or CIDR network: "${e}"`);
      return c;
    });
  }
  get size(): number {
    return this.nets.length;
  }
  /** IPv4-mapped IPv6 peers (dual-stack listeners) match their IPv4 entries. */
  contains(addr: string): boolean {
    const ip = toBigInt(addr);
    if (!ip) return false;
    return this.nets.some((n) => n.family === ip.family && (ip.value & n.mask) === n.network);
  }
}
