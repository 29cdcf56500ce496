/**
 * CRAM-MD5 (RFC 2195) verification: the client proves it knows the secret by
 * sending HMAC-MD5(secret, challenge). A backend can check that with the
 * cleartext secret, or with Dovecot's `{CRAM-MD5}` scheme: the two MD5 states
 * after the HMAC key blocks (RFC 2104 section 4), 32 bytes in hex laid out as
 * outer a,b,c,d then inner a,b,c,d, little-endian 32-bit words (Dovecot's
 * hmac_md5_get_cram_context). Node's crypto cannot resume MD5 from a state,
 * so the compression function is here.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** The hex digest a client answers the challenge with, given the cleartext secret. */
export function cramMd5Digest(secret: string, challenge: string): string {
  return createHmac('md5', Buffer.from(secret, 'utf8')).update(challenge, 'utf8').digest('hex');
}

function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a.toLowerCase());
  const y = Buffer.from(b.toLowerCase());
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Whether `response` (hex) answers `challenge` for this cleartext secret. */
export function cramMd5Matches(secret: string, challenge: string, response: string): boolean {
  return sameHex(cramMd5Digest(secret, challenge), response);
}

// ---- MD5 from an intermediate state (RFC 1321) ----

const S = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21];
const K = Array.from({ length: 64 }, (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) >>> 0);
const INIT: readonly number[] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

type State = [number, number, number, number];

function compress(state: State, block: Buffer, offset: number): void {
  const m = new Array<number>(16);
  for (let i = 0; i < 16; i++) m[i] = block.readUInt32LE(offset + i * 4);
  let [a, b, c, d] = state;
  for (let i = 0; i < 64; i++) {
    let f: number;
    let g: number;
    if (i < 16) {
      f = (b & c) | (~b & d);
      g = i;
    } else if (i < 32) {
      f = (d & b) | (~d & c);
      g = (5 * i + 1) % 16;
    } else if (i < 48) {
      f = b ^ c ^ d;
      g = (3 * i + 5) % 16;
    } else {
      f = c ^ (b | ~d);
      g = (7 * i) % 16;
    }
    const sum = (a + f + K[i]! + m[g]!) >>> 0;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << S[i]!) | (sum >>> (32 - S[i]!)))) >>> 0;
  }
  state[0] = (state[0] + a) >>> 0;
  state[1] = (state[1] + b) >>> 0;
  state[2] = (state[2] + c) >>> 0;
  state[3] = (state[3] + d) >>> 0;
}

/** Finishes an MD5 whose first `done` bytes (a multiple of 64) are already folded into `state`. */
function md5From(start: readonly number[], done: number, data: Buffer): Buffer {
  const state = [...start] as State;
  const total = done + data.length;
  const padLen = ((data.length + 8) >> 6) * 64 + 64 - data.length;
  const buf = Buffer.alloc(data.length + padLen);
  data.copy(buf);
  buf[data.length] = 0x80;
  const bits = BigInt(total) * 8n;
  buf.writeUInt32LE(Number(bits & 0xffffffffn), buf.length - 8);
  buf.writeUInt32LE(Number((bits >> 32n) & 0xffffffffn), buf.length - 4);
  for (let off = 0; off < buf.length; off += 64) compress(state, buf, off);
  const out = Buffer.alloc(16);
  state.forEach((w, i) => out.writeUInt32LE(w, i * 4));
  return out;
}

/** Plain MD5 through the same code (for self-checks against node:crypto). */
export function md5(data: Buffer): Buffer {
  return md5From(INIT, 0, data);
}

/** Dovecot's `{CRAM-MD5}` value (64 hex digits) for a secret. */
export function cramMd5Context(secret: string): string {
  let key: Buffer = Buffer.from(secret, 'utf8');
  if (key.length > 64) key = md5(key);
  const pad = (x: number): Buffer => {
    const b = Buffer.alloc(64, x);
    for (let i = 0; i < key.length; i++) b[i] = key[i]! ^ x;
    return b;
  };
  const inner = [...INIT] as State;
  const outer = [...INIT] as State;
  compress(inner, pad(0x36), 0);
  compress(outer, pad(0x5c), 0);
  const out = Buffer.alloc(32);
  [...outer, ...inner].forEach((w, i) => out.writeUInt32LE(w, i * 4));
  return out.toString('hex');
}

/** Whether `response` answers `challenge` for the secret behind a Dovecot `{CRAM-MD5}` context (64 hex digits). */
export function cramMd5MatchesContext(context: string, challenge: string, response: string): boolean {
  if (!/^[0-9a-f]{64}$/i.test(context)) return false;
  const raw = Buffer.from(context, 'hex');
  const words = Array.from({ length: 8 }, (_, i) => raw.readUInt32LE(i * 4));
  const innerDigest = md5From(words.slice(4), 64, Buffer.from(challenge, 'utf8'));
  const digest = md5From(words.slice(0, 4), 64, innerDigest);
  return sameHex(digest.toString('hex'), response);
}
