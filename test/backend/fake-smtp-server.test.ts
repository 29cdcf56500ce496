import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { FakeSmtpServer, unstuff } from '../helpers/fake-smtp-server';

/** A bare client: send bytes, collect what the server says until `until` matches. */
async function talk(port: number, send: string[], until: RegExp): Promise<string> {
  const sock = net.connect({ host: '127.0.0.1', port });
  let got = '';
  const done = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout; got ${JSON.stringify(got)}`)), 2000);
    sock.on('data', (d) => {
      got += d.toString('latin1');
      if (until.test(got)) {
        clearTimeout(timer);
        resolve(got);
      }
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    sock.on('error', reject);
  });
  await new Promise((r) => sock.once('connect', r));
  for (const s of send) sock.write(s);
  const out = await done;
  sock.destroy();
  return out;
}

describe('FakeSmtpServer (test helper)', () => {
  it('answers a pipelined transaction like Postfix and records it', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      const out = await talk(
        srv.port,
        [
          'EHLO c\r\nXFORWARD ADDR=192.0.2.1\r\nMAIL FROM:<a@b> SIZE=5\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n',
          '..one\r\n.',
          '.\r\n.\r\nQUIT\r\n',
        ],
        /221 /,
      );
      assert.match(out, /^220 fake\.smtp\.test ESMTP fake\r\n250-fake\.smtp\.test\r\n250-PIPELINING\r\n/);
      assert.match(out, /250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n/);
      assert.doesNotMatch(out, /STARTTLS/, 'no STARTTLS without a certificate');
      assert.match(out, /354 End data.*\r\n250 2\.0\.0 Ok: queued as FAKE1\r\n221 2\.0\.0 Bye\r\n$/s);
      assert.equal(srv.connections, 1);
      assert.equal(srv.messages.length, 1);
      const m = srv.messages[0];
      assert.equal(m.mailFrom, '<a@b> SIZE=5');
      assert.deepEqual(m.rcptTo, ['<c@d>', '<e@f>']);
      assert.deepEqual(m.xforward, ['XFORWARD ADDR=192.0.2.1']);
      assert.equal(m.data.toString(), '.one\r\n.\r\n');
      assert.equal(m.rawData.toString(), '..one\r\n..\r\n.\r\n');
      assert.deepEqual(srv.commands, [
        'EHLO c',
        'XFORWARD ADDR=192.0.2.1',
        'MAIL FROM:<a@b> SIZE=5',
        'RCPT TO:<c@d>',
        'RCPT TO:<e@f>',
        'DATA',
        'QUIT',
      ]);
    } finally {
      await srv.close();
    }
  });

  it('enforces command order with 503 replies', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      const out = await talk(srv.port, ['MAIL FROM:<a@b>\r\nHELO c\r\nRCPT TO:<x@y>\r\nDATA\r\nBOGUS\r\nQUIT\r\n'], /221 /);
      const replies = out.split('\r\n').slice(1, -1);
      assert.deepEqual(replies, [
        '503 5.5.1 Error: send HELO/EHLO first',
        '250 fake.smtp.test',
        '503 5.5.1 Error: need MAIL command',
        '503 5.5.1 Error: need RCPT command',
        '502 5.5.2 Error: command not recognized',
        '221 2.0.0 Bye',
      ]);
    } finally {
      await srv.close();
    }
  });

  it('drops the connection after N bytes of message data and keeps what arrived', async () => {
    const srv = await FakeSmtpServer.start({ script: { data: 'close-mid-data', closeMidDataAfter: 7 } });
    try {
      const out = await talk(srv.port, ['HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\n', 'abcdefghij\r\n.\r\n'], /$^/);
      assert.match(out, /354 /);
      assert.doesNotMatch(out, /queued/);
      await srv.sessions[0].whenClosed();
      assert.equal(srv.sessions[0].closedBy, 'server');
      assert.equal(srv.sessions[0].partialData?.toString(), 'abcdefg');
      assert.equal(srv.messages.length, 0);
    } finally {
      await srv.close();
    }
  });

  it('delays a reply and can close after it; scripts can change between connections', async () => {
    const srv = await FakeSmtpServer.start({ script: { helo: { reply: '250 slow', delayMs: 150 } } });
    try {
      const t0 = Date.now();
      const out = await talk(srv.port, ['HELO c\r\n'], /250 slow/);
      assert.ok(Date.now() - t0 >= 140);
      assert.match(out, /250 slow\r\n$/);
      srv.script = { greeting: { reply: '421 4.3.2 go away', thenClose: true } };
      const out2 = await talk(srv.port, [], /$^/);
      assert.equal(out2, '421 4.3.2 go away\r\n');
      assert.equal(srv.connections, 2);
    } finally {
      await srv.close();
    }
  });

  it('unstuff() removes exactly one leading dot per line', () => {
    assert.equal(unstuff(Buffer.from('..a\r\n...b\r\nc..\r\n..\r\n')).toString(), '.a\r\n..b\r\nc..\r\n.\r\n');
  });
});
