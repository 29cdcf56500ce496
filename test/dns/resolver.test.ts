import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { DnsResolver, nodeStyle, parseServer, systemServers } from '../../src/dns/resolver';
import { reverseName, reversedIp, isHostname } from '../../src/dns/names';
import { silentDnsServer, startDnsServer, type DnsServer } from '../helpers/dns-server';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

// Enough TXT records that the answer cannot fit a 1232-byte UDP reply: the resolver must retry over TCP.
const bigTxt = Array.from({ length: 12 }, (_, i) => `big IN TXT "${String(i).padStart(2, '0')} ${'x'.repeat(200)}"`).join('\n');

let dns: DnsServer;
before(async () => {
  dns = await startDnsServer({
    'example.test': {
      ttl: 300,
      negativeTtl: 30,
      records: [
        'host IN A 192.0.2.10',
        'host IN A 192.0.2.11',
        'host IN AAAA 2001:db8::10',
        'short 5 IN A 192.0.2.20',
        '@ IN MX 10 mx1.example.test.',
        '@ IN MX 20 mx2.example.test.',
        'txt IN TXT "v=spf1 " "-all"',
        'alias IN CNAME host.example.test.',
        'loop1 IN CNAME loop2.example.test.',
        'loop2 IN CNAME loop1.example.test.',
        'onlya IN A 192.0.2.30',
        bigTxt,
      ].join('\n'),
    },
    '2.0.192.in-addr.arpa': '10 IN PTR host.example.test.\n10 IN PTR other.example.test.',
    '8.b.d.0.1.0.0.2.ip6.arpa': '0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR host.example.test.',
    'broken.test': null,
  });
});
after(() => dns.stop());

const resolver = (extra: Partial<ConstructorParameters<typeof DnsResolver>[0]> = {}) =>
  new DnsResolver({ servers: [dns.server], timeout: 1000, tries: 1, ...extra });

test('resolver: A, AAAA, MX, TXT from a real authoritative server', async () => {
  const r = resolver();
  const a = await r.query('host.example.test', 'A');
  assert.equal(a.status, 'ok');
  assert.deepEqual([...a.records].sort(), ['192.0.2.10', '192.0.2.11']);
  assert.equal(a.ttl, 300);
  assert.deepEqual((await r.query('host.example.test', 'AAAA')).records, ['2001:db8::10']);
  const mx = await r.query('EXAMPLE.test.', 'MX');
  assert.deepEqual(
    [...mx.records].sort((x, y) => x.priority - y.priority),
    [
      { exchange: 'mx1.example.test', priority: 10 },
      { exchange: 'mx2.example.test', priority: 20 },
    ],
  );
  assert.deepEqual((await r.query('txt.example.test', 'TXT')).records, [['v=spf1 ', '-all']]);
  r.close();
});

test('resolver: CNAME chains are followed inside the answer; a CNAME loop is no answer', async () => {
  const r = resolver();
  const a = await r.query('alias.example.test', 'A');
  assert.equal(a.status, 'ok');
  assert.equal(a.records.length, 2);
  assert.deepEqual((await r.query('alias.example.test', 'CNAME')).records, ['host.example.test']);
  const loop = await r.query('loop1.example.test', 'A');
  assert.notEqual(loop.status, 'ok');
  assert.deepEqual(loop.records, []);
  r.close();
});

test('resolver: NXDOMAIN and NODATA are told apart, with the SOA negative TTL', async () => {
  const r = resolver();
  const nx = await r.query('missing.example.test', 'A');
  assert.equal(nx.status, 'nxdomain');
  assert.equal(nx.ttl, 30);
  const nodata = await r.query('onlya.example.test', 'MX');
  assert.equal(nodata.status, 'nodata');
  assert.deepEqual(nodata.records, []);
  r.close();
});

test('resolver: SERVFAIL, REFUSED and timeout are failures, never a negative answer', async () => {
  const r = resolver();
  const sf = await r.query('x.broken.test', 'A');
  assert.equal(sf.status, 'servfail');
  assert.equal(sf.ttl, 0);
  // NSD is not authoritative for other zones and refuses.
  assert.equal((await r.query('example.com', 'A')).status, 'refused');
  const silent = await silentDnsServer();
  try {
    const t = new DnsResolver({ servers: [silent.server], timeout: 200, tries: 2 });
    const started = Date.now();
    const to = await t.query('host.example.test', 'A');
    assert.equal(to.status, 'timeout');
    assert.match(to.error!, /no reply/);
    assert.ok(Date.now() - started >= 350, 'both tries waited');
    t.close();
  } finally {
    await silent.stop();
  }
  r.close();
});

test('resolver: a server that does not answer is skipped for the next one', async () => {
  const silent = await silentDnsServer();
  try {
    const r = new DnsResolver({ servers: [silent.server, dns.server], timeout: 200, tries: 1 });
    assert.equal((await r.query('host.example.test', 'A')).status, 'ok');
    r.close();
  } finally {
    await silent.stop();
  }
});

