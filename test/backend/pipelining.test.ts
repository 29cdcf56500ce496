/**
 * XFORWARD and MAIL share one round trip when the server offers PIPELINING,
 * and go one at a time when it does not.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { SmtpClient } from '../../src/backend/smtp-client';

/** A server that records how the client's bytes arrived, packet by packet. */
async function recordingServer(capabilities: string[]): Promise<{ port: number; packets: string[]; close(): void }> {
  const packets: string[] = [];
  const server = net.createServer((sock) => {
    sock.write('220 rec ESMTP\r\n');
    let buf = '';
    sock.on('data', (d) => {
      packets.push(d.toString());
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (line.startsWith('EHLO')) sock.write(['250-rec', ...capabilities.slice(0, -1).map((c) => `250-${c}`), `250 ${capabilities.at(-1)}`].join('\r\n') + '\r\n');
        else if (line === 'QUIT') sock.end('221 bye\r\n');
        else sock.write(line.startsWith('MAIL') ? '250 2.1.0 Ok\r\n' : '250 2.0.0 Ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, packets, close: () => server.close() };
}

const ATTRS = { NAME: 'client.example.net', ADDR: '192.0.2.7', HELO: 'client.example.net', PROTO: 'ESMTP' };

test('with PIPELINING: XFORWARD and MAIL leave in one write', async () => {
  const srv = await recordingServer(['PIPELINING', 'XFORWARD NAME ADDR PROTO HELO']);
  const c = await SmtpClient.connect({ host: '127.0.0.1', port: srv.port });
  await c.ehlo('pq.example');
  const before = srv.packets.length;
  const { xforward, mail } = await c.xforwardAndMail(ATTRS, '<a@example.net> SIZE=10');
  assert.equal(xforward?.code, 250);
  assert.equal(mail.code, 250);
  const sent = srv.packets.slice(before);
  assert.equal(sent.length, 1, `packets: ${JSON.stringify(sent)}`);
  assert.match(sent[0]!, /^XFORWARD NAME=client\.example\.net ADDR=192\.0\.2\.7 HELO=client\.example\.net PROTO=ESMTP\r\nMAIL FROM:<a@example\.net> SIZE=10\r\n$/);
  await c.quit();
  srv.close();
});

test('without PIPELINING: MAIL only after the XFORWARD reply', async () => {
  const srv = await recordingServer(['XFORWARD NAME ADDR PROTO HELO']);
  const c = await SmtpClient.connect({ host: '127.0.0.1', port: srv.port });
  await c.ehlo('pq.example');
  const before = srv.packets.length;
  const { xforward, mail } = await c.xforwardAndMail(ATTRS, '<a@example.net>');
  assert.equal(xforward?.code, 250);
  assert.equal(mail.code, 250);
  const sent = srv.packets.slice(before);
  assert.equal(sent.length, 2);
  assert.match(sent[0]!, /^XFORWARD /);
  assert.match(sent[1]!, /^MAIL FROM:<a@example\.net>\r\n$/);
  await c.quit();
  srv.close();
});

test('nothing to describe: MAIL alone', async () => {
  const srv = await recordingServer(['PIPELINING']);
  const c = await SmtpClient.connect({ host: '127.0.0.1', port: srv.port });
  await c.ehlo('pq.example');
  const { xforward, mail } = await c.xforwardAndMail(ATTRS, '<>');
  assert.equal(xforward, undefined, 'XFORWARD not advertised: not sent');
  assert.equal(mail.code, 250);
  assert.ok(!srv.packets.join('').includes('XFORWARD'));
  await c.quit();
  srv.close();
});
