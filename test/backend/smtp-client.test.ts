import assert from 'node:assert/strict';
import net from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { ReplyParser, SmtpClient, SmtpClientError, type SmtpClientOptions } from '../../src/backend/smtp-client';
import type { Reply } from '../../src/smtp/reply';
import { FakeSmtpServer, selfSignedCert, type FakeSmtpServerOptions } from '../helpers/fake-smtp-server';

async function withServer(opts: FakeSmtpServerOptions, fn: (srv: FakeSmtpServer) => Promise<void>): Promise<void> {
  const srv = await FakeSmtpServer.start(opts);
  try {
    await fn(srv);
  } finally {
    await srv.close();
  }
}

function connect(srv: FakeSmtpServer, extra: Partial<SmtpClientOptions> = {}): Promise<SmtpClient> {
  return SmtpClient.connect({ host: srv.host, port: srv.port, ...extra });
}

/** Up to DATA's 354 in one go. */
async function openTransaction(c: SmtpClient, rcpts = ['<rcpt@example.test>']): Promise<void> {
  assert.equal((await c.ehlo('proxy.example.test')).code, 250);
  assert.equal((await c.mail('<sender@example.net>')).code, 250);
  for (const r of rcpts) assert.equal((await c.rcpt(r)).code, 250);
  assert.equal((await c.data()).code, 354);
}

describe('ReplyParser', () => {
  function parseAll(chunks: (string | Buffer)[]): Reply[] {
    const out: Reply[] = [];
    const p = new ReplyParser((r) => out.push(r));
    for (const c of chunks) p.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
    return out;
  }

  it('parses a multi-line reply split at every byte', () => {
    const wire = '250-mx.example.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n';
    for (let cut = 0; cut <= wire.length; cut++) {
      const replies = parseAll([wire.slice(0, cut), wire.slice(cut)]);
      assert.deepEqual(replies, [{ code: 250, enhanced: undefined, lines: ['mx.example.test', 'SIZE 1000', '8BITMIME'] }], `cut ${cut}`);
    }
  });

  it('parses several replies in one packet, bare LF line ends and a code-only line', () => {
    const replies = parseAll(['250 2.1.0 Ok\r\n550-5.1.1 no such\n550 5.1.1 user\r\n354\r\n']);
    assert.deepEqual(replies, [
      { code: 250, enhanced: '2.1.0', lines: ['Ok'] },
      { code: 550, enhanced: '5.1.1', lines: ['no such', 'user'] },
      { code: 354, enhanced: undefined, lines: [''] },
    ]);
  });

  it('keeps 8-bit reply text as UTF-8', () => {
    assert.deepEqual(parseAll([Buffer.from('250 h\xc3\xa9\r\n', 'latin1')])[0].lines, ['hé']);
  });

  it('rejects garbage, a code change inside a multi-line reply and over-long lines', () => {
    assert.throws(() => parseAll(['hello world\r\n']), /malformed reply line/);
    assert.throws(() => parseAll(['199 too low\r\n']), /malformed reply line/);
    assert.throws(() => parseAll(['250-a\r\n251 b\r\n']), /reply code changed/);
    assert.throws(() => parseAll(['250 ' + 'x'.repeat(5000) + '\r\n']), /longer than 4096/);
    // Without a line end in sight, too.
    assert.throws(() => parseAll(['250 ' + 'x'.repeat(3000), 'x'.repeat(3000)]), /longer than 4096/);
    assert.doesNotThrow(() => parseAll(['250 ' + 'x'.repeat(4092) + '\r\n']));
  });
});

