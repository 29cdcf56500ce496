import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { isIP, connect as tcpConnect } from 'node:net';
import { randomInt } from 'node:crypto';
import * as packet from 'dns-packet';
import { TtlCache } from './cache';
import { reverseName } from './names';

/**
 * The one DNS resolver every DNS-based plugin uses.
 *
 * Why our own stub resolver instead of node:dns: c-ares gives TTLs only for A
 * and AAAA, so TXT/MX/PTR answers (DNSBL reasons, SPF, DKIM keys, rDNS) could
 * not be cached honestly; and it folds "no such name" and "name exists, no
 * record of that type" together often enough that NXDOMAIN-vs-NODATA policy
 * (resolvable_fromhost, rhsbl) would be guesswork. dns-packet does the wire
 * format; this module does transport (UDP, TCP on truncation), retries across
 * servers, in-flight sharing, and a TTL-honouring cache with RFC 2308
 * negative caching.
 */

export type RecordType = 'A' | 'AAAA' | 'MX' | 'TXT' | 'PTR' | 'NS' | 'CNAME' | 'SOA';

/**
 * What happened, kept apart because plugins act differently on each:
 * nxdomain and nodata are answers (the name, or the record, does not exist);
 * servfail, timeout, refused and error are failures and must never be read as
 * "not listed" or "does not exist".
 */
export type DnsStatus = 'ok' | 'nxdomain' | 'nodata' | 'servfail' | 'refused' | 'timeout' | 'error';

export interface MxRecord {
  exchange: string;
  priority: number;
}
export interface SoaRecord {
  mname: string;
  rname: string;
  serial: number;
  refresh: number;
  retry: number;
  expire: number;
  minimum: number;
}

export interface RecordData {
  A: string;
  AAAA: string;
  MX: MxRecord;
  /** A TXT record is a list of character-strings; most users join them. */
  TXT: string[];
  PTR: string;
  NS: string;
  CNAME: string;
  SOA: SoaRecord;
}

export interface DnsAnswer<T extends RecordType = RecordType> {
  name: string;
  type: T;
  status: DnsStatus;
  records: RecordData[T][];
  /** Seconds this answer stays valid (0 for failures, which are never cached). */
  ttl: number;
  /** Whether this answer came from the cache. */
  cached: boolean;
  /** For failures: what went wrong, for logs. */
  error?: string;
}

export interface ResolverOptions {
  /** `host`, `host:port` or `[v6]:port`; default: nameservers of /etc/resolv.conf. */
  servers?: string[];
  /** Milliseconds to wait for one server's reply. */
  timeout?: number;
  /** Rounds over the server list before giving up. */
  tries?: number;
  /** Cached answers at most (oldest dropped first). 0 disables the cache. */
  cacheSize?: number;
  /** Bounds applied to record TTLs, in seconds. */
  minTtl?: number;
  maxTtl?: number;
  /** TTL for NXDOMAIN/NODATA when the server sends no SOA. */
  negativeTtl?: number;
}

export const DEFAULT_RESOLVER_OPTIONS = {
  timeout: 3000,
  tries: 2,
  cacheSize: 10000,
  minTtl: 0,
  maxTtl: 86400,
  negativeTtl: 300,
} as const;

interface Server {
  host: string;
  port: number;
}

export function parseServer(s: string): Server {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (v6) return { host: v6[1]!, port: v6[2] ? Number(v6[2]) : 53 };
  if (isIP(s)) return { host: s, port: 53 };
  const i = s.lastIndexOf(':');
  if (i > 0 && isIP(s.slice(0, i))) return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
  throw new Error(`not a name server address: "${s}" (expected IP, IP:port or [IPv6]:port)`);
}

