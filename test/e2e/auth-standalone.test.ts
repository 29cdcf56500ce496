/**
 * SMTP AUTH in standalone mode, end to end: STARTTLS with a certificate made
 * here (openssl), AUTH offered only inside TLS (or in the clear from loopback
 * with allow_insecure), the STARTTLS plaintext-injection case, swaks logging
 * in with PLAIN, LOGIN and CRAM-MD5 and sending through prequeue to a fake
 * downstream and to a real Postfix (XCLIENT LOGIN: Postfix records the login),
 * our Received header (Authenticated sender, ESMTPSA), wrong passwords (535,
 * no relaying, nothing downstream), the brute-force brake across connections,
 * auth plugins chained (auth_flat_file declining, auth_checkpassword
 * deciding; a DENY ends the chain), auth.required, and a renewed certificate
 * served after SIGHUP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { bcrypt } from 'hash-wasm';
import type { Reply } from '../../src/smtp/reply';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { createPostfix, freePort, swaks, type PostfixInstance } from '../helpers/postfix';
import { startProxy, writeConfig, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { makeTestCert, type TestCert } from '../helpers/tls';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const plain = (user: string, password: string): string => `AUTH PLAIN ${b64(`\0${user}\0${password}`)}`;
const ehloKeywords = (r: Reply): string[] => r.lines.slice(1).map((l) => l.toUpperCase());
const authLine = (r: Reply): string | undefined => ehloKeywords(r).find((l) => l.startsWith('AUTH'));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A checkpassword program: logs each user it is asked about; carol/carol-pw is good, temp fails temporarily. */
const CHECKPW = `#!/bin/bash
IFS= read -r -d '' user <&3 || exit 2
IFS= read -r -d '' pass <&3 || exit 2
printf '%s\\n' "$user" >> "$(dirname "$0")/calls"
case "$user" in
  carol) [ "$pass" = 'carol-pw' ] && exec "$@"; exit 1 ;;
  alice) exec "$@" ;;
  temp) exit 111 ;;
esac
exit 1
`;


let dir: string;
let cert: TestCert;
let usersFile: string;
let checkpw: string;
let downstream: FakeSmtpServer;
const proxies: TestProxy[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pq-auth-e2e-'));
  cert = makeTestCert(join(dir, 'tls'), 'pq.example.test');
  const bc = (pw: string) => bcrypt({ password: pw, salt: Buffer.from('0123456789abcdef'), costFactor: 4, outputType: 'encoded' });
  usersFile = join(dir, 'users');
  writeFileSync(
    usersFile,
    [
      '# test users',
      `alice:${(await bc('alice pw')).replace(/^\$2a\$/, '$2y$')}`,
      `bob:${await bc('bob pw')}`,
      'dave:{PLAIN}dave secret',
      '',
    ].join('\n'),
  );
  checkpw = join(dir, 'checkpw.sh');
  writeFileSync(checkpw, CHECKPW);
  chmodSync(checkpw, 0o755);
  downstream = await FakeSmtpServer.start();
});

