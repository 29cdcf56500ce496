/**
 * Proves test/helpers/postfix.ts: a private Postfix instance really delivers,
 * behaves like an MX (no relaying), and, with filterPort, hands the transaction to
 * a before-queue filter the way SMTPD_PROXY_README describes. Needs root and an
 * installed postfix + swaks; it fails (never skips) without them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { spawnSync } from 'node:child_process';
import { createPostfix, freePort, swaks, type PostfixInstance } from '../helpers/postfix';

const ALICE = 'alice@example.test';

/** Reads whole SMTP replies (all continuation lines) off a socket, one at a time. */
class SmtpClient {
  private buf = '';
  private waiters: (() => void)[] = [];
  private closed = false;
  constructor(readonly sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  static connect(port: number): Promise<SmtpClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(new SmtpClient(s)));
      s.once('error', reject);
    });
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  async reply(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\n/.exec(this.buf);
      if (m) {
        this.buf = this.buf.slice(m[0].length);
        return m[0].replace(/\r\n/g, '\n').trimEnd();
      }
      if (this.closed) throw new Error(`connection closed while waiting for a reply (have ${JSON.stringify(this.buf)})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no SMTP reply within ${timeoutMs} ms (have ${JSON.stringify(this.buf)})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
  async cmd(line: string): Promise<string> {
    this.sock.write(line + '\r\n');
    return this.reply();
  }
  close(): void {
    this.sock.destroy();
  }
}

/**
 * Just enough of an SMTP server to stand where prequeue will: advertises XFORWARD
 * with every attribute, records each command line, and answers with texts of its
 * own so the test can tell its replies from Postfix's; refuses bob@.
 */
function startSink(): Promise<{ server: net.Server; port: number; lines: string[]; messages: string[]; connections: () => number }> {
  const lines: string[] = [];
  const messages: string[] = [];
  let connections = 0;
  let queued = 0;
  const server = net.createServer((sock) => {
    connections++;
    // Postfix closes right after QUIT without reading our 221.
    sock.on('error', () => undefined);
    sock.setEncoding('latin1');
    let buf = '';
    let inData = false;
    let message = '';
    const send = (s: string) => {
      if (!sock.destroyed) sock.write(s.replace(/\n/g, '\r\n') + '\r\n');
    };
    send('220 sink.example.test ESMTP test sink');
    sock.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            messages.push(message);
            message = '';
            send(`250 2.0.0 Ok: queued as SINK${++queued}`);
          } else {
            message += line + '\r\n';
          }
          continue;
        }
        lines.push(line);
        const verb = line.split(/[ :]/, 1)[0]!.toUpperCase();
        switch (verb) {
          case 'EHLO':
            send('250-sink.example.test\n250-PIPELINING\n250-8BITMIME\n250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\n250 SMTPUTF8');
            break;
          case 'XFORWARD':
            send('250 2.0.0 Ok');
            break;
          case 'MAIL':
            send('250 2.1.0 sink: sender ok');
            break;
          case 'RCPT':
            send(/<bob@/i.test(line) ? '550 5.7.1 sink: bob refused' : '250 2.1.5 sink: recipient ok');
            break;
          case 'DATA':
            inData = true;
            send('354 sink: go ahead');
            break;
          case 'RSET':
          case 'NOOP':
            send('250 2.0.0 Ok');
            break;
          case 'QUIT':
            send('221 2.0.0 Bye');
            sock.end();
            break;
          default:
            send('502 5.5.2 sink: not implemented');
        }
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address() as net.AddressInfo;
      resolve({ server, port: addr.port, lines, messages, connections: () => connections });
    });
  });
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function portRefuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });
}

test('private instance without a proxy filter: delivers to the virtual maildir, refuses relaying', { timeout: 30_000 }, async () => {
  const publicPort = await freePort();
  const afterPort = await freePort();
  const pf: PostfixInstance = createPostfix({ publicPort, afterPort, mailboxes: [ALICE, 'bob@example.test'] });
  try {
    await pf.start();

    const check = spawnSync('postfix', ['-c', pf.configDir, 'check'], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` },
    });
    assert.equal(check.status, 0, `postfix check failed: ${check.stdout}${check.stderr}`);
    assert.equal((check.stdout + check.stderr).trim(), '', 'postfix check must not warn');
    // With maillog_file set, check's warnings go to the maillog only (exit 0):
    // the warning scan at the end of this test is what catches them.

    const ok = await swaks([
      '--server', `127.0.0.1:${publicPort}`,
      '--helo', 'client.example.net',
      '--from', 'sender@example.net',
      '--to', ALICE,
      '--header', 'Subject: harness delivery',
      '--body', 'hello from the harness test',
    ]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /<- +250 2\.0\.0 Ok: queued as [0-9A-F]+/);

    const [file] = await pf.waitForMail(ALICE, 1);
    const msg = fs.readFileSync(file!, 'utf8');
    assert.match(msg, /^Subject: harness delivery$/m);
    assert.match(msg, /hello from the harness test/);
    assert.match(msg, /^Received: from client\.example\.net \(unknown \[127\.0\.0\.1\]\)\n\tby mx\.example\.test \(Postfix\) with ESMTP/m);
    assert.equal(pf.maildirFiles('bob@example.test').length, 0);

    const relay = await swaks(['--server', `127.0.0.1:${publicPort}`, '--from', 'sender@example.net', '--to', 'someone@elsewhere.example']);
    assert.notEqual(relay.code, 0);
    assert.match(relay.stdout, /<\*\* +554 5\.7\.1 <someone@elsewhere\.example>: Relay access denied/);

    // The public smtpd rejects unknown users itself: behind a proxy filter they never reach it.
    const unknown = await swaks(['--server', `127.0.0.1:${publicPort}`, '--from', 'sender@example.net', '--to', 'carol@example.test']);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stdout, /<\*\* +550 5\.1\.1 <carol@example\.test>: Recipient address rejected: User unknown in virtual mailbox table/);

    await pf.waitForLog(/postfix\/virtual\[\d+\]: [0-9A-F]+: to=<alice@example\.test>, relay=virtual.*status=sent \(delivered to maildir\)/);
    await waitFor(() => pf.queueIsEmpty(), 5000, 'an empty queue');
    const noise = pf.log().split('\n').filter((l) => /\b(warning|fatal|panic|error):/.test(l));
    assert.deepEqual(noise, [], 'the instance (or postfix check) logged warnings');
    // The readiness probe says QUIT instead of dropping the connection.
    assert.doesNotMatch(pf.log(), /lost connection after CONNECT/);
  } finally {
    await pf.stop();
  }
  await pf.stop();
  assert.equal(fs.existsSync(pf.dir), false, 'instance dir must be removed');
  assert.ok(await portRefuses(publicPort), 'public port still open after stop');
  assert.ok(await portRefuses(afterPort), 'after-filter port still open after stop');
  assert.match(pf.log(), /postfix\/public\/smtpd/, 'log() keeps the maillog after stop');
});

