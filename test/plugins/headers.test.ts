import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { parseRfc5322Date } from '../../plugins/headers';
import { Decision } from '../../src/plugin/decision';
import { spoolBuffer } from '../../src/message/spool';
import { callHook, loadPlugin, makeContext } from '../helpers/plugin-context';

const DAY = 86_400_000;
const rfcDate = (t: number) => new Date(t).toUTCString(); // "Tue, 01 Jan 2024 10:00:00 GMT"

async function check(headerLines: string[], options: object = {}) {
  const hooks = await loadPlugin(plugin, options);
  const message = await spoolBuffer(Buffer.from([...headerLines, '', 'body', ''].join('\r\n')));
  const ctx = makeContext({ sender: 'a@example.com', recipients: ['b@example.net'] });
  try {
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    return { verdict, results: ctx.myResults()! };
  } finally {
    await message.dispose();
  }
}

const good = () => ['From: a@example.com', 'To: b@example.net', `Date: ${rfcDate(Date.now())}`, 'Subject: hi'];

test('headers: a well-formed message passes every check', async () => {
  const { verdict, results } = await check(good());
  assert.equal(verdict.decision, Decision.DECLINED);
  assert.deepEqual(results.pass, ['required', 'singular', 'date']);
  assert.deepEqual(results.fail, []);
});

test('headers: a missing required header is denied by name', async () => {
  const { verdict, results } = await check(['from: a@example.com', 'Subject: no date']);
  assert.equal(verdict.decision, Decision.DENY);
  assert.equal(verdict.message, 'required header Date is missing');
  assert.deepEqual(results.fail, ['required:Date']);
  assert.deepEqual(results.pass, ['singular']);
});

test('headers: a repeated singular header is denied by name', async () => {
  const { verdict, results } = await check([...good(), 'SUBJECT: again']);
  assert.equal(verdict.decision, Decision.DENY);
  assert.equal(verdict.message, 'header Subject appears 2 times, RFC 5322 allows one');
  assert.deepEqual(results.fail, ['singular:Subject']);
});

test('headers: repeated non-singular headers are fine', async () => {
  const { verdict } = await check([...good(), 'Received: from a', 'Received: from b', 'Comments: x', 'Comments: y']);
  assert.equal(verdict.decision, Decision.DECLINED);
});

test('headers: several problems are all named and recorded', async () => {
  const { verdict, results } = await check(['To: x@example.net', 'To: y@example.net']);
  assert.equal(verdict.message, 'required header From is missing; required header Date is missing; header To appears 2 times, RFC 5322 allows one');
  assert.deepEqual(results.fail, ['required:From', 'required:Date', 'singular:To']);
});

test('headers: Date too far in the future (default 2 days, 0 disables)', async () => {
  const lines = ['From: a@example.com', `Date: ${rfcDate(Date.now() + 3 * DAY)}`];
  const { verdict, results } = await check(lines);
  assert.equal(verdict.decision, Decision.DENY);
  assert.equal(verdict.message, 'Date header is too far in the future');
  assert.deepEqual(results.fail, ['date:future']);
  assert.equal((await check(lines, { future: 0 })).verdict.decision, Decision.DECLINED);
  assert.equal((await check(lines, { future: 4 })).verdict.decision, Decision.DECLINED);
  assert.equal((await check(['From: a@example.com', `Date: ${rfcDate(Date.now() + DAY)}`])).verdict.decision, Decision.DECLINED);
});

test('headers: Date too far in the past (default 15 days, 0 disables)', async () => {
  const lines = ['From: a@example.com', `Date: ${rfcDate(Date.now() - 16 * DAY)}`];
  const { verdict, results } = await check(lines);
  assert.equal(verdict.decision, Decision.DENY);
  assert.equal(verdict.message, 'Date header is too far in the past');
  assert.deepEqual(results.fail, ['date:past']);
  assert.equal((await check(lines, { past: 0 })).verdict.decision, Decision.DECLINED);
  assert.equal((await check(['From: a@example.com', `Date: ${rfcDate(Date.now() - 14 * DAY)}`])).verdict.decision, Decision.DECLINED);
});

test('headers: an unparseable Date is a failure even with both windows off', async () => {
  for (const date of ['yesterday', '2024-01-01T10:00:00Z', '1', 'Mon, 31 Feb 2024 10:00:00 +0000']) {
    const { verdict, results } = await check(['From: a@example.com', `Date: ${date}`], { future: 0, past: 0 });
    assert.equal(verdict.decision, Decision.DENY, date);
    assert.equal(verdict.message, 'Date header is not a valid RFC 5322 date');
    assert.deepEqual(results.fail, ['date:invalid']);
  }
});

test('headers: custom required and singular lists', async () => {
  const { verdict, results } = await check(['Subject: a', 'Subject: b'], { required: ['Message-ID'], singular: [] });
  assert.equal(verdict.message, 'required header Message-ID is missing');
  assert.deepEqual(results.fail, ['required:Message-ID']);
  const none = await check(['X-Only: 1'], { required: [], singular: [] });
  assert.equal(none.verdict.decision, Decision.DECLINED);
  assert.deepEqual(none.results.pass, []);
});

test('headers: RFC 5322 date parsing, including obsolete forms', () => {
  const iso = (s: string) => {
    const t = parseRfc5322Date(s);
    return t === undefined ? undefined : new Date(t).toISOString();
  };
  assert.equal(iso('Thu, 13 Feb 1969 23:32:54 -0330'), '1969-02-14T03:02:54.000Z');
  assert.equal(iso('Tue, 1 Jul 2003 10:52:37 +0200 (CEST)'), '2003-07-01T08:52:37.000Z');
  assert.equal(iso('1 Jan 24 10:00 EST'), '2024-01-01T15:00:00.000Z');
  assert.equal(iso('Fri, 21 Nov 97 09:55:06 -0600'), '1997-11-21T15:55:06.000Z');
  assert.equal(iso('mon,  1 JAN 2024 10:00:00 gmt'), '2024-01-01T10:00:00.000Z');
  assert.equal(iso('Mon, 1 Jan 2024 10:00:00'), '2024-01-01T10:00:00.000Z');
  assert.equal(iso('Thu, 29 Feb 2024 00:00:00 +0000'), '2024-02-29T00:00:00.000Z');
  for (const bad of ['', 'Thu, 29 Feb 2023 00:00:00 +0000', 'Mon, 1 Jan 2024 24:00:00 +0000', 'Mon, 1 Jan 2024 10:00:00 CEST',
    'Mon, 1 Jan 2024 10:00:00 +0060', 'Xyz, 1 Jan 2024 10:00:00 +0000', '1 Foo 2024 10:00 +0000', 'Mon Jan 1 10:00:00 2024']) {
    assert.equal(parseRfc5322Date(bad), undefined, bad);
  }
});

test('headers: options are validated', () => {
  assert.throws(() => plugin.options!.parse({ future: -1 }));
  assert.throws(() => plugin.options!.parse({ required: 'From' }));
  assert.throws(() => plugin.options!.parse({ max_age: 3 }));
});
