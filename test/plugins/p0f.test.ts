/**
 * p0f against a real p0f v3 daemon capturing on the loopback interface
 * (test/helpers/p0f.ts): the test opens TCP connections over loopback from
 * addresses of its own (127.0.0.x, ::1) and asks p0f about them. Faults (p0f not
 * running, hanging, garbled answers) come from fakes on a Unix socket.
 */
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import plugin, { decodeResponse, encodeQuery, HEADER, osMatcher, P0fClient, RESPONSE_SIZE, type P0fInfo } from '../../plugins/p0f';
import { Decision } from '../../src/plugin/decision';
import type { PluginHooks } from '../../src/plugin/api';
import { spoolBuffer } from '../../src/message/spool';
import { callHook, configDir, loadPlugin, makeContext } from '../helpers/plugin-context';
import { startP0f, type P0fInstance } from '../helpers/p0f';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { connectFrom, pluginResults, transaction } from '../helpers/wire-clients';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connectAs(hooks: PluginHooks, addr: string, name = 'p0f') {
  const ctx = makeContext({ name, clientAddr: addr });
  const started = Date.now();
  const verdict = await callHook(hooks, 'connect', ctx);
  return { ctx, verdict, ms: Date.now() - started, info: ctx.conn.notes[name] as P0fInfo | undefined, results: ctx.myResults() };
}

/** A line-at-a-time SMTP dialogue from a chosen local address; the first reply of each step (greeting first). */
async function smtpFrom(localAddress: string, port: number, commands: string[]): Promise<string[]> {
  const s = net.connect({ host: '127.0.0.1', port, localAddress });
  s.on('error', () => undefined);
  let buf = '';
  const replies: string[] = [];
  let waiting: (() => void) | undefined;
  s.on('data', (d) => {
    buf += d.toString('latin1');
    for (let m; (m = /^(\d{3}) [^\r]*\r\n/m.exec(buf)); ) {
      replies.push(m[0].trimEnd());
      buf = buf.slice(m.index + m[0].length);
      waiting?.();
    }
  });
  const next = async (n: number) => {
    const deadline = Date.now() + 5000;
    while (replies.length < n) {
      if (Date.now() > deadline) throw new Error(`no reply ${n}; so far: ${replies.join(' | ')}`);
      await new Promise<void>((r) => {
        waiting = r;
        setTimeout(r, 100);
      });
    }
  };
  await next(1);
  for (const [i, c] of commands.entries()) {
    s.write(c + '\r\n');
    await next(i + 2);
  }
  s.destroy();
  return replies;
}

describe('p0f API encoding', () => {
  test('queries: magic in host order, address type, left-aligned address', () => {
    const q4 = encodeQuery('192.0.2.1');
    assert.equal(q4.length, 21);
    assert.equal(q4.readUInt32LE(0), 0x50304601);
    assert.equal(q4[4], 4);
    assert.deepEqual([...q4.subarray(5, 9)], [192, 0, 2, 1]);
    assert.ok(q4.subarray(9).every((b) => b === 0));
    assert.deepEqual(encodeQuery('::ffff:192.0.2.1'), q4, 'IPv4-mapped addresses are asked as IPv4');
    const q6 = encodeQuery('2001:db8::1:0:0:ff');
    assert.equal(q6[4], 6);
    assert.equal(q6.subarray(5).toString('hex'), '20010db80000000000010000000000ff');
    assert.equal(encodeQuery('::1').subarray(5).toString('hex'), '0'.repeat(31) + '1');
    assert.equal(encodeQuery('64:ff9b::192.0.2.1').subarray(5).toString('hex'), '0064ff9b0000000000000000c0000201');
    assert.throws(() => encodeQuery('nonsense'), /not an IP address/);
  });

  test('answers with a wrong magic or an unknown status are errors', () => {
    const r = Buffer.alloc(RESPONSE_SIZE);
    r.writeUInt32LE(0x12345678, 0);
    assert.throws(() => decodeResponse(r), /not a p0f v3 answer/);
    r.writeUInt32LE(0x50304602, 0);
    r.writeUInt32LE(0x20, 4);
    assert.deepEqual(decodeResponse(r), { status: 'nomatch' });
    r.writeUInt32LE(0x77, 4);
    assert.throws(() => decodeResponse(r), /unknown p0f status/);
    assert.throws(() => decodeResponse(r.subarray(0, 100)), /short answer/);
  });

  test('deny_os entries', () => {
    assert.equal(osMatcher('Windows')('Windows 7 or 8'), true);
    assert.equal(osMatcher('windows xp')('Windows XP'), true);
    assert.equal(osMatcher('Windows XP')('Windows 7 or 8'), false);
    assert.equal(osMatcher('Win')('Windows XP'), false, 'whole words');
    assert.equal(osMatcher('/^linux 2\\./i')('Linux 2.2.x-3.x'), true);
    assert.equal(plugin.options!.safeParse({ deny_os: ['/(/'] }).success, false);
    assert.equal(plugin.options!.safeParse({ denyos: [] }).success, false);
  });
});