test('with filterPort: Postfix contacts the filter at the first accepted RCPT with EHLO, XFORWARD, MAIL, RCPT', { timeout: 30_000 }, async () => {
  const sink = await startSink();
  const publicPort = await freePort();
  const afterPort = await freePort();
  const pf = createPostfix({ publicPort, afterPort, filterPort: sink.port, mailboxes: [ALICE, 'bob@example.test'] });
  let client: SmtpClient | undefined;
  try {
    await pf.start();
    // The readiness probe must not have reached the filter.
    assert.equal(sink.connections(), 0);

    client = await SmtpClient.connect(publicPort);
    assert.match(await client.reply(), /^220 mx\.example\.test ESMTP/);
    assert.match(await client.cmd('EHLO client.example.net'), /^250-mx\.example\.test/);
    assert.equal(await client.cmd('MAIL FROM:<sender@example.net>'), '250 2.1.0 Ok');
    assert.equal(sink.connections(), 0, 'Postfix must not contact the filter before the first RCPT');

    // Rejected by the public smtpd itself, so never forwarded.
    assert.match(await client.cmd('RCPT TO:<nobody@elsewhere.example>'), /^554 5\.7\.1 .*Relay access denied/);
    assert.equal(sink.connections(), 0);

    // A 2xx from the filter is not relayed: the client gets Postfix's own text.
    assert.equal(await client.cmd('RCPT TO:<alice@example.test>'), '250 2.1.5 Ok');
    assert.equal(sink.connections(), 1);
    const clientPort = client.sock.localPort!;
    assert.equal(sink.lines.length, 4, sink.lines.join('\n'));
    assert.equal(sink.lines[0], 'EHLO mx.example.test');
    assert.equal(
      sink.lines[1],
      `XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=${clientPort} HELO=client.example.net IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=LOCAL`,
    );
    assert.equal(sink.lines[2], 'MAIL FROM:<sender@example.net>');
    assert.equal(sink.lines[3], 'RCPT TO:<alice@example.test>');

    // A filter's refusal is relayed word for word.
    assert.equal(await client.cmd('RCPT TO:<bob@example.test>'), '550 5.7.1 sink: bob refused');
    assert.equal(sink.lines[4], 'RCPT TO:<bob@example.test>');

    assert.equal(await client.cmd('DATA'), '354 End data with <CR><LF>.<CR><LF>');
    client.sock.write('Subject: through the sink\r\n\r\n..leading dot\r\nbody\r\n.\r\n');
    // The filter's end-of-data reply does reach the client.
    assert.equal(await client.reply(), '250 2.0.0 Ok: queued as SINK1');
    assert.equal(await client.cmd('QUIT'), '221 2.0.0 Bye');
    client.close();

    await waitFor(() => sink.lines.includes('QUIT'), 5000, 'QUIT at the sink');
    assert.deepEqual(sink.lines.slice(5), ['DATA', 'QUIT']);
    assert.equal(sink.messages.length, 1);
    assert.match(sink.messages[0]!, /^Received: from client\.example\.net \(unknown \[127\.0\.0\.1\]\)\r\n\tby mx\.example\.test \(Postfix\) with ESMTP/);
    assert.match(sink.messages[0]!, /\r\n\.\.leading dot\r\n/, 'dot-stuffing is kept on the way to the filter');
    assert.equal(pf.maildirFiles(ALICE).length, 0, 'the sink swallowed it; nothing reaches the after-filter');

    // Filter down: the client gets Postfix's generic 451 at the RCPT that needs the filter.
    await new Promise<void>((r) => sink.server.close(() => r()));
    client = await SmtpClient.connect(publicPort);
    await client.reply();
    await client.cmd('EHLO client.example.net');
    assert.equal(await client.cmd('MAIL FROM:<sender@example.net>'), '250 2.1.0 Ok');
    assert.equal(await client.cmd('RCPT TO:<alice@example.test>'), '451 4.3.0 Error: queue file write error');
    await client.cmd('QUIT');
    client.close();
    const why = await pf.waitForLog(new RegExp(`postfix/public/smtpd\\[\\d+\\]: warning: connect to proxy filter 127\\.0\\.0\\.1:${sink.port}: Connection refused`));
    assert.ok(why);
  } finally {
    client?.close();
    sink.server.close();
    await pf.stop();
  }
});
