/**
 * p0f — passive OS fingerprinting of the client by a running p0f v3 daemon,
 * asked through its API socket; optionally rejects by OS or network distance.
 *
 * Options:
 *   socket: string           p0f's API socket, as given to `p0f -s` (default /run/p0f.sock);
 *                            relative paths are relative to the config file's directory
 *   query_timeout: number    seconds to wait for p0f's answer (default 1)
 *   retry_after: number      seconds after which a "no match" is asked once more (default 0.1; 0 = never):
 *                            p0f sees the handshake through packet capture, a few ms after we accept it
 *   deny_os: string[]        refuse these systems (default []): "Windows" matches every Windows
 *                            p0f names, "Windows XP" only that ("name flavor", case-insensitive,
 *                            whole words from the start); "/regex/flags" is tested against "name flavor"
 *   max_distance: number     refuse clients more than this many network hops away (default: no limit)
 *   add_header: boolean      add X-P0F at data_post, after removing any the message came with (default false)
 *
 * Asks p0f about conn.client.addr at connect. p0f must capture the traffic
 * that carries the client's SYN: standalone, on this host; behind Postfix,
 * p0f has to run on the Postfix host (where the client's connection ends),
 * e.g. `p0f -i eth0 -s /run/p0f.sock -d 'tcp dst port 25'`, with the socket
 * readable by prequeue's user. Whatever goes wrong with p0f (not running,
 * socket missing, no answer in time, garbled answer) is recorded as `err` and
 * the client is never refused for it; a host p0f has not seen is a `skip`.
 *
 * What p0f said goes to `conn.notes.p0f` (the instance name): os_name,
 * os_flavor, distance (-1 = unknown), link_type, language, os_match_q
 * (0 exact, 1 fuzzy, 2 generic, 3 both), uptime_min, total_conn, first_seen,
 * last_seen, last_nat, last_chg (unix times, 0 = never), up_mod_days, bad_sw,
 * http_name, http_flavor; and into the results (details and a one-line
 * `msg`). A rejection is a connection verdict (delivered at MAIL or RCPT
 * behind Postfix); with `reject: false` the failure is only recorded, for
 * karma. Beware: Exchange and other Windows mail servers fingerprint as
 * Windows too; p0f's Windows signatures cannot tell a desktop from a server.
 *
 * The API (p0f 3 README section 4, api.h): a 21-byte query (magic 0x50304601
 * in host byte order, address type 4 or 6, 16 address bytes, IPv4 left-aligned)
 * answered by 232 bytes (magic 0x50304602, status 0x00 bad query / 0x10 ok /
 * 0x20 no match, then the fields above, packed). One connection is kept open
 * and queries are pipelined on it, as the README recommends.
 */
import net from 'node:net';
import { endianness } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { definePlugin, type HookContext, type PluginHooks } from '../src/plugin/api';
import { deny } from '../src/plugin/decision';
import { plainAddress } from '../src/util/geo';

const QUERY_MAGIC = 0x50304601;
const RESP_MAGIC = 0x50304602;
const STATUS_BADQUERY = 0x00;
const STATUS_OK = 0x10;
const STATUS_NOMATCH = 0x20;
export const QUERY_SIZE = 21;
export const RESPONSE_SIZE = 232;
const STR = 32;

const LE = endianness() === 'LE';

/** Host information p0f keeps about an address (api.h, struct p0f_api_response). */
export interface P0fInfo {
  first_seen: number;
  last_seen: number;
  total_conn: number;
  uptime_min: number;
  up_mod_days: number;
  last_nat: number;
  last_chg: number;
  distance: number;
  bad_sw: number;
  os_match_q: number;
  os_name: string;
  os_flavor: string;
  http_name: string;
  http_flavor: string;
  link_type: string;
  language: string;
}

export type P0fAnswer = { status: 'ok'; info: P0fInfo } | { status: 'nomatch' } | { status: 'badquery' };

/** The 21-byte query for an IPv4 or IPv6 address. */
export function encodeQuery(ip: string): Buffer {
  // A zone index (fe80::1%eth0) is not part of the address p0f knows.
  const addr = plainAddress(ip).replace(/%.*$/, '');
  const family = net.isIP(addr);
  if (!family) throw new Error(`not an IP address: ${ip}`);
  const q = Buffer.alloc(QUERY_SIZE);
  if (LE) q.writeUInt32LE(QUERY_MAGIC, 0);
  else q.writeUInt32BE(QUERY_MAGIC, 0);
  q[4] = family;
  if (family === 4) {
    addr.split('.').forEach((octet, i) => (q[5 + i] = Number(octet)));
  } else {
    ipv6Bytes(addr).copy(q, 5);
  }
  return q;
}