/** Name servers from /etc/resolv.conf, or the local host's when there is none. */
export function systemServers(file = '/etc/resolv.conf'): string[] {
  try {
    const found = readFileSync(file, 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
      .filter((s): s is string => !!s && isIP(s.replace(/%.*$/, '')) !== 0)
      .map((s) => (isIP(s) === 6 ? `[${s}]` : s));
    if (found.length) return found;
  } catch {
    // no resolv.conf: fall through
  }
  return ['127.0.0.1'];
}

const RCODE_STATUS: Record<string, DnsStatus> = {
  NOERROR: 'ok',
  NXDOMAIN: 'nxdomain',
  SERVFAIL: 'servfail',
  REFUSED: 'refused',
};

class QueryTimeout extends Error {}

/** The decoded reply as this module reads it (dns-packet's own types leave rcode and flags out). */
interface WireRecord {
  type: string;
  name: string;
  ttl?: number;
  data?: unknown;
}
interface WireReply {
  id?: number;
  rcode?: string;
  flag_tc?: boolean;
  questions?: { name: string; type: string }[];
  answers?: WireRecord[];
  authorities?: WireRecord[];
}

function normalise(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

export class DnsResolver {
  readonly servers: readonly Server[];
  private readonly opts: Required<Omit<ResolverOptions, 'servers'>>;
  private readonly cache: TtlCache<DnsAnswer>;
  private readonly inflight = new Map<string, Promise<DnsAnswer>>();
  private udp4?: Socket;
  private udp6?: Socket;
  private readonly pending = new Map<number, (msg: WireReply, from: Server) => void>();
  private closed = false;

  constructor(options: ResolverOptions = {}) {
    this.servers = (options.servers?.length ? options.servers : systemServers()).map(parseServer);
    this.opts = { ...DEFAULT_RESOLVER_OPTIONS, ...options } as Required<Omit<ResolverOptions, 'servers'>>;
    this.cache = new TtlCache(this.opts.cacheSize);
  }

  /** Looks a name up; never throws: failures are a status. */
  async query<T extends RecordType>(name: string, type: T): Promise<DnsAnswer<T>> {
    const qname = normalise(name);
    const key = `${type} ${qname}`;
    const hit = this.cache.get(key);
    if (hit) return { ...(hit as DnsAnswer<T>), cached: true, ttl: Math.max(0, Math.ceil(this.cache.remaining(key) / 1000)) };
    // Parallel plugins asking the same thing share one query.
    let p = this.inflight.get(key);
    if (!p) {
      p = this.lookup(qname, type).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    const answer = (await p) as DnsAnswer<T>;
    return answer;
  }

  /** Several lookups at once, in the order asked. */
  all<T extends RecordType>(queries: readonly [string, T][]): Promise<DnsAnswer<T>[]> {
    return Promise.all(queries.map(([n, t]) => this.query(n, t)));
  }

  /** PTR names of an IP address (the reverse zone is built here). */
  ptr(ip: string): Promise<DnsAnswer<'PTR'>> {
    return this.query(reverseName(ip), 'PTR');
  }

  /** A and AAAA of a name together: ok if either has records. */
  async addresses(name: string): Promise<DnsAnswer<'A' | 'AAAA'>> {
    const [a, aaaa] = await Promise.all([this.query(name, 'A'), this.query(name, 'AAAA')]);
    const records = [...a.records, ...aaaa.records];
    if (records.length) return { name: a.name, type: 'A', status: 'ok', records, ttl: Math.min(a.ttl, aaaa.ttl), cached: a.cached && aaaa.cached };
    // A failure on either side means we do not know; otherwise the more specific negative wins.
    const failed = [a, aaaa].find((x) => isFailure(x.status));
    if (failed) return { ...failed, type: 'A', records: [] };
    const status: DnsStatus = a.status === 'nxdomain' || aaaa.status === 'nxdomain' ? 'nxdomain' : 'nodata';
    return { name: a.name, type: 'A', status, records: [], ttl: Math.min(a.ttl, aaaa.ttl), cached: a.cached && aaaa.cached };
  }

  /** Empties the cache (tests, reload). */
  flush(): void {
    this.cache.clear();
  }

  close(): void {
    this.closed = true;
    this.udp4?.close();
    this.udp6?.close();
    this.udp4 = this.udp6 = undefined;
    for (const settle of this.pending.values()) settle({ type: 'response', rcode: 'SERVFAIL' } as never, this.servers[0]!);
    this.pending.clear();
  }

  private async lookup<T extends RecordType>(qname: string, type: T): Promise<DnsAnswer<T>> {
    let last: DnsAnswer<T> | undefined;
    for (let round = 0; round < this.opts.tries; round++) {
      for (const server of this.servers) {
        if (this.closed) return this.failure(qname, type, 'error', 'resolver closed');
        const answer = await this.ask(server, qname, type);
        // A definite answer ends the search; failures try the next server.
        if (!isFailure(answer.status)) {
          if (answer.ttl > 0) this.cache.set(`${type} ${qname}`, answer, answer.ttl * 1000);
          return answer;
        }
        last = answer;
        // REFUSED will not change by asking the same server again.
      }
    }
    return last ?? this.failure(qname, type, 'error', 'no name servers');
  }

  private failure<T extends RecordType>(name: string, type: T, status: DnsStatus, error: string): DnsAnswer<T> {
    return { name, type, status, records: [], ttl: 0, cached: false, error };
  }

  private async ask<T extends RecordType>(server: Server, qname: string, type: T): Promise<DnsAnswer<T>> {
    try {
      let res = await this.udp(server, qname, type);
      if (res.flag_tc) res = await this.tcp(server, qname, type);
      return this.interpret(res, qname, type);
    } catch (err) {
      if (err instanceof QueryTimeout) return this.failure(qname, type, 'timeout', `no reply from ${server.host}:${server.port} in ${this.opts.timeout} ms`);
      return this.failure(qname, type, 'error', `${server.host}:${server.port}: ${(err as Error).message}`);
    }
  }

  private request(id: number, qname: string, type: RecordType): packet.Packet {
    return {
      type: 'query',
      id,
      flags: packet.RECURSION_DESIRED,
      questions: [{ type, name: qname, class: 'IN' }],
      // EDNS0 with a 1232-byte buffer: fewer truncations, no fragmentation.
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as never],
    };
  }

  private socketFor(server: Server): Socket {
    const v6 = isIP(server.host) === 6;
    let s = v6 ? this.udp6 : this.udp4;
    if (!s) {
      s = createSocket(v6 ? 'udp6' : 'udp4');
      s.on('message', (buf, rinfo) => {
        let msg: WireReply;
        try {
          msg = packet.decode(buf) as unknown as WireReply;
        } catch {
          return; // garbage is ignored; the query times out
        }
        const settle = msg.id === undefined ? undefined : this.pending.get(msg.id);
        settle?.(msg, { host: rinfo.address, port: rinfo.port });
      });
      s.on('error', () => undefined);
      s.unref();
      if (v6) this.udp6 = s;
      else this.udp4 = s;
    }
    return s;
  }

  private newId(): number {
    let id: number;
    do id = randomInt(0, 65536);
    while (this.pending.has(id));
    return id;
  }

  private udp(server: Server, qname: string, type: RecordType): Promise<WireReply> {
    const socket = this.socketFor(server);
    const id = this.newId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QueryTimeout());
      }, this.opts.timeout);
      this.pending.set(id, (msg, from) => {
        // An answer must come from the server asked and be for the question asked (anti-spoofing).
        const q = msg.questions?.[0];
        if (from.port !== server.port || !sameHost(from.host, server.host)) return;
        if (q && (normalise(q.name) !== qname || q.type !== type)) return;
        clearTimeout(timer);
        this.pending.delete(id);
        resolve(msg);
      });
      socket.send(packet.encode(this.request(id, qname, type)), server.port, server.host, (err) => {
        if (err) {
          clearTimeout(timer);
          this.pending.delete(id);
          reject(err);
        }
      });
    });
  }

  private tcp(server: Server, qname: string, type: RecordType): Promise<WireReply> {
    const id = this.newId();
    return new Promise((resolve, reject) => {
      const sock = tcpConnect({ host: server.host, port: server.port });
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new QueryTimeout());
      }, this.opts.timeout);
      sock.on('connect', () => sock.write(packet.streamEncode(this.request(id, qname, type))));
      sock.on('data', (d: Buffer) => {
        chunks.push(d);
        const buf = Buffer.concat(chunks);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          clearTimeout(timer);
          sock.destroy();
          try {
            resolve(packet.streamDecode(buf) as unknown as WireReply);
          } catch (err) {
            reject(err as Error);
          }
        }
      });
      sock.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  private interpret<T extends RecordType>(res: WireReply, qname: string, type: T): DnsAnswer<T> {
    const status = RCODE_STATUS[res.rcode ?? 'NOERROR'] ?? 'error';
    if (status !== 'ok' && status !== 'nxdomain') return this.failure(qname, type, status, `rcode ${res.rcode}`);
    // Follow CNAMEs within the answer section.
    const answers = res.answers ?? [];
    let target = qname;
    const seen = new Set<string>();
    for (;;) {
      const cname = answers.find((a) => a.type === 'CNAME' && normalise(a.name) === target);
      if (!cname || type === 'CNAME' || seen.has(target)) break;
      seen.add(target);
      target = normalise(cname.data as string);
    }
    const matching = answers.filter((a) => a.type === type && normalise(a.name) === (type === 'CNAME' ? qname : target));
    if (status === 'ok' && matching.length) {
      const ttl = clamp(Math.min(...matching.map((a) => a.ttl ?? 0)), this.opts.minTtl, this.opts.maxTtl);
      return { name: qname, type, status, records: matching.map((a) => toRecord(type, a.data)) as RecordData[T][], ttl, cached: false };
    }
    // RFC 2308: a negative answer lives for min(SOA TTL, SOA minimum).
    const soa = (res.authorities ?? []).find((a) => a.type === 'SOA');
    const negTtl = soa ? Math.min(soa.ttl ?? 0, (soa.data as { minimum: number }).minimum) : this.opts.negativeTtl;
    return {
      name: qname,
      type,
      status: status === 'nxdomain' ? 'nxdomain' : 'nodata',
      records: [],
      ttl: clamp(negTtl, this.opts.minTtl, this.opts.maxTtl),
      cached: false,
    };
  }
}

