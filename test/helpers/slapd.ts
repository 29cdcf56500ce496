/**
 * A private OpenLDAP slapd for a test file (Debian's slapd package): its own
 * slapd.conf, mdb database and TLS certificate in a temp dir, listening on two
 * free loopback ports (ldap:// with StartTLS, and ldaps://). Nothing under
 * /etc/ldap or /var/lib/ldap is read or written except the stock schema files.
 *
 *   const ldap = await startSlapd({ users: [{ uid: 'alice', password: 'pw', mail: ['alice@example.test'] }] });
 *   after(() => ldap.destroy());
 *   ... { url: ldap.url, bind_dn: 'uid=%u,ou=people,dc=example,dc=test' } ...
 *
 * The directory is loaded offline with slapadd before slapd starts, then slapd
 * runs in the foreground (`-d 0`: no detaching, so the child process is slapd
 * itself and stop() is a plain SIGTERM to it). A slapd.conf (-f) rather than a
 * cn=config tree: slapd 2.5 still reads it, and it is one readable file.
 *
 * Access: userPassword is usable for binds only; the rest of the tree is
 * readable by bound users (the root DN, the `cn=searcher` service account, any
 * user), not anonymously, so a search that works proves the service bind
 * happened.
 *
 * Runs as whoever runs the tests (root here and in CI); slapd is not told to
 * change user. Debian ships no AppArmor profile enforcing slapd's paths in this
 * container (no AppArmor in the kernel); where one is enforced, slapd could
 * not read a temp dir and start() fails with slapd's own message.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'ldapts';
import { freePort } from './postfix';
import { makeTestCert, type TestCert } from './tls';

export const SLAPD = '/usr/sbin/slapd';
export const SLAPADD = '/usr/sbin/slapadd';
export const SLAPD_MODULES = '/usr/lib/ldap';
export const SLAPD_SCHEMA = '/etc/ldap/schema';

export const SUFFIX = 'dc=example,dc=test';
export const PEOPLE = `ou=people,${SUFFIX}`;
export const ROOT_DN = `cn=admin,${SUFFIX}`;
export const ROOT_PASSWORD = 'root secret';
/** A service account for search-then-bind. */
export const SEARCH_DN = `cn=searcher,${SUFFIX}`;
export const SEARCH_PASSWORD = 'searcher secret';

export interface SlapdUser {
  /** The uid attribute. */
  uid: string;
  password: string;
  /** How userPassword is stored (default ssha). */
  hash?: 'ssha' | 'clear';
  mail?: string[];
  /** The entry's RDN: `uid=<uid>` (default) or `cn=<cn>` when given. */
  rdnCn?: string;
}

export interface SlapdOptions {
  users?: SlapdUser[];
  /** More LDIF records, appended as they are. */
  ldif?: string;
}

export interface Slapd {
  host: string;
  /** ldap:// port (StartTLS offered). */
  port: number;
  /** ldaps:// port. */
  tlsPort: number;
  /** ldap://127.0.0.1:PORT */
  url: string;
  /** ldaps://127.0.0.1:TLSPORT */
  ldapsUrl: string;
  dir: string;
  /** The CA that signed slapd's certificate (PEM file), and a CA that did not. */
  ca: string;
  otherCa: string;
  cert: TestCert;
  /** The DN of a user entry as loaded. */
  dnOf(user: SlapdUser): string;
  readonly running: boolean;
  /** Stops slapd; the ports stay reserved for a later start(). */
  stop(): Promise<void>;
  /** Starts it again on the same ports with the same data. */
  start(): Promise<void>;
  /** Stops it and removes its directory. */
  destroy(): Promise<void>;
}

/** Throws (fails the test) when slapd is missing: a missing service never passes silently. */
export function requireSlapd(): void {
  for (const f of [SLAPD, SLAPADD, join(SLAPD_MODULES, 'back_mdb.la'), join(SLAPD_SCHEMA, 'inetorgperson.schema')]) {
    if (!existsSync(f)) throw new Error(`${f} not found: install Debian's slapd package (.ci/run does)`);
  }
}

/** OpenLDAP's {SSHA}: base64(SHA1(password + salt) + salt). */
export function ssha(password: string): string {
  const salt = randomBytes(8);
  const digest = createHash('sha1').update(Buffer.from(password, 'utf8')).update(salt).digest();
  return '{SSHA}' + Buffer.concat([digest, salt]).toString('base64');
}

