/**
 * Keys and independent implementations for the sender-authentication tests.
 *
 * Keys are made at test time with node:crypto (RSA and Ed25519) and published
 * in NSD zones (test/helpers/dns-server.ts). The independent checks use
 * Debian's implementations, never prequeue's or mailauth's code:
 *   - dkimpy (python3-dkim): signs incoming test messages and verifies what
 *     prequeue signed; its DNS lookups go to the test NSD through dnspython;
 *   - Mail::DKIM (libmail-dkim-perl, its dkimproxy-sign script): the DomainKeys
 *     signer.
 * A missing tool fails the test with the package to install.
 *
 * Also sendAsPostfix(): a transaction through prequeue in postfix mode with
 * XFORWARD naming the client, as the over-the-wire tests of these plugins need.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimSign } from '../../src/mailauth/lib';
import type { Reply } from '../../src/smtp/reply';
import { SmtpTalk } from './smtp-talk';

export const PYTHON = '/usr/bin/python3';
export const DKIMPROXY_SIGN = '/usr/bin/dkimproxy-sign';

export interface TestKey {
  /** PKCS#8 PEM. */
  privatePem: string;
  /** The p= value of the key record. */
  publicB64: string;
  type: 'rsa' | 'ed25519';
}

export function rsaKey(bits = 1024): TestKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicB64: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
    type: 'rsa',
  };
}

export function ed25519Key(): TestKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  // RFC 8463: p= is the raw 32-byte public key, not its SPKI wrapping.
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  return { privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicB64: spki.subarray(spki.length - 32).toString('base64'), type: 'ed25519' };
}

/** The DKIM key record value. */
export const dkimRecord = (k: TestKey): string => `v=DKIM1; k=${k.type}; p=${k.publicB64}`;

/** A zone-file TXT line, the value cut into 255-byte character-strings. */
export function txt(name: string, value: string): string {
  const parts: string[] = [];
  for (let i = 0; i < value.length; i += 255) parts.push(`"${value.slice(i, i + 255).replace(/["\\]/g, (c) => `\\${c}`)}"`);
  return `${name} IN TXT ${parts.join(' ')}`;
}

/** A private directory with the keys written as PEM files; returns their paths by name. */
export function keyFiles(keys: Record<string, TestKey>): { dir: string; path: Record<string, string> } {
  const dir = mkdtempSync(join(tmpdir(), 'pq-dkim-'));
  const path: Record<string, string> = {};
  for (const [name, k] of Object.entries(keys)) {
    path[name] = join(dir, `${name}.pem`);
    writeFileSync(path[name]!, k.privatePem, { mode: 0o600 });
  }
  return { dir, path };
}

/** Signs with mailauth (for inbound test messages where the signer is not what is tested). */
export async function mailauthSign(message: string | Buffer, domain: string, selector: string, key: TestKey, canonicalization = 'relaxed/relaxed'): Promise<Buffer> {
  const r = await dkimSign(Buffer.from(message), { canonicalization, signatureData: [{ signingDomain: domain, selector, privateKey: key.privatePem }] });
  if (r.errors.length) throw new Error(`mailauth signing failed: ${r.errors[0]!.err.message}`);
  return Buffer.concat([Buffer.from(r.signatures), Buffer.from(message)]);
}

function run(cmd: string, args: string[], input: Buffer | string, what: string): Promise<{ code: number | null; stdout: string; out: Buffer; stderr: string }> {
  if (!existsSync(cmd)) return Promise.reject(new Error(`${cmd} not found: install ${what}`));
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const all = Buffer.concat(out);
      resolve({ code, stdout: all.toString('latin1'), out: all, stderr });
    });
    child.stdin.end(input);
  });
}

/** dnspython pointed at the test NSD, in dkimpy's dnsfunc shape. */
const PY_DNS = `
import sys, json, base64, dkim, dns.resolver
port = int(sys.argv[1])
r = dns.resolver.Resolver(configure=False)
r.nameservers = ['127.0.0.1']
r.port = port
def txt(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    try:
        a = r.resolve(n, 'TXT', lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b''.join(list(a)[0].strings)
`;

const PY_VERIFY = `${PY_DNS}
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b'dkim-signature'])
def check(i):
    try:
        return bool(dkim.DKIM(msg).verify(i, dnsfunc=txt))
    except dkim.DKIMException as e:
        print('signature %d: %s' % (i, e), file=sys.stderr)
        return False
print(json.dumps([check(i) for i in range(n)]))
`;