after(async () => {
  for (const p of proxies) await p.close();
  await downstream?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function proxy(config: Record<string, unknown>): Promise<TestProxy> {
  const p = await startProxy({
    mode: 'standalone',
    downstream: { address: `127.0.0.1:${downstream.port}`, xclient: true, pool: { max_idle: 0 } },
    ...config,
  });
  proxies.push(p);
  return p;
}

const flatFile = (extra: Record<string, unknown> = {}) => ({ auth_flat_file: { file: usersFile, cleartext: true, ...extra } });
const fastBrake = (extra: Record<string, unknown> = {}) => ({ brute_force: { delay: 0, ...extra } });
const tlsConfig = () => ({ key: cert.key, cert: cert.cert });

describe('STARTTLS and when AUTH is offered', () => {
  let p: TestProxy;
  before(async () => {
    p = await proxy({ tls: tlsConfig(), auth: fastBrake(), plugins: [flatFile({ cram_md5: true })] });
  });

  test('before STARTTLS: no AUTH in EHLO and AUTH gets 530; inside TLS: AUTH PLAIN LOGIN CRAM-MD5, no STARTTLS', async () => {
    const d = await SmtpTalk.connect(p.port);
    try {
      const e1 = await d.cmd('EHLO client.example.net');
      assert.ok(ehloKeywords(e1).includes('STARTTLS'), JSON.stringify(e1));
      assert.equal(authLine(e1), undefined, 'no AUTH before TLS');
      const refused = await d.cmd(plain('alice', 'alice pw'));
      assert.equal(refused.code, 530);
      assert.equal(refused.enhanced, '5.7.0');
      const ts = await d.starttls(cert.ca);
      assert.equal(ts.authorized, true, 'the client verified our certificate against the test CA');
      assert.equal(ts.getPeerCertificate().subject.CN, 'pq.example.test');
      const e2 = await d.cmd('EHLO client.example.net');
      assert.equal(authLine(e2), 'AUTH PLAIN LOGIN CRAM-MD5');
      assert.ok(!ehloKeywords(e2).includes('STARTTLS'));
      const ok = await d.cmd(plain('alice', 'alice pw'));
      assert.equal(ok.code, 235, JSON.stringify(ok));
      assert.equal(ok.enhanced, '2.7.0');
      const again = await d.cmd(plain('alice', 'alice pw'));
      assert.equal(again.code, 503, 'one AUTH per session');
    } finally {
      d.destroy();
    }
  });

  test('STARTTLS injection: a command pipelined in the same packet is discarded, never answered inside TLS', async () => {
    const d = await SmtpTalk.connect(p.port);
    try {
      await d.cmd('EHLO client.example.net');
      d.write('STARTTLS\r\nRSET\r\n');
      const r = await d.reply();
      assert.equal(r.code, 220);
      await sleep(200);
      assert.equal(d.unread, '', 'nothing answered in plaintext after the 220');
      await d.handshake(cert.ca);
      await sleep(500);
      assert.equal(d.unread, '', 'the injected RSET got no reply inside TLS');
      const e = await d.cmd('EHLO client.example.net');
      assert.equal(e.code, 250);
      assert.match(e.lines[0]!, /^pq\.example\.test/, `the first reply in TLS is EHLO's own: ${JSON.stringify(e)}`);
      assert.ok(authLine(e));
    } finally {
      d.destroy();
    }
    // Same with an AUTH smuggled behind STARTTLS: it must not log the session in.
    const d2 = await SmtpTalk.connect(p.port);
    try {
      await d2.cmd('EHLO client.example.net');
      d2.write(`STARTTLS\r\n${plain('alice', 'alice pw')}\r\n`);
      assert.equal((await d2.reply()).code, 220);
      await d2.handshake(cert.ca);
      await sleep(300);
      assert.equal(d2.unread, '');
      await d2.cmd('EHLO client.example.net');
      const r = await d2.cmd(plain('bob', 'bob pw'));
      assert.equal(r.code, 235, 'not "already authenticated": the smuggled AUTH never ran');
    } finally {
      d2.destroy();
    }
  });

  test('allow_insecure: loopback offers AUTH without TLS to 127.0.0.1; CRAM-MD5 only when the plugin offers it', async () => {
    const insecure = await proxy({ auth: { allow_insecure: 'loopback', ...fastBrake() }, plugins: [flatFile()] });
    const d = await SmtpTalk.connect(insecure.port);
    try {
      const e = await d.cmd('EHLO client.example.net');
      assert.ok(!ehloKeywords(e).includes('STARTTLS'), 'no certificate, no STARTTLS');
      assert.equal(authLine(e), 'AUTH PLAIN LOGIN', 'cram_md5 is off: CRAM-MD5 not offered');
      assert.equal((await d.cmd('AUTH CRAM-MD5')).code, 504);
      assert.equal((await d.cmd('AUTH LOGIN')).code, 334);
      assert.equal((await d.cmd(b64('dave'))).code, 334);
      const r = await d.cmd(b64('dave secret'));
      assert.equal(r.code, 235, JSON.stringify(r));
    } finally {
      d.destroy();
    }
  });
});

describe('no certificate and AUTH only over TLS', () => {
  test('AUTH is neither advertised nor accepted, and nobody is told to use a STARTTLS that is not offered', async () => {
    const bare = await proxy({ auth: fastBrake(), plugins: [flatFile()] });
    const d = await SmtpTalk.connect(bare.port);
    try {
      const e = await d.cmd('EHLO client.example.net');
      assert.ok(!ehloKeywords(e).includes('STARTTLS'));
      assert.equal(authLine(e), undefined);
      const r = await d.cmd(plain('alice', 'alice pw'));
      assert.ok(r.code >= 500 && r.code !== 530, JSON.stringify(r));
      assert.doesNotMatch(r.lines.join(' '), /STARTTLS/);
      assert.equal((await d.cmd('MAIL FROM:<a@example.net>')).code, 250, 'the session goes on');
    } finally {
      d.destroy();
    }
  });
});

describe('logging in with swaks and sending', () => {
  let p: TestProxy;
  before(async () => {
    p = await proxy({
      tls: tlsConfig(),
      auth: fastBrake(),
      plugins: [{ rcpt_ok: { domains: ['example.test'] } }, flatFile({ cram_md5: true })],
    });
  });

  const send = (args: string[], to = 'someone@elsewhere.example') =>
    swaks(['--server', `127.0.0.1:${p.port}`, '--tls', '--from', 'alice@example.test', '--to', to, '--helo', 'client.example.net', ...args]);

  for (const [mech, user, password] of [
    ['PLAIN', 'alice', 'alice pw'],
    ['LOGIN', 'bob', 'bob pw'],
    ['CRAM-MD5', 'dave', 'dave secret'],
  ] as const) {
    test(`${mech} over STARTTLS: relayed onward with the login in our Received header and in XCLIENT`, async () => {
      const before = downstream.messages.length;
      const res = await send(['--auth', mech, '--auth-user', user, '--auth-password', password]);
      assert.equal(res.code, 0, res.stdout + res.stderr);
      assert.match(res.stdout, /<~\s+235 2\.7\.0 /);
      assert.equal(downstream.messages.length, before + 1, 'an authenticated client may relay to another domain');
      const m = downstream.messages[before]!;
      const text = m.data.toString('latin1');
      const received = /^Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*/m.exec(text)?.[0] ?? '';
      assert.match(received, new RegExp(`\\(Authenticated sender: ${user}\\)`), received);
      assert.match(received, /by pq\.example\.test \(prequeue\) with ESMTPSA id /, received);
      assert.ok(
        m.xclient.some((l) => new RegExp(`\\bLOGIN=${user}\\b`).test(l)),
        `XCLIENT carried the login: ${JSON.stringify(m.xclient)}`,
      );
    });
  }

  test('a wrong password: 535 5.7.8, no relaying, nothing downstream', async () => {
    const before = downstream.messages.length;
    const connections = downstream.connections;
    const res = await send(['--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'guess']);
    assert.notEqual(res.code, 0);
    assert.match(res.stdout, /<~\*\s+535 5\.7\.8 /);
    assert.equal(downstream.connections, connections, 'swaks gave up after 535: the downstream never heard of it');
    const d = await SmtpTalk.connect(p.port);
    try {
      await d.cmd('EHLO client.example.net');
      await d.starttls(cert.ca);
      await d.cmd('EHLO client.example.net');
      const bad = await d.cmd(plain('bob', 'alice pw'));
      assert.equal(bad.code, 535);
      assert.equal(bad.enhanced, '5.7.8');
      assert.equal((await d.cmd('MAIL FROM:<bob@example.test>')).code, 250);
      const rcpt = await d.cmd('RCPT TO:<someone@elsewhere.example>');
      assert.equal(rcpt.code, 550, `not authenticated, so not a relay client: ${JSON.stringify(rcpt)}`);
      assert.equal(downstream.messages.length, before);
      // The accepted MAIL opened the downstream link (lock-step); the refused recipient never reached it.
      const commands = downstream.sessions.slice(connections).flatMap((s) => s.lines);
      assert.ok(!commands.some((l) => /elsewhere\.example|^DATA/i.test(l)), JSON.stringify(commands));
    } finally {
      d.destroy();
    }
    const log = p.log.lines.map((e) => e.msg + " " + JSON.stringify(e.meta)).join('\n');
    assert.doesNotMatch(log, /guess|alice pw/, 'passwords never reach the log');
  });
});

describe('brute-force brake', () => {
  test('after max_failures the connection is closed and AUTH from that address is refused; other addresses are not', async () => {
    const p = await proxy({ auth: { allow_insecure: 'always', ...fastBrake({ max_failures: 3 }) }, plugins: [flatFile()] });
    const d = await SmtpTalk.connect(p.port, '127.0.0.1', true, '127.0.0.7');
    try {
      await d.cmd('EHLO client.example.net');
      assert.equal((await d.cmd(plain('alice', 'x1'))).code, 535);
      assert.equal((await d.cmd(plain('bob', 'x2'))).code, 535);
      const last = await d.cmd(plain('alice', 'x3'));
      assert.equal(last.code, 535);
      assert.match(last.lines.join(' '), /too many failures/);
      assert.ok(await d.closedWithin(), 'closed after the limit');
    } finally {
      d.destroy();
    }
    const again = await SmtpTalk.connect(p.port, '127.0.0.1', true, '127.0.0.7');
    try {
      await again.cmd('EHLO client.example.net');
      const r = await again.cmd(plain('alice', 'alice pw'));
      assert.equal(r.code, 421, `even the right password is refused: ${JSON.stringify(r)}`);
      assert.equal(r.enhanced, '4.7.0');
      assert.ok(await again.closedWithin());
    } finally {
      again.destroy();
    }
    const other = await SmtpTalk.connect(p.port, '127.0.0.1', true, '127.0.0.8');
    try {
      await other.cmd('EHLO client.example.net');
      assert.equal((await other.cmd(plain('alice', 'alice pw'))).code, 235);
    } finally {
      other.destroy();
    }
  });
});

describe('auth plugins chained', () => {
  let p: TestProxy;
  const calls = (): string[] => (existsSync(join(dir, 'calls')) ? readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n') : []);
  before(async () => {
    p = await proxy({
      auth: { allow_insecure: 'always', ...fastBrake({ max_failures: 0 }) },
      plugins: [flatFile(), { auth_checkpassword: { program: checkpw, args: ['/bin/true'] } }],
    });
  });

  const login = async (user: string, password: string): Promise<Reply> => {
    const d = await SmtpTalk.connect(p.port);
    try {
      await d.cmd('EHLO client.example.net');
      return await d.cmd(plain(user, password));
    } finally {
      d.destroy();
    }
  };

  test('a user the file does not know goes on to checkpassword, which decides', async () => {
    assert.equal((await login('carol', 'carol-pw')).code, 235);
    assert.equal((await login('carol', 'wrong')).code, 535);
    assert.deepEqual(calls().filter((u) => u === 'carol').length, 2);
    const t = await login('temp', 'x');
    assert.equal(t.code, 454, 'exit 111 is a temporary failure');
    assert.equal(t.enhanced, '4.7.0');
  });

  test("the file's DENY ends the chain: checkpassword is never asked (it would have said yes)", async () => {
    const before = calls().length;
    const r = await login('alice', 'not alice pw');
    assert.equal(r.code, 535);
    assert.equal(calls().length, before, `checkpassword was not run: ${calls().join(',')}`);
    assert.equal((await login('alice', 'alice pw')).code, 235, 'and the OK of the first plugin ends it too');
    assert.equal(calls().length, before);
    const log = p.log.lines.map((e) => e.msg + " " + JSON.stringify(e.meta)).join('\n');
    assert.match(log, /authenticated alice with PLAIN by auth_flat_file/);
    assert.match(log, /authenticated carol with PLAIN by auth_checkpassword/);
  });
});

describe('auth.required', () => {
  test('MAIL without AUTH gets 530 5.7.0; after AUTH it goes ahead', async () => {
    const p = await proxy({ auth: { allow_insecure: 'always', required: true, ...fastBrake() }, plugins: [flatFile()] });
    const d = await SmtpTalk.connect(p.port);
    try {
      await d.cmd('EHLO client.example.net');
      const r = await d.cmd('MAIL FROM:<alice@example.test>');
      assert.equal(r.code, 530);
      assert.equal(r.enhanced, '5.7.0');
      assert.equal((await d.cmd(plain('alice', 'alice pw'))).code, 235);
      assert.equal((await d.cmd('MAIL FROM:<alice@example.test>')).code, 250);
    } finally {
      d.destroy();
    }
  });
});

describe('in front of Postfix: the login reaches the MTA (XCLIENT LOGIN)', () => {
  let pf: PostfixInstance;
  let p: TestProxy;
  let afterPort: number;

  before(async () => {
    afterPort = await freePort();
    pf = createPostfix({ publicPort: await freePort(), afterPort, mailboxes: ['rcpt@example.test'] });
    await pf.start();
    // SASL on in the after-filter smtpd: only then does Postfix take XCLIENT LOGIN (it offers LOGIN in
    // its XCLIENT line) and record it (sasl_username, Received "Authenticated sender").
    const service = `127.0.0.1:${afterPort}/inet`;
    const conf = spawnSync(
      'postconf',
      ['-c', pf.configDir, '-P', `${service}/smtpd_sasl_auth_enable=yes`, `${service}/smtpd_sasl_authenticated_header=yes`],
      { encoding: 'utf8' },
    );
    assert.equal(conf.status, 0, conf.stderr);
    const reload = spawnSync('postfix', ['-c', pf.configDir, 'reload'], { encoding: 'utf8' });
    assert.equal(reload.status, 0, reload.stderr);
    await pf.waitForLog(/reload -- version/);
    // An smtpd started before the reload may still answer: wait until the new settings are what a client sees.
    for (let i = 0; ; i++) {
      const d = await SmtpTalk.connect(afterPort);
      const e = await d.cmd('EHLO probe.example.net');
      await d.cmd('QUIT').catch(() => undefined);
      d.destroy();
      if (ehloKeywords(e).some((l) => /^XCLIENT .*\bLOGIN\b/.test(l))) break;
      if (i >= 50) assert.fail(`the after-filter smtpd never offered XCLIENT LOGIN: ${JSON.stringify(e)}`);
      await sleep(200);
    }
    p = await proxy({
      tls: tlsConfig(),
      auth: fastBrake(),
      downstream: { address: `127.0.0.1:${afterPort}`, xclient: true, pool: { max_idle: 0 } },
      plugins: [flatFile()],
    });
  });

  after(async () => {
    await pf?.stop();
  });

  test('swaks logs in over STARTTLS; Postfix logs sasl_username and writes its own Authenticated sender', async () => {
    const res = await swaks([
      '--server', `127.0.0.1:${p.port}`, '--tls', '--auth', 'LOGIN', '--auth-user', 'alice', '--auth-password', 'alice pw',
      '--from', 'alice@example.test', '--to', 'rcpt@example.test', '--helo', 'client.example.net',
    ]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const files = await pf.waitForMail('rcpt@example.test', 1);
    const text = readFileSync(files[files.length - 1]!, 'utf8');
    assert.match(text, /^Received: from client\.example\.net \(\S+ \[127\.0\.0\.1\]\)\s+\(Authenticated sender: alice\)\s+by pq\.example\.test \(prequeue\) with ESMTPSA id /m, text);
    await pf.waitForLog(/postfix\/after\/smtpd\[\d+\]: [0-9A-F]+: client=\S*\[127\.0\.0\.1\], sasl_method=XCLIENT, sasl_username=alice/);
    assert.match(text, /\(Authenticated sender: alice\)\n\s+by mx\.example\.test \(Postfix\)/, "Postfix's own header names the login too");
  });
});

describe('SIGHUP serves a renewed certificate', () => {
  test('new STARTTLS sessions get the new certificate after reload', async () => {
    const first = makeTestCert(join(dir, 'c1'), 'pq.example.test');
    const second = makeTestCert(join(dir, 'c2'), 'pq.example.test');
    const keyFile = join(dir, 'live-key.pem');
    const certFile = join(dir, 'live-cert.pem');
    copyFileSync(first.key, keyFile);
    copyFileSync(first.cert, certFile);
    const port = await freePort();
    const file = writeConfig({
      mode: 'standalone',
      listen: `127.0.0.1:${port}`,
      hostname: 'pq.example.test',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      tls: { key: keyFile, cert: certFile },
    });
    const child: ChildProcess = spawn(process.execPath, [resolve(__dirname, '../../src/cli.js'), '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const waitFor = async (re: RegExp): Promise<void> => {
      const until = Date.now() + 10000;
      while (!re.test(output)) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${re}; output:\n${output}`);
        await sleep(25);
      }
    };
    const fingerprint = async (ca: string): Promise<string> => {
      const d = await SmtpTalk.connect(port);
      try {
        await d.cmd('EHLO client.example.net');
        const ts = await d.starttls(ca);
        return ts.getPeerCertificate().fingerprint256;
      } finally {
        d.destroy();
      }
    };
    try {
      await waitFor(/listening on 127\.0\.0\.1:\d+/);
      assert.equal(await fingerprint(first.ca), first.fingerprint);
      copyFileSync(second.key, keyFile);
      copyFileSync(second.cert, certFile);
      child.kill('SIGHUP');
      await waitFor(/configuration reloaded/);
      assert.equal(await fingerprint(second.ca), second.fingerprint, 'the renewed certificate is served');
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, output);
    }
  });
});
