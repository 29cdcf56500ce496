import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BruteForceTracker, clientKey } from '../../src/auth/brute-force';
import { CidrList } from '../../src/util/cidr';

test('brute force: failures per address within the window, doubling delays, blocking, exemptions, IPv6 per /64', () => {
  const t = new BruteForceTracker({ maxFailures: 3, windowMs: 60_000, delayMs: 1000, maxDelayMs: 3000, exempt: new CidrList(['127.0.0.1']) });
  const now = 1_000_000;
  assert.deepEqual(t.fail('192.0.2.1', now), { count: 1, blocked: false, delayMs: 1000 });
  assert.deepEqual(t.fail('192.0.2.1', now + 1), { count: 2, blocked: false, delayMs: 2000 });
  assert.equal(t.blocked('192.0.2.1', now + 2), false);
  assert.deepEqual(t.fail('192.0.2.1', now + 2), { count: 3, blocked: true, delayMs: 3000 });
  assert.equal(t.blocked('192.0.2.1', now + 3), true);
  assert.equal(t.blocked('192.0.2.2', now + 3), false, 'another address');
  assert.equal(t.blocked('::ffff:192.0.2.1', now + 3), true, 'the same client as a mapped address');
  // A reload keeps the counts under the new limits.
  const next = new BruteForceTracker({ maxFailures: 10, windowMs: 60_000, delayMs: 0, maxDelayMs: 0, exempt: new CidrList([]) });
  next.adopt(t);
  assert.equal(next.count('192.0.2.1', now + 3), 3);
  assert.equal(next.blocked('192.0.2.1', now + 3), false);
  // The oldest failure leaves the window: unblocked.
  assert.equal(t.blocked('192.0.2.1', now + 60_001), false);
  assert.equal(t.count('192.0.2.1', now + 60_001), 1, 'the two older failures are gone');
  // Exempt addresses are never counted.
  for (let i = 0; i < 5; i++) assert.deepEqual(t.fail('127.0.0.1', now), { count: 0, blocked: false, delayMs: 0 });
  assert.equal(t.blocked('127.0.0.1', now), false);
  // IPv6: one host usually has the whole /64.
  assert.equal(clientKey('2001:db8:1:2::1'), clientKey('2001:db8:1:2:ffff::9'));
  assert.notEqual(clientKey('2001:db8:1:2::1'), clientKey('2001:db8:1:3::1'));
  t.fail('2001:db8:1:2::1', now);
  t.fail('2001:db8:1:2::2', now);
  t.fail('2001:db8:1:2::3', now);
  assert.equal(t.blocked('2001:db8:1:2::99', now), true);
});