describe('p0f with a real p0f daemon on lo', () => {
  let p0f: P0fInstance;
  let listener: net.Server;
  let port: number;
  let probe: P0fClient;
  const open: net.Socket[] = [];

  before(async () => {
    p0f = await startP0f();
    probe = new P0fClient(p0f.socket, 1000);
    listener = net.createServer((s) => {
      open.push(s);
      s.on('error', () => undefined);
      s.write('220 test\r\n');
    });
    await new Promise<void>((r) => listener.listen(0, '::', r));
    port = (listener.address() as net.AddressInfo).port;
  });
  after(async () => {
    probe?.close();
    for (const s of open) s.destroy();
    await new Promise((r) => listener?.close(r));
    await p0f?.stop();
  });

  /** A TCP connection over loopback from `from` (so p0f sees its SYN), closed at the end of the test file. */
  async function tcpFrom(from: string, to = from.includes(':') ? '::1' : '127.0.0.1'): Promise<void> {
    const s = net.connect({ host: to, port, localAddress: from });
    s.on('error', () => undefined);
    open.push(s);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    s.write('EHLO test\r\n');
  }

  /** Waits until p0f has processed the handshake (it reads packets asynchronously). */
  async function seen(ip: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if ((await probe.query(ip)).status === 'ok') return;
      await sleep(20);
    }
    assert.fail(`p0f never saw ${ip}. Its output:\n${p0f.output().slice(-2000)}`);
  }

  test('a host p0f has not seen is a skip, not an error', async () => {
    const hooks = await loadPlugin(plugin, { socket: p0f.socket, retry_after: 0.05 });
    const { verdict, info, results } = await connectAs(hooks, '127.0.0.66');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.equal(info, undefined);
    assert.deepEqual(results?.skip, ['p0f has not seen the client']);
    assert.deepEqual(results?.err, []);
    await hooks.shutdown?.();
  });

  test('a real answer about a loopback client: this Linux host, distance 0', async () => {
    await tcpFrom('127.0.0.3');
    await seen('127.0.0.3');
    const hooks = await loadPlugin(plugin, { socket: p0f.socket });
    const { verdict, info, results } = await connectAs(hooks, '127.0.0.3');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.ok(info, 'notes.p0f set');
    assert.equal(process.platform, 'linux');
    assert.equal(info.os_name, 'Linux', `p0f fingerprints this kernel's SYN as Linux (got "${info.os_name} ${info.os_flavor}")`);
    assert.equal(info.distance, 0, 'loopback is zero hops away');
    assert.ok(info.total_conn >= 1);
    const now = Date.now() / 1000;
    assert.ok(Math.abs(info.last_seen - now) < 60 && info.first_seen <= info.last_seen, `last_seen ${info.last_seen}`);
    assert.equal(results?.details.os_name, 'Linux');
    assert.match(results!.msg.join(), /^Linux .*, distance 0/);
    // the mapped form a dual-stack listener reports is asked as IPv4
    assert.equal((await connectAs(hooks, '::ffff:127.0.0.3')).info?.os_name, 'Linux');
    await hooks.shutdown?.();
  });

  test('IPv6: a real answer about ::1', async () => {
    await tcpFrom('::1');
    await seen('::1');
    const hooks = await loadPlugin(plugin, { socket: p0f.socket });
    const { verdict, info } = await connectAs(hooks, '::1');
    assert.equal(verdict.decision, Decision.DECLINED);
    // p0f's database has no signature for Linux's IPv6 loopback SYN (MSS 65476): the host is known, its OS not
    assert.ok(info, 'notes.p0f set');
    assert.ok(info.total_conn >= 1, `total_conn ${info.total_conn}`);
    assert.equal(info.distance, 0);
    assert.ok(Math.abs(info.last_seen - Date.now() / 1000) < 60);
    await hooks.shutdown?.();
  });

  test('deny_os refuses the client; other systems pass', async () => {
    await tcpFrom('127.0.0.5');
    await seen('127.0.0.5');
    const linux = await loadPlugin(plugin, { socket: p0f.socket, deny_os: ['Windows', 'Linux'] });
    const a = await connectAs(linux, '127.0.0.5');
    assert.equal(a.verdict.decision, Decision.DENY);
    assert.equal(a.verdict.enhanced, '5.7.1');
    assert.match(a.verdict.message!, /connections from Linux .* hosts are not accepted/);
    assert.deepEqual(a.results?.fail, ['os:Linux']);
    const windows = await loadPlugin(plugin, { socket: p0f.socket, deny_os: ['Windows', '/bsd/i'] });
    const b = await connectAs(windows, '127.0.0.5');
    assert.equal(b.verdict.decision, Decision.DECLINED);
    assert.deepEqual(b.results?.pass, ['os']);
    await linux.shutdown?.();
    await windows.shutdown?.();
  });

  test('max_distance: a SYN sent with TTL 50 is 14 hops from a TTL-64 system', async () => {
    // Node cannot set a TCP socket's TTL; Python can (python3 comes with python3-dkim).
    const python = '/usr/bin/python3';
    assert.ok(existsSync(python), `${python} is needed to send a SYN with a lowered TTL (apt-get install python3)`);
    const script = [
      'import socket, sys, time',
      's = socket.socket()',
      's.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 50)',
      "s.bind(('127.0.0.7', 0))",
      "s.connect(('127.0.0.1', int(sys.argv[1])))",
      'time.sleep(0.3)',
      's.close()',
    ].join('\n');
    await new Promise<void>((resolve, reject) =>
      execFile(python, ['-c', script, String(port)], { timeout: 5000 }, (err, _out, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve())),
    );
    await seen('127.0.0.7');
    const near = await loadPlugin(plugin, { socket: p0f.socket, max_distance: 20 });
    const ok = await connectAs(near, '127.0.0.7');
    assert.equal(ok.info?.distance, 14);
    assert.equal(ok.verdict.decision, Decision.DECLINED);
    assert.deepEqual(ok.results?.pass, ['distance']);
    const strict = await loadPlugin(plugin, { socket: p0f.socket, max_distance: 10 });
    const far = await connectAs(strict, '127.0.0.7');
    assert.equal(far.verdict.decision, Decision.DENY);
    assert.deepEqual(far.results?.fail, ['distance:14']);
    assert.match(far.verdict.message!, /14 network hops away/);
    await near.shutdown?.();
    await strict.shutdown?.();
  });

  test('X-P0F at data_post: the outside copy removed, ours added', async () => {
    await tcpFrom('127.0.0.3');
    await seen('127.0.0.3');
    const hooks = await loadPlugin(plugin, { socket: p0f.socket, add_header: true });
    const { ctx } = await connectAs(hooks, '127.0.0.3');
    ctx.newTransaction('a@example.com');
    const message = await spoolBuffer(Buffer.from('X-P0F: os="Windows XP"\r\nFrom: a@example.com\r\n\r\nbody\r\n'));
    try {
      await callHook(hooks, 'data_post', ctx, message);
      const values = message.headers.getAll(HEADER);
      assert.equal(values.length, 1);
      assert.match(values[0]!, /^os="Linux [^"]*" .*distance=0 total_conn=\d+ shared_ip=[YN]/);
      assert.equal(message.headers.fields()[0]!.name, HEADER);
    } finally {
      await message.dispose();
    }
    assert.equal((await loadPlugin(plugin, {})).data_post, undefined, 'no data_post hook without add_header');
    await hooks.shutdown?.();
  });

  test('over the wire, standalone: a client p0f saw only a moment ago is fingerprinted; the header reaches the downstream', async () => {
    const downstream = await FakeSmtpServer.start();
    let proxy: TestProxy | undefined;
    try {
      proxy = await startProxy({
        mode: 'standalone',
        downstream: { address: `127.0.0.1:${downstream.port}` },
        plugins: [{ p0f: { socket: p0f.socket, add_header: true } }],
      });
      // From an address of its own, so p0f's only knowledge of it is this connection's SYN,
      // which the connect hook asks about right after the accept.
      const replies = await smtpFrom('127.0.0.11', proxy.port, [
        'EHLO client.example.net',
        'MAIL FROM:<a@example.net>',
        'RCPT TO:<b@example.test>',
        'DATA',
        'X-P0F: forged\r\nFrom: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n.',
        'QUIT',
      ]);
      assert.match(replies[5]!, /^250 /, replies.join(' | '));
      const data = downstream.messages.at(-1)!.data.toString('latin1');
      assert.match(data, /^X-P0F: os="Linux [^"]*" .*distance=0 total_conn=1 /m);
      assert.doesNotMatch(data, /forged/);
    } finally {
      await proxy?.close();
      await downstream.close();
    }
  });

  test('over the wire, Postfix mode: XFORWARD ADDR is asked about, deny_os refuses at MAIL', async () => {
    await tcpFrom('127.0.0.9');
    await seen('127.0.0.9');
    const downstream = await FakeSmtpServer.start();
    let proxy: TestProxy | undefined;
    try {
      proxy = await startProxy({
        mode: 'postfix',
        downstream: { address: `127.0.0.1:${downstream.port}` },
        plugins: [{ p0f: { socket: p0f.socket, deny_os: ['Linux'] } }],
      });
      const t = await SmtpTalk.connect(proxy.port);
      await t.cmd('EHLO mx.example.test');
      assert.equal((await t.cmd('XFORWARD ADDR=127.0.0.9 PORT=4711 HELO=client.example PROTO=ESMTP')).code, 250);
      const mail = await t.cmd('MAIL FROM:<a@example.net>');
      assert.equal(mail.code, 550);
      assert.match(mail.lines.join(' '), /Linux .* hosts are not accepted/);
      await t.quit();
      assert.equal(downstream.messages.length, 0);
    } finally {
      await proxy?.close();
      await downstream.close();
    }
  });
});