/**
 * dkimpy's verdict on each DKIM-Signature of `message` (in field order), keys
 * from the NSD on `dnsPort`. LF line ends (as in a maildir) are taken as CRLF.
 */
export async function dkimpyVerify(message: Buffer, dnsPort: number): Promise<boolean[]> {
  const crlf = Buffer.from(message.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
  const r = await run(PYTHON, ['-c', PY_VERIFY, String(dnsPort)], crlf, 'python3-dkim (dkimpy)');
  if (r.code !== 0) throw new Error(`dkimpy verify failed to run (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim()) as boolean[];
}

const PY_SIGN = `
import sys, dkim
selector, domain, keyfile, canon = sys.argv[1:5]
h, b = canon.split('/')
msg = sys.stdin.buffer.read()
sig = dkim.sign(msg, selector.encode(), domain.encode(), open(keyfile, 'rb').read(), canonicalize=(h.encode(), b.encode()))
sys.stdout.buffer.write(sig + msg)
`;

/** A message signed by dkimpy (RSA key file in PEM). */
export async function dkimpySign(message: string | Buffer, domain: string, selector: string, keyFile: string, canonicalization = 'relaxed/simple'): Promise<Buffer> {
  const r = await run(PYTHON, ['-c', PY_SIGN, selector, domain, keyFile, canonicalization], Buffer.from(message), 'python3-dkim (dkimpy)');
  if (r.code !== 0) throw new Error(`dkimpy sign failed (${r.code}): ${r.stderr}`);
  return r.out;
}

/**
 * A DomainKey-Signature field (CRLF line ends, folded) made by Mail::DKIM for
 * `message`; `method` is the DomainKeys canonicalization.
 */
export async function perlDomainKeySignature(message: string | Buffer, domain: string, selector: string, keyFile: string, method: 'simple' | 'nofws'): Promise<string> {
  const r = await run(
    DKIMPROXY_SIGN,
    ['--type=domainkeys', `--method=${method}`, `--selector=${selector}`, `--domain=${domain}`, `--key=${keyFile}`, '--algorithm=rsa-sha1', '--binary'],
    Buffer.from(message),
    'libmail-dkim-perl (Mail::DKIM, dkimproxy-sign)',
  );
  if (r.code !== 0 || !/^DomainKey-Signature:/.test(r.stdout)) throw new Error(`dkimproxy-sign failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout.replace(/\r?\n/g, '\r\n');
}

/**
 * One transaction against prequeue in postfix mode, as Postfix's smtpd would
 * run it: EHLO, XFORWARD naming the real client, MAIL, RCPT, DATA. Stops at
 * the first refusal; `eod` is the reply to the message.
 */
export async function sendAsPostfix(
  port: number,
  t: { addr: string; helo: string; from: string; to: string[]; message: string | Buffer },
): Promise<{ mail: Reply; rcpt: Reply[]; data?: Reply; eod?: Reply }> {
  const s = await SmtpTalk.connect(port);
  try {
    await s.cmd('EHLO mx.example.test');
    const x = await s.cmd(`XFORWARD ADDR=${t.addr} HELO=${t.helo} PROTO=ESMTP NAME=[UNAVAILABLE]`);
    if (x.code !== 250) throw new Error(`XFORWARD refused: ${x.code} ${x.lines.join(' ')}`);
    const mail = await s.cmd(`MAIL FROM:<${t.from}>`);
    const rcpt: Reply[] = [];
    if (mail.code !== 250) return { mail, rcpt };
    for (const r of t.to) rcpt.push(await s.cmd(`RCPT TO:<${r}>`));
    if (!rcpt.some((r) => r.code === 250)) return { mail, rcpt };
    const data = await s.cmd('DATA');
    if (data.code !== 354) return { mail, rcpt, data };
    const body = Buffer.from(t.message).toString('latin1').replace(/(^|\r\n)\./g, '$1..');
    s.write(Buffer.from(body + (body.endsWith('\r\n') ? '' : '\r\n') + '.\r\n', 'latin1'));
    return { mail, rcpt, data, eod: await s.reply(15000) };
  } finally {
    await s.quit();
  }
}