describe('SmtpClient against the fake server', () => {
  it('runs a full transaction and the server receives exactly what was sent', async () => {
    await withServer({}, async (srv) => {
      const log: string[] = [];
      const c = await connect(srv, { log: (d, l) => log.push(`${d} ${l}`) });
      assert.equal(c.greeting.code, 220);
      const ehlo = await c.ehlo('proxy.example.test');
      assert.equal(ehlo.code, 250);
      const xf = await c.xforward({ NAME: '[UNAVAILABLE]', ADDR: '192.0.2.1', PORT: '4321', HELO: 'client.example', PROTO: 'ESMTP' });
      assert.equal(xf.code, 250);
      assert.deepEqual(await c.mail('<sender@example.net> SIZE=10 BODY=8BITMIME'), { code: 250, enhanced: '2.1.0', lines: ['Ok'] });
      assert.equal((await c.rcpt('<a@example.test> NOTIFY=NEVER')).code, 250);
      assert.equal((await c.rcpt('<b@example.test>')).code, 250);
      assert.equal((await c.data()).code, 354);
      const eod = await c.sendMessage(Readable.from([Buffer.from('Subject: hi\r\n\r\nbody\r\n')]));
      assert.equal(eod.code, 250);
      assert.match(eod.lines[0], /queued as FAKE1/);
      await c.quit();
      assert.equal(c.closed, true);

      assert.equal(srv.messages.length, 1);
      const m = srv.messages[0];
      assert.equal(m.mailFrom, '<sender@example.net> SIZE=10 BODY=8BITMIME');
      assert.deepEqual(m.rcptTo, ['<a@example.test> NOTIFY=NEVER', '<b@example.test>']);
      assert.deepEqual(m.xforward, ['XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.1 PORT=4321 HELO=client.example PROTO=ESMTP']);
      assert.equal(m.helo, 'proxy.example.test');
      assert.equal(m.data.toString(), 'Subject: hi\r\n\r\nbody\r\n');
      assert.equal(m.rawData.toString(), 'Subject: hi\r\n\r\nbody\r\n.\r\n');
      const s = srv.sessions[0];
      assert.deepEqual(s.lines, [
        'EHLO proxy.example.test',
        'XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.1 PORT=4321 HELO=client.example PROTO=ESMTP',
        'MAIL FROM:<sender@example.net> SIZE=10 BODY=8BITMIME',
        'RCPT TO:<a@example.test> NOTIFY=NEVER',
        'RCPT TO:<b@example.test>',
        'DATA',
        'QUIT',
      ]);
      await s.whenClosed();
      assert.ok(log.includes('C MAIL FROM:<sender@example.net> SIZE=10 BODY=8BITMIME'));
      assert.ok(log.includes('S 250 2.1.0 Ok'));
      assert.ok(!log.some((l) => l.includes('Subject: hi')), 'message content is not logged');
    });
  });

  it('parses a multi-line EHLO reply into capabilities', async () => {
    await withServer({ script: { ehlo: ['pipelining', 'SIZE 35882577', 'AUTH PLAIN LOGIN', 'XFORWARD NAME ADDR', '8BITMIME'] } }, async (srv) => {
      const c = await connect(srv);
      const r = await c.ehlo('me');
      assert.equal(r.lines.length, 6);
      assert.deepEqual(
        [...c.capabilities],
        [
          ['PIPELINING', ''],
          ['SIZE', '35882577'],
          ['AUTH', 'PLAIN LOGIN'],
          ['XFORWARD', 'NAME ADDR'],
          ['8BITMIME', ''],
        ],
      );
      c.close();
    });
  });

  it('falls back to HELO when EHLO gets a 5xx, and not on a 4xx', async () => {
    await withServer({ script: { ehlo: '502 5.5.2 Error: command not recognized' } }, async (srv) => {
      const c = await connect(srv);
      const r = await c.ehlo('proxy.example.test');
      assert.deepEqual(r, { code: 250, enhanced: undefined, lines: ['fake.smtp.test'] });
      assert.equal(c.capabilities.size, 0);
      assert.deepEqual(srv.sessions[0].lines, ['EHLO proxy.example.test', 'HELO proxy.example.test']);
      assert.equal((await c.mail('<a@b>')).code, 250, 'the session is usable after HELO');
      c.close();
    });
    await withServer({ script: { ehlo: '421 4.3.2 shutting down' } }, async (srv) => {
      const c = await connect(srv);
      assert.equal((await c.ehlo('x')).code, 421);
      assert.deepEqual(srv.sessions[0].lines, ['EHLO x']);
      c.close();
    });
  });

  it('returns 4xx/5xx replies at MAIL, RCPT, DATA and end of data as Replies', async () => {
    await withServer(
      {
        script: {
          mail: (arg) => (arg.includes('tempfail') ? '451 4.3.0 try later' : undefined),
          rcpt: (arg) => (arg.includes('unknown') ? '550 5.1.1 <unknown@example.test>: Recipient address rejected' : undefined),
        },
      },
      async (srv) => {
        const c = await connect(srv);
        await c.ehlo('me');
        assert.deepEqual(await c.mail('<tempfail@example.net>'), { code: 451, enhanced: '4.3.0', lines: ['try later'] });
        assert.equal((await c.mail('<ok@example.net>')).code, 250);
        const r = await c.rcpt('<unknown@example.test>');
        assert.equal(r.code, 550);
        assert.equal(r.enhanced, '5.1.1');
        assert.equal((await c.rcpt('<known@example.test>')).code, 250);
        assert.equal(c.closed, false);
        c.close();
      },
    );
    await withServer({ script: { data: '554 5.5.1 Error: no valid recipients' } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      assert.equal((await c.data()).code, 554);
      // Not in DATA: the next command is a command, not message content.
      assert.equal((await c.rset()).code, 250);
      c.close();
    });
    await withServer({ script: { eod: '550-5.7.1 message content rejected\n550 5.7.1 see policy' } }, async (srv) => {
      const c = await connect(srv);
      await openTransaction(c);
      const r = await c.sendMessage(Readable.from([Buffer.from('x\r\n')]));
      assert.deepEqual(r, { code: 550, enhanced: '5.7.1', lines: ['message content rejected', 'see policy'] });
      assert.equal((await c.rset()).code, 250, 'the connection is still usable');
      await c.quit();
    });
  });

  it('sends only advertised XFORWARD attributes, split under 512 characters, and stops at the first refusal', async () => {
    await withServer({ script: { ehlo: ['XFORWARD NAME HELO ADDR'] } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      const r = await c.xforward({ NAME: 'n'.repeat(250), ADDR: '2001:db8::1', PORT: '25', HELO: 'h'.repeat(250), SOURCE: 'REMOTE' });
      assert.equal(r.code, 250);
      const lines = srv.sessions[0].lines.filter((l) => l.startsWith('XFORWARD'));
      assert.equal(lines.length, 2);
      for (const l of lines) assert.ok(l.length + 2 <= 512);
      assert.ok(lines.join(' ').includes('ADDR=IPV6:2001:db8::1'));
      assert.ok(!lines.join(' ').match(/PORT=|SOURCE=/));
      c.close();
    });
    let n = 0;
    await withServer({ script: { xforward: () => (++n === 1 ? '550 5.7.0 not authorized' : undefined) } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      const r = await c.xforward({ NAME: 'n'.repeat(250), HELO: 'h'.repeat(250) });
      assert.equal(r.code, 550);
      assert.equal(srv.sessions[0].lines.filter((l) => l.startsWith('XFORWARD')).length, 1);
      c.close();
    });
  });

  it('sends no XFORWARD when the server does not advertise it', async () => {
    await withServer({ script: { ehlo: ['PIPELINING'] } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      const r = await c.xforward({ NAME: 'x', ADDR: '192.0.2.1' });
      assert.equal(r.code, 250);
      assert.deepEqual(srv.sessions[0].lines, ['EHLO me']);
      c.close();
    });
  });

  it('sends XCLIENT, takes the 220 re-greeting, and EHLO works again', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('proxy');
      const r = await c.xclient({ ADDR: '192.0.2.9', NAME: 'client.example', HELO: 'client-helo', PROTO: 'ESMTP', DESTADDR: '10.0.0.1' });
      assert.equal(r.code, 220);
      assert.equal(c.capabilities.size, 0, 'capabilities are stale after XCLIENT until the next EHLO');
      assert.deepEqual(srv.sessions[0].xclient, ['XCLIENT HELO=client-helo PROTO=ESMTP NAME=client.example ADDR=192.0.2.9']);
      assert.equal((await c.mail('<a@b>')).code, 503, 'the fake server wants EHLO again, like Postfix');
      await c.ehlo('client-helo');
      assert.ok(c.capabilities.has('XFORWARD'));
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      assert.equal((await c.sendMessage(Readable.from([Buffer.from('hi\r\n')]))).code, 250);
      assert.equal(srv.messages[0].helo, 'client-helo');
      assert.equal(srv.messages[0].xclient.length, 1);
      await c.quit();
    });
  });

  it('returns a refused XCLIENT as a Reply', async () => {
    await withServer({ script: { xclient: '550 5.7.0 Error: insufficient authorization' } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('proxy');
      assert.equal((await c.xclient({ ADDR: '192.0.2.9' })).code, 550);
      assert.ok(c.capabilities.has('XCLIENT'), 'the session was not reset');
      c.close();
    });
  });

  it('upgrades with STARTTLS, then EHLO again over TLS', async () => {
    await withServer({ tls: selfSignedCert() }, async (srv) => {
      const c = await connect(srv, { tls: { rejectUnauthorized: false } });
      await c.ehlo('proxy');
      assert.ok(c.capabilities.has('STARTTLS'));
      const r = await c.starttls();
      assert.equal(r.code, 220);
      assert.equal(c.secure, true);
      assert.equal(c.capabilities.size, 0);
      await c.ehlo('proxy');
      assert.ok(!c.capabilities.has('STARTTLS'), 'no STARTTLS once TLS is on');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      assert.equal((await c.sendMessage(Readable.from([Buffer.from('.secret\r\n')]))).code, 250);
      await c.quit();
      assert.equal(srv.messages[0].tls, true);
      assert.equal(srv.messages[0].data.toString(), '.secret\r\n');
      assert.deepEqual(srv.sessions[0].lines, ['EHLO proxy', 'STARTTLS', 'EHLO proxy', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>', 'DATA', 'QUIT']);
    });
  });

  it('fails STARTTLS with kind tls when the certificate is not trusted', async () => {
    await withServer({ tls: selfSignedCert() }, async (srv) => {
      const c = await connect(srv, { tls: { servername: 'localhost' } });
      await c.ehlo('proxy');
      await assert.rejects(c.starttls(), (e: unknown) => e instanceof SmtpClientError && e.kind === 'tls' && e.stage === 'starttls');
      assert.equal(c.closed, true);
      await srv.sessions[0].whenClosed();
    });
  });

  it('returns a refused STARTTLS as a Reply', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('proxy');
      assert.equal((await c.starttls()).code, 502);
      assert.equal(c.secure, false);
      assert.equal((await c.mail('<a@b>')).code, 250);
      c.close();
    });
  });

  it('relays 8-bit bytes, a 990-character line starting with a dot and lines of just a dot byte-exactly', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await openTransaction(c);
      const msg = Buffer.concat([
        Buffer.from('Subject: =?x?= 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
        Buffer.from([0xe9, 0xff, 0x00, 0x80, 0x0d, 0x0a]),
        Buffer.from('.' + 'd'.repeat(989) + '\r\n'),
        Buffer.from('.\r\n.\r\n..\r\n\r\n.\r\nend\r\n'),
      ]);
      // Split in awkward places, including between CR and LF and right before a dot.
      const cuts = [5, 60, 61, 62, 300, msg.length - 12, msg.length - 11, msg.length - 1];
      const chunks = [0, ...cuts].map((start, i) => msg.subarray(start, cuts[i] ?? msg.length));
      assert.deepEqual(Buffer.concat(chunks), msg);
      assert.equal((await c.sendMessage(Readable.from(chunks))).code, 250);
      await c.quit();
      const m = srv.messages[0];
      assert.deepEqual(m.data, msg);
      assert.ok(m.rawData.includes(Buffer.from('\r\n..' + 'd'.repeat(989) + '\r\n')));
      assert.ok(m.rawData.includes(Buffer.from('\r\n..\r\n..\r\n...\r\n\r\n..\r\nend\r\n.\r\n')));
    });
  });

  it('adds CRLF to a message that does not end with one, and handles an empty message', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await openTransaction(c);
      assert.equal((await c.sendMessage(Readable.from([Buffer.from('no newline at end')]))).code, 250);
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      assert.equal((await c.sendMessage(Readable.from([] as Buffer[]))).code, 250);
      await c.quit();
      assert.equal(srv.messages[0].rawData.toString(), 'no newline at end\r\n.\r\n');
      assert.equal(srv.messages[0].data.toString(), 'no newline at end\r\n');
      assert.equal(srv.messages[1].rawData.toString(), '.\r\n');
      assert.equal(srv.messages[1].data.length, 0);
    });
  });

  it('writes a small message and the final dot in one write', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await openTransaction(c);
      // Several chunks arriving in separate ticks still leave in one write.
      const body = new PassThrough();
      const sent = c.sendMessage(body);
      body.write('Subject: x\r\n');
      await new Promise((r) => setImmediate(r));
      body.write('\r\n');
      await new Promise((r) => setImmediate(r));
      body.end('.hello\r\n');
      assert.equal((await sent).code, 250);
      await c.quit();
      assert.equal(srv.messages[0].data.toString(), 'Subject: x\r\n\r\n.hello\r\n');
      assert.equal(srv.messages[0].reads, 1, 'message and terminator arrived in one read');
    });
  });

  it('streams a 5 MB message with backpressure and it arrives intact', async () => {
    await withServer({}, async (srv) => {
      const c = await connect(srv);
      await openTransaction(c);
      const line = Buffer.from('.' + 'x'.repeat(76) + '\r\n'); // every line needs stuffing
      const lines = Math.ceil((5 * 1024 * 1024) / line.length);
      const chunkLines = 500;
      async function* gen(): AsyncGenerator<Buffer> {
        for (let i = 0; i < lines; i += chunkLines) {
          yield Buffer.concat(Array.from({ length: Math.min(chunkLines, lines - i) }, () => line));
        }
      }
      const t0 = Date.now();
      assert.equal((await c.sendMessage(Readable.from(gen()))).code, 250);
      const ms = Date.now() - t0;
      await c.quit();
      const m = srv.messages[0];
      assert.equal(m.data.length, lines * line.length);
      assert.equal(m.rawData.length, lines * (line.length + 1) + 3);
      assert.ok(m.data.subarray(0, line.length).equals(line) && m.data.subarray(-line.length).equals(line));
      assert.ok(ms < 5000, `took ${ms} ms`);
    });
  });

  it('relays a server-initiated 421 sent together with the greeting as the answer to the next command', async () => {
    await withServer({ script: { greeting: '220 fake ready\n421 4.4.2 fake shutting down' } }, async (srv) => {
      const c = await connect(srv);
      assert.equal(c.greeting.code, 220);
      const r = await c.ehlo('me');
      assert.equal(r.code, 421);
      assert.equal(c.closed, true);
      await srv.sessions[0].whenClosed();
      assert.deepEqual(srv.sessions[0].lines, [], 'nothing was sent after the 421');
    });
  });

  it('refuses commands with CR or LF, and a second command while one is running', async () => {
    await withServer({ script: { mail: { reply: '250 2.1.0 Ok', delayMs: 50 } } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      await assert.rejects(c.mail('<a@b>\r\nRCPT TO:<evil@x>'), (e: unknown) => e instanceof SmtpClientError && e.kind === 'protocol');
      const first = c.mail('<a@b>');
      await assert.rejects(c.rcpt('<c@d>'), /in progress/);
      assert.equal((await first).code, 250);
      assert.deepEqual(srv.sessions[0].lines, ['EHLO me', 'MAIL FROM:<a@b>']);
      c.close();
    });
  });

  it('emits close and rejects later commands when the server goes away between commands', async () => {
    await withServer({ script: { mail: { reply: '250 2.1.0 Ok', thenClose: true } } }, async (srv) => {
      const c = await connect(srv);
      await c.ehlo('me');
      const closed = new Promise<void>((r) => c.once('close', r));
      assert.equal((await c.mail('<a@b>')).code, 250);
      await closed;
      assert.equal(c.closed, true);
      await assert.rejects(c.rcpt('<c@d>'), (e: unknown) => e instanceof SmtpClientError && e.kind === 'closed' && e.stage === 'rcpt');
    });
  });
});