describe('p0f trouble never refuses mail', () => {
  /** A Unix socket server doing something wrong with each query. */
  async function fakeP0f(behaviour: (sock: net.Socket, query: Buffer) => void): Promise<{ path: string; close(): Promise<void> }> {
    const dir = configDir({});
    const path = join(dir, 'p0f.sock');
    const conns: net.Socket[] = [];
    const server = net.createServer((s) => {
      conns.push(s);
      s.on('error', () => undefined);
      s.on('data', (d) => behaviour(s, d));
    });
    await new Promise<void>((r) => server.listen(path, r));
    return {
      path,
      close: async () => {
        for (const c of conns) c.destroy();
        await new Promise((r) => server.close(r));
      },
    };
  }

  test('p0f not running: err recorded, declined at once', async () => {
    const hooks = await loadPlugin(plugin, { socket: 'nowhere.sock' }, { configDir: configDir({}) });
    const { verdict, results, ms } = await connectAs(hooks, '198.51.100.1');
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.match(results!.err.join(), /p0f: p0f not running \(ENOENT on .*nowhere\.sock\)/);
    assert.ok(ms < 500, `${ms} ms`);
    await hooks.shutdown?.();
  });

  test('p0f hangs: err after query_timeout; the next query opens a new connection', async () => {
    let queries = 0;
    const fake = await fakeP0f(() => void queries++);
    try {
      const hooks = await loadPlugin(plugin, { socket: fake.path, query_timeout: 0.2, deny_os: ['Linux'] });
      const a = await connectAs(hooks, '198.51.100.1');
      assert.equal(a.verdict.decision, Decision.DECLINED);
      assert.match(a.results!.err.join(), /no answer within 200 ms/);
      assert.ok(a.ms >= 190 && a.ms < 1000, `${a.ms} ms`);
      const b = await connectAs(hooks, '198.51.100.2');
      assert.match(b.results!.err.join(), /no answer within/);
      assert.equal(queries, 2);
      await hooks.shutdown?.();
    } finally {
      await fake.close();
    }
  });

  test('p0f drops the connection or answers garbage: err, declined', async () => {
    const dropper = await fakeP0f((s) => s.destroy());
    const garbler = await fakeP0f((s) => s.write(Buffer.alloc(RESPONSE_SIZE, 0x41)));
    try {
      for (const [fake, why] of [
        [dropper, /closed the connection/],
        [garbler, /not a p0f v3 answer/],
      ] as const) {
        const hooks = await loadPlugin(plugin, { socket: fake.path, deny_os: ['Linux'] });
        const { verdict, results } = await connectAs(hooks, '198.51.100.1');
        assert.equal(verdict.decision, Decision.DECLINED);
        assert.match(results!.err.join(), why);
        await hooks.shutdown?.();
      }
    } finally {
      await dropper.close();
      await garbler.close();
    }
  });

  test('queries pipelined on one connection are answered in order', async () => {
    // Answers "no match" for even last octets and a minimal OK for odd ones, after a delay, in order.
    const fake = await fakeP0f((s, d) => {
      for (let off = 0; off + 21 <= d.length; off += 21) {
        const last = d[off + 8]!;
        const r = Buffer.alloc(RESPONSE_SIZE);
        r.writeUInt32LE(0x50304602, 0);
        r.writeUInt32LE(last % 2 ? 0x10 : 0x20, 4);
        r.writeUInt32LE(last, 16); // total_conn carries the octet back
        setTimeout(() => s.write(r), 20);
      }
    });
    const client = new P0fClient(fake.path, 1000);
    try {
      const answers = await Promise.all([1, 2, 3, 4, 5].map((n) => client.query(`198.51.100.${n}`)));
      assert.deepEqual(
        answers.map((a) => (a.status === 'ok' ? a.info.total_conn : a.status)),
        [1, 'nomatch', 3, 'nomatch', 5],
      );
    } finally {
      client.close();
      await fake.close();
    }
  });
});