/** The 16 bytes of an IPv6 address (any valid textual form, including an embedded IPv4 tail). */
function ipv6Bytes(addr: string): Buffer {
  let text = addr;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const o = v4[1]!.split('.').map(Number);
    text = text.slice(0, v4.index) + `${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Decodes one 232-byte answer; throws on a wrong magic or an unknown status. */
export function decodeResponse(buf: Buffer): P0fAnswer {
  if (buf.length < RESPONSE_SIZE) throw new Error(`short answer from p0f (${buf.length} bytes)`);
  const u32 = (off: number) => (LE ? buf.readUInt32LE(off) : buf.readUInt32BE(off));
  const magic = u32(0);
  if (magic !== RESP_MAGIC) throw new Error(`not a p0f v3 answer (magic 0x${magic.toString(16)})`);
  const status = u32(4);
  if (status === STATUS_NOMATCH) return { status: 'nomatch' };
  if (status === STATUS_BADQUERY) return { status: 'badquery' };
  if (status !== STATUS_OK) throw new Error(`unknown p0f status 0x${status.toString(16)}`);
  const text = (i: number) => {
    const field = buf.subarray(40 + i * STR, 40 + (i + 1) * STR);
    const nul = field.indexOf(0);
    return field.subarray(0, nul < 0 ? STR : nul).toString('latin1');
  };
  return {
    status: 'ok',
    info: {
      first_seen: u32(8),
      last_seen: u32(12),
      total_conn: u32(16),
      uptime_min: u32(20),
      up_mod_days: u32(24),
      last_nat: u32(28),
      last_chg: u32(32),
      distance: LE ? buf.readInt16LE(36) : buf.readInt16BE(36),
      bad_sw: buf[38]!,
      os_match_q: buf[39]!,
      os_name: text(0),
      os_flavor: text(1),
      http_name: text(2),
      http_flavor: text(3),
      link_type: text(4),
      language: text(5),
    },
  };
}

interface Pending {
  resolve(a: P0fAnswer): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * One connection to p0f's socket, opened when first needed, with queries
 * pipelined on it (p0f answers in order). Any failure or timeout drops the
 * connection and fails every query waiting on it: an answer that comes late
 * could no longer be matched to its query.
 */
export class P0fClient {
  private sock: net.Socket | undefined;
  private buf = Buffer.alloc(0);
  private readonly queue: Pending[] = [];

  constructor(
    readonly path: string,
    private readonly timeoutMs: number,
  ) {}

  query(ip: string): Promise<P0fAnswer> {
    const q = encodeQuery(ip);
    return new Promise<P0fAnswer>((resolve, reject) => {
      const sock = this.connection();
      const timer = setTimeout(() => this.fail(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.queue.push({ resolve, reject, timer });
      sock.write(q);
    });
  }

  private connection(): net.Socket {
    if (this.sock) return this.sock;
    const sock = net.createConnection(this.path);
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      if (sock !== this.sock) return;
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= RESPONSE_SIZE) {
        const answer = this.buf.subarray(0, RESPONSE_SIZE);
        this.buf = this.buf.subarray(RESPONSE_SIZE);
        const p = this.queue.shift();
        if (!p) return this.fail(new Error('unexpected data from p0f'));
        clearTimeout(p.timer);
        let decoded: P0fAnswer;
        try {
          decoded = decodeResponse(answer);
        } catch (err) {
          p.reject(err as Error);
          return this.fail(err as Error);
        }
        p.resolve(decoded);
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (sock === this.sock) this.fail(new Error(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? `p0f not running (${err.code} on ${this.path})` : err.message));
    });
    sock.on('close', () => {
      if (sock === this.sock) this.fail(new Error('p0f closed the connection'));
    });
    return sock;
  }

  private fail(err: Error): void {
    const sock = this.sock;
    this.sock = undefined;
    sock?.destroy();
    for (const p of this.queue.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  close(): void {
    this.fail(new Error('client closed'));
  }
}

/** A deny_os entry: "name [flavor]" prefix in whole words, or /regex/flags. */
export function osMatcher(entry: string): (os: string) => boolean {
  const re = /^\/(.*)\/([a-z]*)$/s.exec(entry.trim());
  if (re) {
    const rx = new RegExp(re[1]!, re[2]);
    return (os) => rx.test(os);
  }
  const want = entry.trim().toLowerCase().split(/\s+/);
  return (os) => {
    const words = os.toLowerCase().split(/\s+/);
    return want.every((w, i) => words[i] === w);
  };
}

const osEntry = z
  .string()
  .min(1)
  .superRefine((s, ctx) => {
    try {
      osMatcher(s);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `bad regex ${s}: ${(err as Error).message}` });
    }
  });

/** "name flavor", the string deny_os entries are matched against. */
const osOf = (i: P0fInfo): string => [i.os_name, i.os_flavor].filter(Boolean).join(' ');

const quoted = (s: string): string => `"${s.replace(/[^\x20-\x7e]/g, '?').replace(/["\\]/g, '')}"`;

