import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { SmtpClient, SmtpClientError, type Stage } from '../../src/backend/smtp-client';
import { FakeSmtpServer, type FakeScript } from '../helpers/fake-smtp-server';

const FAST = { greeting: 200, ehlo: 200, xforward: 200, mail: 200, rcpt: 200, data: 200, message: 200, eod: 200, rset: 200, quit: 200 };

type Drive = 'greeting' | 'ehlo' | 'xforward' | 'mail' | 'rcpt' | 'data' | 'eod' | 'rset';

/** Connect and walk the client up to (and including) `stage`, returning the promise of that step. */
async function driveTo(srv: FakeSmtpServer, stage: Drive, holder: { client?: SmtpClient }): Promise<unknown> {
  const connecting = SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
  if (stage === 'greeting') return connecting;
  const c = await connecting;
  holder.client = c;
  if (stage === 'ehlo') return c.ehlo('me');
  await c.ehlo('me');
  if (stage === 'xforward') return c.xforward({ NAME: 'x', ADDR: '192.0.2.1' });
  if (stage === 'rset') return c.rset();
  await c.mail('<a@b>');
  if (stage === 'mail') return c.mail('<again@b>');
  if (stage === 'rcpt') return c.rcpt('<c@d>');
  await c.rcpt('<c@d>');
  if (stage === 'data') return c.data();
  await c.data();
  return c.sendMessage(Readable.from([Buffer.from('Subject: x\r\n\r\nbody\r\n')]));
}

function isClientError(kind: SmtpClientError['kind'], stage: Stage) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof SmtpClientError, `expected SmtpClientError, got ${String(e)}`);
    assert.equal(e.kind, kind, e.message);
    assert.equal(e.stage, stage, e.message);
    return true;
  };
}

/** The fake server scripts a failure at `stage`; for mail the second MAIL is the one that fails. */
function scriptFor(stage: Drive, action: 'hang' | 'close' | 'reset'): FakeScript {
  if (stage === 'mail') {
    let n = 0;
    return { mail: () => (++n === 2 ? action : '250 2.1.0 Ok') };
  }
  return { [stage]: action };
}

const STAGES: Drive[] = ['greeting', 'ehlo', 'xforward', 'mail', 'rcpt', 'data', 'eod', 'rset'];