export function isFailure(status: DnsStatus): boolean {
  return status !== 'ok' && status !== 'nxdomain' && status !== 'nodata';
}

function sameHost(a: string, b: string): boolean {
  return a === b || a.replace(/^::ffff:/, '') === b.replace(/^::ffff:/, '');
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

function toRecord(type: RecordType, data: unknown): unknown {
  switch (type) {
    case 'TXT':
      return (Array.isArray(data) ? data : [data]).map((d) => (Buffer.isBuffer(d) ? d.toString('utf8') : String(d)));
    case 'MX': {
      const mx = data as { exchange: string; preference: number };
      return { exchange: normalise(mx.exchange), priority: mx.preference };
    }
    case 'PTR':
    case 'NS':
    case 'CNAME':
      return normalise(String(data));
    case 'SOA': {
      const s = data as SoaRecord;
      return { ...s, mname: normalise(s.mname), rname: normalise(s.rname) };
    }
    default:
      return data;
  }
}

const NODE_ERROR_CODE: Record<DnsStatus, string> = {
  ok: '',
  nxdomain: 'ENOTFOUND',
  nodata: 'ENODATA',
  servfail: 'ESERVFAIL',
  refused: 'EREFUSED',
  timeout: 'ETIMEOUT',
  error: 'ECONNREFUSED',
};

export interface NodeStyleError extends Error {
  code: string;
  hostname: string;
}

/**
 * The resolver in the shape of `dns.promises.resolve(name, type)`, which is
 * what libraries with a pluggable resolver expect (mailauth for SPF, DKIM,
 * DMARC): records on success, an error with node's `code` otherwise.
 */
export function nodeStyle(resolver: DnsResolver): (name: string, type?: string) => Promise<unknown[]> {
  return async (name, type = 'A') => {
    const t = type.toUpperCase() as RecordType;
    const answer = await resolver.query(name, t);
    if (answer.status === 'ok') return answer.records;
    const err = new Error(`query${t} ${NODE_ERROR_CODE[answer.status]} ${name}`) as NodeStyleError;
    err.code = NODE_ERROR_CODE[answer.status];
    err.hostname = name;
    throw err;
  };
}