/** The X-P0F header value, in the spirit of Haraka's X-Haraka-p0f. */
export function headerValue(i: P0fInfo): string {
  const parts = [`os=${quoted(osOf(i) || 'unknown')}`];
  if (i.link_type) parts.push(`link_type=${quoted(i.link_type)}`);
  parts.push(`distance=${i.distance}`, `total_conn=${i.total_conn}`, `shared_ip=${i.last_nat ? 'Y' : 'N'}`);
  if (i.uptime_min) parts.push(`uptime=${i.uptime_min}min`);
  return parts.join(' ');
}

export const HEADER = 'X-P0F';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export default definePlugin({
  description: 'passive OS fingerprint of the client from a p0f v3 daemon; reject by OS or distance',
  // p0f trouble must never refuse mail: a hook that throws anyway is skipped, not answered with 451.
  defaults: { on_error: 'skip' },
  options: z
    .object({
      socket: z.string().min(1).default('/run/p0f.sock'),
      query_timeout: z.number().positive().max(30).default(1),
      retry_after: z.number().min(0).max(5).default(0.1),
      deny_os: z.array(osEntry).default([]),
      max_distance: z.number().int().min(0).optional(),
      add_header: z.boolean().default(false),
    })
    .strict(),
  create(opts, env) {
    const client = new P0fClient(resolve(env.configDir, opts.socket), opts.query_timeout * 1000);
    const denied = opts.deny_os.map((e) => ({ entry: e, match: osMatcher(e) }));

    const ask = async (ip: string): Promise<P0fAnswer> => {
      const first = await client.query(ip);
      if (first.status !== 'nomatch' || !opts.retry_after) return first;
      await sleep(opts.retry_after * 1000);
      return client.query(ip);
    };

    const hooks: PluginHooks = {
      async connect(ctx: HookContext) {
        const ip = plainAddress(ctx.conn.client.addr);
        if (!net.isIP(ip)) {
          ctx.result({ skip: 'no IP address' });
          return;
        }
        let answer: P0fAnswer;
        try {
          answer = await ask(ip);
        } catch (err) {
          ctx.result({ err: `p0f: ${(err as Error).message}` });
          return;
        }
        if (answer.status === 'nomatch') {
          ctx.result({ skip: 'p0f has not seen the client' });
          return;
        }
        if (answer.status === 'badquery') {
          ctx.result({ err: `p0f: bad query for ${ip}` });
          return;
        }
        const info = answer.info;
        ctx.conn.notes[ctx.name] = info;
        const os = osOf(info);
        const pass: string[] = [];
        const fail: string[] = [];
        const reasons: string[] = [];
        if (denied.length && os) {
          const hit = denied.find((d) => d.match(os));
          if (hit) {
            fail.push(`os:${hit.entry}`);
            reasons.push(`connections from ${os} hosts are not accepted`);
          } else pass.push('os');
        }
        if (opts.max_distance !== undefined && info.distance >= 0) {
          if (info.distance > opts.max_distance) {
            fail.push(`distance:${info.distance}`);
            reasons.push(`your host is ${info.distance} network hops away, too far`);
          } else pass.push('distance');
        }
        ctx.result({
          pass,
          fail,
          msg: `${os || 'unknown OS'}, distance ${info.distance}${info.link_type ? `, ${info.link_type}` : ''}`,
          os_name: info.os_name,
          os_flavor: info.os_flavor,
          distance: info.distance,
          link_type: info.link_type,
          os_match_q: info.os_match_q,
        });
        if (reasons.length) return deny(reasons.join('; '), '5.7.1');
      },
      shutdown() {
        client.close();
      },
    };
    if (opts.add_header) {
      hooks.data_post = (ctx, message) => {
        // A copy from outside would pass for ours.
        message.headers.remove(HEADER);
        const info = ctx.conn.notes[ctx.name] as P0fInfo | undefined;
        if (info) message.headers.prepend(HEADER, headerValue(info));
      };
    }
    return hooks;
  },
});
