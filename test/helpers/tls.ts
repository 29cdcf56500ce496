/**
 * Test certificates made with the openssl CLI: a throwaway CA and a server
 * certificate it signed, so clients can verify the server (pass `ca`) instead
 * of turning verification off. EC P-256 keys: fast to make.
 *
 *   const { key, cert, ca } = makeTestCert(dir, 'mail.example.test');
 *
 * The server certificate names `cn`, `localhost` and 127.0.0.1 / ::1 in its
 * subjectAltName, so a client connecting to the loopback address verifies it.
 * Fails loudly (throws) when openssl is missing: a TLS test must not pass
 * without TLS.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCert {
  /** Server private key (PEM file). */
  key: string;
  /** Server certificate (PEM file), signed by `ca`. */
  cert: string;
  /** The CA certificate (PEM file) to give clients as trust anchor. */
  ca: string;
  /** The server certificate's SHA-256 fingerprint (hex, upper case, colon-separated as openssl prints it). */
  fingerprint: string;
}

function openssl(args: string[], cwd: string): string {
  try {
    return execFileSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('openssl is not installed (apt-get install openssl)');
    throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`);
  }
}

/**
 * Writes `<prefix>ca.key`, `<prefix>ca.pem`, `<prefix>key.pem` and `<prefix>cert.pem` into `dir`
 * (created if needed). A distinct `prefix` makes a second pair in the same
 * directory (a renewed certificate, say); each call makes a new CA.
 */
export function makeTestCert(dir: string, cn: string, prefix = ''): TestCert {
  mkdirSync(dir, { recursive: true });
  const f = (name: string): string => join(dir, `${prefix}${name}`);
  const curve = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...curve, '-subj', `/CN=prequeue test CA ${cn}`, '-days', '2', '-keyout', f('ca.key'), '-out', f('ca.pem')], dir);
  openssl(['req', '-new', ...curve, '-subj', `/CN=${cn}`, '-keyout', f('key.pem'), '-out', f('req.csr')], dir);
  writeFileSync(
    f('ext.cnf'),
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=DNS:${cn},DNS:localhost,IP:127.0.0.1,IP:::1`,
      '',
    ].join('\n'),
  );
  openssl(
    ['x509', '-req', '-in', f('req.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('ext.cnf'), '-out', f('cert.pem')],
    dir,
  );
  const fp = openssl(['x509', '-in', f('cert.pem'), '-noout', '-fingerprint', '-sha256'], dir);
  const fingerprint = fp.slice(fp.indexOf('=') + 1).trim();
  return { key: f('key.pem'), cert: f('cert.pem'), ca: f('ca.pem'), fingerprint };
}

/** The PEM texts of a TestCert (for APIs that take contents rather than paths). */
export function readTestCert(c: TestCert): { key: string; cert: string; ca: string } {
  return { key: readFileSync(c.key, 'utf8'), cert: readFileSync(c.cert, 'utf8'), ca: readFileSync(c.ca, 'utf8') };
}
