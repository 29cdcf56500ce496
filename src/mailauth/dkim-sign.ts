/**
 * DKIM signing with mailauth: keys from PEM files, and signatures over the
 * message exactly as it will be streamed downstream, handed back as header
 * values folded the way mailauth hashed them (which simple header
 * canonicalization depends on).
 */
import { createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Message } from '../message/types';
import { dkimSign } from './lib';

export interface SigningKey {
  /** d= */
  domain: string;
  /** s= */
  selector: string;
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  /** The key as read (PEM). */
  pem: Buffer;
  /** RSA modulus length. */
  bits?: number;
  file: string;
}

/** The smallest RSA key RFC 8301 lets a signer use. */
export const MIN_RSA_BITS = 1024;

/** Reads and checks a private key (RSA or Ed25519, PEM). Throws with the file named. */
export async function loadSigningKey(file: string, domain: string, selector: string): Promise<SigningKey> {
  let pem: Buffer;
  try {
    pem = await readFile(file);
  } catch (err) {
    throw new Error(`DKIM key ${file}: ${(err as Error).message}`);
  }
  let type: string | undefined;
  let bits: number | undefined;
  try {
    const key = createPrivateKey({ key: pem, format: 'pem' });
    type = key.asymmetricKeyType;
    bits = key.asymmetricKeyDetails?.modulusLength;
  } catch (err) {
    throw new Error(`DKIM key ${file}: not a PEM private key (${(err as Error).message})`);
  }
  if (type === 'rsa') {
    if ((bits ?? 0) < MIN_RSA_BITS) throw new Error(`DKIM key ${file}: RSA key of ${bits} bits, at least ${MIN_RSA_BITS} needed (RFC 8301)`);
    return { domain, selector, algorithm: 'rsa-sha256', pem, bits, file };
  }
  if (type === 'ed25519') return { domain, selector, algorithm: 'ed25519-sha256', pem, file };
  throw new Error(`DKIM key ${file}: ${type} key; DKIM signs with RSA or Ed25519`);
}

export interface SignOptions {
  /** Field names to sign; mailauth's default list when absent. */
  headers?: readonly string[];
  canonicalization: string;
  /** Seconds until the signature expires (x=), if set. */
  expire?: number;
  now?: Date;
}

/**
 * Signs the message as it stands (message.stream() is what the relay sends)
 * and returns the value of each DKIM-Signature field, for headers.prepend().
 */
export async function signMessage(message: Message, keys: readonly SigningKey[], opts: SignOptions): Promise<string[]> {
  const now = opts.now ?? new Date();
  const res = await dkimSign(message.stream(), {
    canonicalization: opts.canonicalization,
    headerList: opts.headers?.join(':'),
    signTime: now,
    expires: opts.expire ? new Date(now.getTime() + opts.expire * 1000) : undefined,
    signatureData: keys.map((k) => ({ signingDomain: k.domain, selector: k.selector, privateKey: k.pem, algorithm: k.algorithm })),
  });
  if (res.errors.length) {
    const e = res.errors[0]!;
    throw new Error(`DKIM signing for ${e.signingDomain ?? '?'} (s=${e.selector ?? '?'}) failed: ${e.err?.message ?? String(e.err)}`);
  }
  const values = res.signatures
    .split(/\r\n(?![ \t])/)
    .filter((f) => f !== '')
    .map((f) => {
      const m = /^DKIM-Signature: ?/i.exec(f);
      if (!m) throw new Error(`unexpected signature field from mailauth: ${f.slice(0, 40)}`);
      return f.slice(m[0].length);
    });
  if (values.length !== keys.length) throw new Error(`DKIM signing produced ${values.length} signatures for ${keys.length} keys`);
  return values;
}
