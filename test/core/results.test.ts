import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Results } from '../../src/session/results';

test('the log line shows a plugin\'s connection and transaction results together', () => {
  const conn = new Results();
  const txn = new Results();
  conn.add('earlytalker', { pass: 'connect' });
  txn.add('earlytalker', { fail: 'data' });
  conn.add('dnsbl', { pass: 'zen' });
  txn.add('spf', { pass: 'example.net' });
  assert.deepEqual(Results.mergedSummary(conn, txn), {
    earlytalker: 'pass=connect; fail=data',
    dnsbl: 'pass=zen',
    spf: 'pass=example.net',
  });
});