/** One LDIF attribute line, base64 (`attr:: ...`) when the value is not safe as-is (RFC 2849). */
function ldifLine(attr: string, value: string): string {
  const safe = /^[\x01-\x09\x0b-\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b-\x0c\x0e-\x7f]*$/.test(value) && !value.endsWith(' ');
  return safe ? `${attr}: ${value}` : `${attr}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

/** RFC 4514 value escaping, written independently of the plugin's so a test can compare. */
function dnValue(v: string): string {
  return v
    .replace(/[\\,+"<>;=]/g, (c) => '\\' + c)
    .replace(/^[ #]/, (c) => '\\' + c)
    .replace(/ $/, '\\ ');
}

function userDn(u: SlapdUser): string {
  return u.rdnCn !== undefined ? `cn=${dnValue(u.rdnCn)},${PEOPLE}` : `uid=${dnValue(u.uid)},${PEOPLE}`;
}

function userLdif(u: SlapdUser): string {
  const lines = [
    ldifLine('dn', userDn(u)),
    'objectClass: inetOrgPerson',
    ldifLine('uid', u.uid),
    ldifLine('cn', u.rdnCn ?? u.uid),
    ldifLine('sn', u.uid),
    ...(u.mail ?? []).map((m) => ldifLine('mail', m)),
    ldifLine('userPassword', u.hash === 'clear' ? u.password : ssha(u.password)),
  ];
  return lines.join('\n');
}

function baseLdif(): string {
  return [
    `dn: ${SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example`,
    `dn: ${PEOPLE}\nobjectClass: organizationalUnit\nou: people`,
    `dn: ${SEARCH_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: searcher\n${ldifLine('userPassword', ssha(SEARCH_PASSWORD))}`,
  ].join('\n\n');
}

function slapdConf(dir: string, cert: TestCert): string {
  return `# private test instance (test/helpers/slapd.ts)
include ${SLAPD_SCHEMA}/core.schema
include ${SLAPD_SCHEMA}/cosine.schema
include ${SLAPD_SCHEMA}/inetorgperson.schema
modulepath ${SLAPD_MODULES}
moduleload back_mdb
pidfile ${dir}/slapd.pid
argsfile ${dir}/slapd.args
loglevel none
TLSCACertificateFile ${cert.ca}
TLSCertificateFile ${cert.cert}
TLSCertificateKeyFile ${cert.key}

database mdb
maxsize 16777216
suffix "${SUFFIX}"
rootdn "${ROOT_DN}"
rootpw "${ROOT_PASSWORD}"
directory ${dir}/db
access to attrs=userPassword
  by anonymous auth
  by self read
  by * none
access to *
  by users read
  by anonymous auth
  by * none
`;
}

/** Binds as the root DN: true once slapd answers LDAP. */
async function answers(url: string): Promise<boolean> {
  const client = new Client({ url, connectTimeout: 500, timeout: 1000 });
  try {
    await client.bind(ROOT_DN, ROOT_PASSWORD);
    return true;
  } catch {
    return false;
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

export async function startSlapd(opts: SlapdOptions = {}): Promise<Slapd> {
  requireSlapd();
  const dir = mkdtempSync(join(tmpdir(), 'pq-slapd-'));
  mkdirSync(join(dir, 'db'));
  const cert = makeTestCert(join(dir, 'tls'), 'ldap.example.test');
  const other = makeTestCert(join(dir, 'tls'), 'ldap.example.test', 'other-');
  const conf = join(dir, 'slapd.conf');
  writeFileSync(conf, slapdConf(dir, cert));
  const ldif = join(dir, 'data.ldif');
  writeFileSync(ldif, [baseLdif(), ...(opts.users ?? []).map(userLdif), ...(opts.ldif ? [opts.ldif.trim()] : [])].join('\n\n') + '\n');
  const add = spawnSync(SLAPADD, ['-f', conf, '-l', ldif], { encoding: 'utf8' });
  if (add.status !== 0) throw new Error(`slapadd failed (${add.status ?? add.signal}): ${add.stderr}${add.stdout}`);

  const port = await freePort();
  const tlsPort = await freePort();
  const url = `ldap://127.0.0.1:${port}`;
  const ldapsUrl = `ldaps://127.0.0.1:${tlsPort}`;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const start = async (): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) return;
    const proc = spawn(SLAPD, ['-f', conf, '-h', `${url}/ ${ldapsUrl}/`, '-d', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let output = '';
    proc.stdout!.on('data', (d) => (output += d));
    proc.stderr!.on('data', (d) => (output += d));
    exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`slapd exited (${proc.exitCode ?? proc.signalCode}): ${output}`);
      if (await answers(url)) return;
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`slapd did not answer on ${url}: ${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const stop = async (): Promise<void> => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };

  try {
    await start();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    host: '127.0.0.1',
    port,
    tlsPort,
    url,
    ldapsUrl,
    dir,
    ca: cert.ca,
    otherCa: other.ca,
    cert,
    dnOf: userDn,
    get running() {
      return !!child && child.exitCode === null && child.signalCode === null;
    },
    stop,
    start,
    async destroy() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
