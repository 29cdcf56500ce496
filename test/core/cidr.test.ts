/** Address lists (trusted_proxies, relay_clients...): membership by family, prefix and mapped form. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CidrList, parseCidr } from '../../src/util/cidr';

test('IPv4 networks: the prefix bounds membership, octets are read as numbers', () => {
  const list = new CidrList(['192.0.2.0/24', '10.1.2.3', '172.16.0.0/12']);
  for (const a of ['192.0.2.0', '192.0.2.255', '10.1.2.3', '172.16.0.1', '172.31.255.255']) assert.ok(list.contains(a), a);
  for (const a of ['192.0.3.0', '192.0.1.255', '10.1.2.4', '172.32.0.0', '172.15.255.255', '255.255.255.255', '0.0.0.0']) assert.ok(!list.contains(a), a);
});

test('0.0.0.0/0 holds every IPv4 address and no IPv6 one', () => {
  const list = new CidrList(['0.0.0.0/0']);
  assert.ok(list.contains('255.255.255.255'));
  assert.ok(list.contains('0.0.0.0'));
  assert.ok(!list.contains('::1'));
});

test('IPv4-mapped IPv6 peers match IPv4 entries, in either case', () => {
  const list = new CidrList(['127.0.0.1', '198.51.100.0/25']);
  assert.ok(list.contains('::ffff:127.0.0.1'));
  assert.ok(list.contains('::FFFF:198.51.100.127'));
  assert.ok(!list.contains('::ffff:198.51.100.128'));
});

test('IPv6 networks, compressed forms and an embedded IPv4 tail', () => {
  const list = new CidrList(['::1', '2001:db8::/32', 'fe80::/10']);
  for (const a of ['::1', '0:0:0:0:0:0:0:1', '2001:db8::', '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', '2001:0db8::1.2.3.4', 'fe80::1', 'febf::1']) {
    assert.ok(list.contains(a), a);
  }
  for (const a of ['::2', '2001:db9::', 'fec0::1', '127.0.0.1']) assert.ok(!list.contains(a), a);
});

test('not an address: no match, and a bad entry is refused when the list is built', () => {
  const list = new CidrList(['127.0.0.1']);
  for (const a of ['', 'localhost', '127.0.0', '127.0.0.1.5', '1.2.3.256']) assert.ok(!list.contains(a), a);
  assert.equal(parseCidr('10.0.0.0/33'), undefined);
  assert.equal(parseCidr('10.0.0.0/x'), undefined);
  assert.throws(() => new CidrList(['10.0.0.0/8', 'example.com']), /not an IP address or CIDR network: "example.com"/);
});