test('resolver: answers are cached for their TTL, failures are not cached', async () => {
  const r = resolver();
  const first = await r.query('short.example.test', 'A');
  assert.equal(first.cached, false);
  assert.equal(first.ttl, 5);
  const second = await r.query('short.example.test', 'A');
  assert.equal(second.cached, true);
  assert.ok(second.ttl <= 5 && second.ttl > 0);
  assert.deepEqual(second.records, first.records);
  // Negative answers are cached too (RFC 2308)...
  await r.query('missing.example.test', 'A');
  assert.equal((await r.query('missing.example.test', 'A')).cached, true);
  // ...failures are not.
  await r.query('x.broken.test', 'A');
  assert.equal((await r.query('x.broken.test', 'A')).cached, false);
  r.flush();
  assert.equal((await r.query('short.example.test', 'A')).cached, false);
  r.close();
});

test('resolver: the cache holds at most cacheSize answers, oldest out first', async () => {
  const r = resolver({ cacheSize: 2 });
  await r.query('host.example.test', 'A');
  await r.query('host.example.test', 'AAAA');
  await r.query('onlya.example.test', 'A');
  assert.equal((await r.query('host.example.test', 'A')).cached, false);
  assert.equal((await r.query('onlya.example.test', 'A')).cached, true);
  r.close();
});

test('resolver: TTLs are clamped to maxTtl', async () => {
  const r = resolver({ maxTtl: 60 });
  assert.equal((await r.query('host.example.test', 'A')).ttl, 60);
  r.close();
});

test('resolver: parallel identical lookups share one query; all() keeps order', async () => {
  const r = resolver();
  const [x, y] = await Promise.all([r.query('host.example.test', 'A'), r.query('host.example.test', 'A')]);
  assert.equal(x, y, 'the same answer object: one query on the wire');
  const answers = await r.all([
    ['onlya.example.test', 'A'],
    ['missing.example.test', 'A'],
    ['host.example.test', 'AAAA'],
  ]);
  assert.deepEqual(
    answers.map((a) => a.status),
    ['ok', 'nxdomain', 'ok'],
  );
  r.close();
});

test('resolver: a truncated UDP answer is retried over TCP', async () => {
  const r = resolver();
  const big = await r.query('big.example.test', 'TXT');
  assert.equal(big.status, 'ok');
  assert.equal(big.records.length, 12);
  r.close();
});

test('resolver: PTR for IPv4 and IPv6, and addresses() merges A and AAAA', async () => {
  const r = resolver();
  assert.deepEqual([...(await r.ptr('192.0.2.10')).records].sort(), ['host.example.test', 'other.example.test']);
  assert.deepEqual((await r.ptr('::ffff:192.0.2.10')).records.length, 2);
  assert.deepEqual((await r.ptr('2001:db8::10')).records, ['host.example.test']);
  assert.equal((await r.ptr('192.0.2.99')).status, 'nxdomain');
  const both = await r.addresses('host.example.test');
  assert.deepEqual([...both.records].sort(), ['192.0.2.10', '192.0.2.11', '2001:db8::10']);
  assert.equal((await r.addresses('missing.example.test')).status, 'nxdomain');
  assert.equal((await r.addresses('x.broken.test')).status, 'servfail');
  r.close();
});

test('resolver: nodeStyle() looks like dns.promises.resolve for libraries', async () => {
  const r = resolver();
  const resolve = nodeStyle(r);
  assert.deepEqual(await resolve('txt.example.test', 'TXT'), [['v=spf1 ', '-all']]);
  await assert.rejects(resolve('missing.example.test', 'TXT'), { code: 'ENOTFOUND' });
  await assert.rejects(resolve('onlya.example.test', 'TXT'), { code: 'ENODATA' });
  await assert.rejects(resolve('x.broken.test', 'A'), { code: 'ESERVFAIL' });
  r.close();
});

test('names: reversed addresses and PTR names', () => {
  assert.equal(reversedIp('192.0.2.1'), '1.2.0.192');
  assert.equal(reversedIp('::ffff:192.0.2.1'), '1.2.0.192');
  assert.equal(reverseName('192.0.2.1'), '1.2.0.192.in-addr.arpa');
  assert.equal(
    reverseName('2001:db8::1'),
    '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa',
  );
  assert.throws(() => reversedIp('not-an-ip'), /not an IP/);
  assert.ok(isHostname('mail.example.test'));
  assert.ok(!isHostname('bad name.test'));
  assert.ok(!isHostname('-x.test'));
});

test('servers: parsing and /etc/resolv.conf', () => {
  assert.deepEqual(parseServer('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353 });
  assert.deepEqual(parseServer('[::1]:53'), { host: '::1', port: 53 });
  assert.deepEqual(parseServer('::1'), { host: '::1', port: 53 });
  assert.throws(() => parseServer('dns.example:53'), /not a name server address/);
  const dir = mkdtempSync(join(tmpdir(), 'pq-resolv-'));
  writeFileSync(join(dir, 'resolv.conf'), '# c\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch x\n');
  assert.deepEqual(systemServers(join(dir, 'resolv.conf')), ['192.0.2.53', '[2001:db8::53]']);
  assert.deepEqual(systemServers(join(dir, 'missing')), ['127.0.0.1']);
});