describe('SmtpClient against a byte-level server', () => {
  let server: net.Server;
  let port = 0;
  let script: (sock: net.Socket) => void = () => {};
  before(async () => {
    server = net.createServer((sock) => {
      sock.on('error', () => {});
      script(sock);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  it('assembles a greeting and an EHLO reply written in tiny pieces', async () => {
    script = (sock) => {
      const pieces = ['2', '20-first\r', '\n220 second\r\n'];
      let i = 0;
      const next = (): void => {
        if (i < pieces.length) sock.write(pieces[i++], () => setTimeout(next, 10));
      };
      next();
      sock.once('data', () => {
        const ehlo = '250-mx\r\n250-SIZE 100\r\n250 8BITMIME\r\n';
        let j = 0;
        const step = (): void => {
          if (j < ehlo.length) sock.write(ehlo.slice(j, (j += 7)), () => setTimeout(step, 2));
        };
        step();
      });
    };
    const c = await SmtpClient.connect({ host: '127.0.0.1', port });
    assert.deepEqual(c.greeting, { code: 220, enhanced: undefined, lines: ['first', 'second'] });
    await c.ehlo('me');
    assert.deepEqual([...c.capabilities.keys()], ['SIZE', '8BITMIME']);
    c.close();
  });

  it('treats plaintext sent right after the 220 to STARTTLS as an injection attempt', async () => {
    script = (sock) => {
      sock.write('220 ready\r\n');
      sock.on('data', (d) => {
        if (d.toString().startsWith('EHLO')) sock.write('250-mx\r\n250 STARTTLS\r\n');
        if (d.toString().startsWith('STARTTLS')) sock.write('220 go ahead\r\n250 injected\r\n');
      });
    };
    const c = await SmtpClient.connect({ host: '127.0.0.1', port, tls: { rejectUnauthorized: false } });
    await c.ehlo('me');
    await assert.rejects(c.starttls(), (e: unknown) => e instanceof SmtpClientError && e.kind === 'protocol' && e.stage === 'starttls');
    assert.equal(c.closed, true);
  });
});