// ---- end to end, standalone (p0f must see the client's own SYN): accept, reject, defer, immunity ----

describe('p0f end to end over SMTP with a real p0f daemon (standalone, direct TCP peers)', () => {
  let p0f: P0fInstance;
  let downstream: FakeSmtpServer;
  let proxy: TestProxy | undefined;
  before(async () => {
    p0f = await startP0f();
    downstream = await FakeSmtpServer.start();
  });
  after(async () => {
    await downstream?.close();
    await p0f?.stop();
  });
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
  });
  const start = async (config: Record<string, unknown>, options: Record<string, unknown>, before: unknown[] = []): Promise<TestProxy> => {
    await proxy?.close();
    proxy = await startProxy({
      mode: 'standalone',
      downstream: { address: `127.0.0.1:${downstream.port}` },
      ...config,
      plugins: [...before, { p0f: { socket: p0f.socket, ...options } }],
    });
    return proxy;
  };
  const MSG = 'From: <a@example.net>\r\nSubject: p0f\r\n\r\nbody\r\n';
  const session = async (p: TestProxy, from: string) => {
    const t = await connectFrom(from, p.port);
    const greeting = t.greeting;
    const r = greeting.code === 220 ? await transaction(t, 'a@example.net', ['b@example.test'], { helo: 'client.example.net', message: MSG }) : undefined;
    await t.quit();
    return { greeting, r };
  };
  const p0fResult = async (p: TestProxy, client: string): Promise<string> => (await pluginResults(p, client, 'p0f')).at(-1) ?? '';

  test('deny_os: a Linux client is refused at the greeting; another OS list lets it through, fingerprinted', async () => {
    const p = await start({}, { deny_os: ['Linux'] });
    const refused = await session(p, '127.0.0.21');
    assert.equal(refused.greeting.code, 554, refused.greeting.lines.join(' '));
    assert.match(refused.greeting.lines.join(' '), /Linux .* hosts are not accepted/);

    const before = downstream.messages.length;
    const q = await start({}, { deny_os: ['Windows', 'Solaris'] });
    const ok = await session(q, '127.0.0.22');
    assert.deepEqual([ok.greeting.code, ok.r?.eod], [220, 250]);
    assert.equal(downstream.messages.length, before + 1);
    assert.match(await p0fResult(q, '127.0.0.22'), /pass=/, 'the OS was found and passed');
  });

  test('held to MAIL (deferred_rejection.connection) and temporary (reject_type temp): 450 at MAIL', async () => {
    const p = await start({ deferred_rejection: { connection: true, stage: 'mail' } }, { deny_os: ['Linux'], reject_type: 'temp' });
    const r = await session(p, '127.0.0.23');
    assert.equal(r.greeting.code, 220);
    assert.equal(r.r?.mail, 450, r.r?.texts.join(' | '));
    assert.match(r.r!.texts[1]!, /Linux/);
  });

  test('relay clients and whitelisted hosts are immune to deny_os', async () => {
    const before = downstream.messages.length;
    const p = await start({ relay_clients: ['127.0.0.24'] }, { deny_os: ['Linux'] }, [{ whitelist: { hosts: ['127.0.0.25'] } }]);
    for (const client of ['127.0.0.24', '127.0.0.25']) {
      const r = await session(p, client);
      assert.deepEqual([r.greeting.code, r.r?.eod], [220, 250], `${client}: ${r.greeting.lines.join(' ')} ${r.r?.texts.join(' | ')}`);
    }
    assert.equal((await session(p, '127.0.0.26')).greeting.code, 554, 'anyone else');
    assert.equal(downstream.messages.length, before + 2);
  });
});