describe('SmtpClient timeouts', () => {
  for (const stage of STAGES) {
    it(`times out at ${stage}, destroys the connection`, async () => {
      const srv = await FakeSmtpServer.start({ script: scriptFor(stage, 'hang') });
      try {
        const holder: { client?: SmtpClient } = {};
        const t0 = Date.now();
        await assert.rejects(driveTo(srv, stage, holder), isClientError('timeout', stage === 'eod' ? 'eod' : stage));
        const waited = Date.now() - t0;
        assert.ok(waited >= 190 && waited < 1500, `waited ${waited} ms`);
        if (holder.client) assert.equal(holder.client.closed, true);
        await srv.sessions[0].whenClosed(); // the server sees the connection go away
        assert.equal(srv.sessions[0].closedBy, 'client');
        if (holder.client) {
          await assert.rejects(holder.client.rset(), isClientError('closed', 'rset'), 'no reuse after a timeout');
        }
      } finally {
        await srv.close();
      }
    });
  }

  it('times out when the server stops reading the message (drain wait), without sending the dot', async () => {
    // A server that reads the commands, then stops reading once DATA is accepted.
    const sockets: net.Socket[] = [];
    const server = net.createServer((sock) => {
      sockets.push(sock);
      sock.on('error', () => {});
      sock.write('220 ready\r\n');
      sock.on('data', (d) => {
        const t = d.toString();
        if (t.startsWith('EHLO')) sock.write('250 ok\r\n');
        else if (t.startsWith('MAIL') || t.startsWith('RCPT')) sock.write('250 ok\r\n');
        else if (t.startsWith('DATA')) {
          sock.write('354 go\r\n');
          sock.pause();
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const c = await SmtpClient.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      const chunk = Buffer.alloc(256 * 1024, 'a');
      let produced = 0;
      // Asynchronous like a real producer (after the failure the body is left flowing; a synchronous
      // endless source would then spin).
      const body = new Readable({
        read() {
          produced++;
          setImmediate(() => this.push(chunk));
        },
      });
      await assert.rejects(c.sendMessage(body), isClientError('timeout', 'message'));
      assert.equal(c.closed, true);
      assert.ok(produced > 1);
      assert.equal(body.destroyed, false, "the caller's stream is left to the caller");
      body.destroy();
    } finally {
      // A paused socket never notices the client's FIN, so server.close() would wait for ever.
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('rejects the connect with kind connect when nothing listens', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await assert.rejects(SmtpClient.connect({ host: '127.0.0.1', port }), isClientError('connect', 'connect'));
  });
});

describe('SmtpClient when the server closes', () => {
  for (const stage of STAGES) {
    it(`reports kind closed at ${stage}`, async () => {
      const srv = await FakeSmtpServer.start({ script: scriptFor(stage, 'close') });
      try {
        const holder: { client?: SmtpClient } = {};
        await assert.rejects(driveTo(srv, stage, holder), isClientError('closed', stage));
        if (holder.client) assert.equal(holder.client.closed, true);
      } finally {
        await srv.close();
      }
    });
  }

  it('reports kind closed (with the ECONNRESET as cause) when the server resets', async () => {
    const srv = await FakeSmtpServer.start({ script: { rcpt: 'reset' } });
    try {
      const holder: { client?: SmtpClient } = {};
      await assert.rejects(driveTo(srv, 'rcpt', holder), (e: unknown) => {
        isClientError('closed', 'rcpt')(e);
        assert.equal(((e as Error).cause as NodeJS.ErrnoException | undefined)?.code, 'ECONNRESET');
        return true;
      });
    } finally {
      await srv.close();
    }
  });

  it('reports kind closed at message when the server drops in the middle of DATA', async () => {
    const srv = await FakeSmtpServer.start({ script: { data: { closeMidData: 1000 } } });
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      assert.equal((await c.data()).code, 354);
      const body = new PassThrough();
      const sending = c.sendMessage(body);
      body.write(Buffer.alloc(64 * 1024, 'm')); // more than the cork buffer: goes out at once
      await assert.rejects(sending, isClientError('closed', 'message'));
      assert.equal(c.closed, true);
      assert.equal(srv.messages.length, 0);
      assert.equal(srv.sessions[0].partialData?.length, 1000);
      // The producer can keep writing and finish: the body is drained, not destroyed.
      body.end(Buffer.alloc(256 * 1024, 'm'));
      await once(body, 'finish');
    } finally {
      await srv.close();
    }
  });

  it('reports closed at message or eod when the whole message was written before the drop', async () => {
    const srv = await FakeSmtpServer.start({ script: { eod: 'close-mid-data', closeMidDataAfter: 10 } });
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      await assert.rejects(c.sendMessage(Readable.from([Buffer.alloc(100_000, 'z')])), (e: unknown) => {
        assert.ok(e instanceof SmtpClientError && e.kind === 'closed' && (e.stage === 'message' || e.stage === 'eod'), String(e));
        return true;
      });
      assert.equal(srv.messages.length, 0);
    } finally {
      await srv.close();
    }
  });
});

describe('SmtpClient protocol errors', () => {
  async function greetingError(greeting: string): Promise<SmtpClientError> {
    const srv = await FakeSmtpServer.start({ script: { greeting } });
    try {
      const err = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST }).then(
        () => assert.fail('connect should fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof SmtpClientError);
      await srv.sessions[0].whenClosed();
      return err;
    } finally {
      await srv.close();
    }
  }

  it('rejects a non-2xx greeting, carrying the Reply, and says QUIT', async () => {
    const srv = await FakeSmtpServer.start({ script: { greeting: '554 5.3.2 fake: service unavailable' } });
    try {
      await assert.rejects(SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST }), (e: unknown) => {
        isClientError('protocol', 'greeting')(e);
        assert.deepEqual((e as SmtpClientError).reply, { code: 554, enhanced: '5.3.2', lines: ['fake: service unavailable'] });
        return true;
      });
      await srv.sessions[0].whenClosed();
      assert.deepEqual(srv.sessions[0].lines, ['QUIT']);
    } finally {
      await srv.close();
    }
  });

  it('treats a garbage greeting as a protocol error', async () => {
    const e = await greetingError('SSH-2.0-OpenSSH_9.2');
    assert.equal(e.kind, 'protocol');
    assert.equal(e.stage, 'greeting');
    assert.match(e.message, /malformed/);
  });

  it('treats a reply line over 4096 characters as a protocol error', async () => {
    const e = await greetingError('220 ' + 'x'.repeat(5000));
    assert.equal(e.kind, 'protocol');
    assert.match(e.message, /4096/);
  });

  it('treats a garbage reply to a command as a protocol error and closes', async () => {
    const srv = await FakeSmtpServer.start({ script: { rcpt: '250-ok\n251 changed code' } });
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await assert.rejects(c.rcpt('<c@d>'), isClientError('protocol', 'rcpt'));
      assert.equal(c.closed, true);
      await srv.sessions[0].whenClosed();
    } finally {
      await srv.close();
    }
  });
});

describe('SmtpClient.abort', () => {
  it('never sends the final dot: the server records no message', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      const body = new PassThrough();
      const sending = c.sendMessage(body);
      const line = Buffer.from('.\r\nline\r\n');
      body.write(Buffer.concat(Array.from({ length: 8000 }, () => line))); // lines of just "." too
      // Wait until the server has part of the message, then give up.
      const s = srv.sessions[0];
      while (s.raw.length < 20_000) await new Promise((r) => setTimeout(r, 5));
      c.abort();
      await assert.rejects(sending, isClientError('closed', 'message'));
      body.end('last line\r\n'); // the caller finishing its stream later changes nothing
      assert.equal(c.closed, true);
      await s.whenClosed();
      assert.equal(srv.messages.length, 0);
      assert.ok(!s.raw.includes('\r\n.\r\n'), 'no end-of-data sequence on the wire');
      assert.ok((s.partialData?.length ?? 0) >= 20_000 - 100);
    } finally {
      await srv.close();
    }
  });

  it('sends no dot when the message stream fails or is destroyed, and rejects with its error', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      for (const how of ['error', 'destroy'] as const) {
        const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
        await c.ehlo('me');
        await c.mail('<a@b>');
        await c.rcpt('<c@d>');
        await c.data();
        const body = new PassThrough();
        const sending = c.sendMessage(body);
        body.write('Subject: x\r\n\r\n');
        await new Promise((r) => setImmediate(r));
        if (how === 'error') body.destroy(new Error('client went away'));
        else body.destroy();
        await assert.rejects(sending, how === 'error' ? /client went away/ : /closed before its end/);
        assert.equal(c.closed, true);
      }
      for (const s of srv.sessions) {
        await s.whenClosed();
        assert.ok(!s.raw.includes('\r\n.\r\n'));
      }
      assert.equal(srv.messages.length, 0);
    } finally {
      await srv.close();
    }
  });

  it('in the middle of DATA, quit() sends nothing (QUIT would be message content)', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
      await c.ehlo('me');
      await c.mail('<a@b>');
      await c.rcpt('<c@d>');
      await c.data();
      await c.quit();
      assert.equal(c.closed, true);
      await srv.sessions[0].whenClosed();
      assert.equal(srv.sessions[0].lines.at(-1), 'DATA');
      assert.ok(!srv.sessions[0].raw.includes('QUIT'));
      assert.equal(srv.messages.length, 0);
    } finally {
      await srv.close();
    }
  });
});

describe('SmtpClient.quit', () => {
  for (const action of ['close', 'reset', 'hang'] as const) {
    it(`tolerates a server that ${action === 'hang' ? 'never answers' : action + 's'} instead of 221`, async () => {
      const srv = await FakeSmtpServer.start({ script: { quit: action } });
      try {
        const c = await SmtpClient.connect({ host: srv.host, port: srv.port, timeouts: FAST });
        await c.ehlo('me');
        const t0 = Date.now();
        await c.quit(); // resolves, never rejects
        assert.ok(Date.now() - t0 < 1000);
        assert.equal(c.closed, true);
        await srv.sessions[0].whenClosed();
        assert.equal(srv.sessions[0].lines.at(-1), 'QUIT');
      } finally {
        await srv.close();
      }
    });
  }

  it('is a no-op on a closed client', async () => {
    const srv = await FakeSmtpServer.start();
    try {
      const c = await SmtpClient.connect({ host: srv.host, port: srv.port });
      c.close();
      await c.quit();
      assert.equal(c.closed, true);
      await srv.sessions[0].whenClosed();
      assert.deepEqual(srv.sessions[0].lines, []);
    } finally {
      await srv.close();
    }
  });
});
