import { test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { isMailbox, isMessageId, parseMailboxes, parseRfc5322Date } from '../../plugins/headers';
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

// ---- From, Sender, Message-ID and the envelope ----

async function checkEnvelope(headerLines: string[], env: { sender: string; recipients?: string[] }, options: object = {}) {
  const hooks = await loadPlugin(plugin, options);
  const message = await spoolBuffer(Buffer.from([...headerLines, '', 'body', ''].join('\r\n')));
  const ctx = makeContext({ sender: env.sender, recipients: env.recipients ?? ['b@example.net'] });
  try {
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    return { verdict, results: ctx.myResults()! };
  } finally {
    await message.dispose();
  }
}

const withFrom = (from: string, extra: string[] = []) => [`From: ${from}`, 'To: b@example.net', `Date: ${rfcDate(Date.now())}`, ...extra];

test('headers: a From without a usable address is refused', async () => {
  for (const from of ['Mail Delivery System', '<>', 'undisclosed-recipients:;', 'a@b@example.com', 'someone@']) {
    const { verdict, results } = await check(withFrom(from));
    assert.equal(verdict.decision, Decision.DENY, from);
    assert.equal(verdict.message, 'From header has no valid address', from);
    assert.deepEqual(results.fail, ['from:invalid'], from);
  }
});

test('headers: a From with more <addresses> than mailboxes is refused (display trick)', async () => {
  const { verdict, results } = await check(withFrom('Alice <a@example.com> <evil@example.org>'));
  assert.equal(verdict.decision, Decision.DENY);
  assert.deepEqual(results.fail, ['from:invalid']);
  // Quoted or commented look-alikes are just display text.
  for (const from of ['"Alice <boss@example.org>" <a@example.com>', 'a@example.com (<evil@example.org>)', '=?utf-8?q?J=C3=B6rg?= <a@example.com>']) {
    const ok = await check(withFrom(from));
    assert.equal(ok.verdict.decision, Decision.DECLINED, from);
    assert.deepEqual(ok.results.fail, [], from);
  }
});

test('headers: several From addresses need one Sender (RFC 5322 3.6.2)', async () => {
  const from = 'Alice <a@example.com>, Bob <b@example.com>';
  const none = await check(withFrom(from));
  assert.equal(none.verdict.decision, Decision.DENY);
  assert.equal(none.verdict.message, 'From header has 2 addresses but no Sender header with one');
  assert.deepEqual(none.results.fail, ['from:multiple']);
  const two = await check(withFrom(from, ['Sender: a@example.com, b@example.com']));
  assert.deepEqual(two.results.fail, ['from:multiple']);
  const one = await check(withFrom(from, ['Sender: Alice <a@example.com>']));
  assert.equal(one.verdict.decision, Decision.DECLINED);
  assert.deepEqual(one.results.fail, []);
});

test('headers: checks can be set to record only, or off', async () => {
  const rec = await check(withFrom('Mail Delivery System'), { checks: { from_invalid: 'record' } });
  assert.equal(rec.verdict.decision, Decision.DECLINED);
  assert.deepEqual(rec.results.fail, ['from:invalid']);
  const off = await check(withFrom('Mail Delivery System'), { checks: { from_invalid: 'off' } });
  assert.equal(off.verdict.decision, Decision.DECLINED);
  assert.deepEqual(off.results.fail, []);
  // Other checks keep their defaults when one is set.
  const multi = await check(withFrom('a@example.com, c@example.com'), { checks: { from_invalid: 'record' } });
  assert.equal(multi.verdict.decision, Decision.DENY);
});

test('headers: Message-ID: an invalid one is recorded, a missing one only when asked', async () => {
  const bad = await check(withFrom('a@example.com', ['Message-ID: no-brackets-here']));
  assert.equal(bad.verdict.decision, Decision.DECLINED);
  assert.deepEqual(bad.results.fail, ['message-id:invalid']);
  const good = await check(withFrom('a@example.com', ['Message-ID: <1234.5678@mail.example.com> (comment)']));
  assert.deepEqual(good.results.fail, []);

  assert.deepEqual((await check(withFrom('a@example.com'))).results.fail, [], 'message_id_missing is off by default');
  const rec = await check(withFrom('a@example.com'), { checks: { message_id_missing: 'record' } });
  assert.equal(rec.verdict.decision, Decision.DECLINED);
  assert.deepEqual(rec.results.fail, ['message-id:missing']);
  const rej = await check(withFrom('a@example.com'), { checks: { message_id_missing: 'reject', message_id_invalid: 'reject' } });
  assert.equal(rej.verdict.message, 'Message-ID header is missing');
  const rejBad = await check(withFrom('a@example.com', ['Message-ID: <a@b@c>']), { checks: { message_id_invalid: 'reject' } });
  assert.equal(rejBad.verdict.message, 'Message-ID header is not valid');
});

test('headers: From against the envelope sender is recorded for karma, not refused', async () => {
  const other = await checkEnvelope(withFrom('Bank <service@bank.example>'), { sender: 'x@spammer.example' });
  assert.equal(other.verdict.decision, Decision.DECLINED);
  assert.deepEqual(other.results.fail, ['from:envelope']);
  assert.equal(other.results.details.from_domain, 'bank.example');
  assert.equal(other.results.details.envelope_domain, 'spammer.example');
  assert.equal(other.results.details.from_aligned, false);

  // Relaxed (the default): same organizational domain.
  const relaxed = await checkEnvelope(withFrom('news@Example.CO.UK'), { sender: 'bounce-123@mail.example.co.uk' });
  assert.deepEqual(relaxed.results.fail, []);
  assert.equal(relaxed.results.details.from_aligned, true);
  const strict = await checkEnvelope(withFrom('news@example.co.uk'), { sender: 'bounce-123@mail.example.co.uk' }, { alignment: 'strict' });
  assert.deepEqual(strict.results.fail, ['from:envelope']);
  // Different registrable domains under the same public suffix do not match.
  const suffix = await checkEnvelope(withFrom('a@one.co.uk'), { sender: 'a@two.co.uk' });
  assert.deepEqual(suffix.results.fail, ['from:envelope']);

  const bounce = await checkEnvelope(withFrom('MAILER-DAEMON@mx.example.org'), { sender: '' });
  assert.deepEqual(bounce.results.fail, []);
  assert.equal(bounce.results.details.from_aligned, undefined, 'the null sender is not compared');

  const rejecting = await checkEnvelope(withFrom('a@bank.example'), { sender: 'x@spammer.example' }, { checks: { from_envelope: 'reject' } });
  assert.equal(rejecting.verdict.decision, Decision.DENY);
  assert.equal(rejecting.verdict.message, "From domain bank.example does not match the envelope sender's spammer.example");
});

test('headers: mail "from" the recipient, sent by someone else, is recorded', async () => {
  const spoof = await checkEnvelope(withFrom('Bob <B@example.net>'), { sender: 'x@example.net', recipients: ['b@example.net'] });
  assert.equal(spoof.verdict.decision, Decision.DECLINED);
  assert.deepEqual(spoof.results.fail, ['from:recipient']);
  const self = await checkEnvelope(withFrom('b@example.net'), { sender: 'b@example.net', recipients: ['b@example.net'] });
  assert.deepEqual(self.results.fail, []);
});

test('headers: the Date offset is recorded', async () => {
  const { results } = await check(['From: a@example.com', `Date: ${rfcDate(Date.now() - 3600_000)}`]);
  const offset = results.details.date_offset as number;
  assert.ok(offset <= -3599 && offset >= -3602, String(offset));
  assert.equal((await check(['From: a@example.com', 'Date: garbage'])).results.details.date_offset, undefined);
});

test('headers: address and Message-ID syntax helpers', () => {
  for (const good of ['a@example.com', '"john doe"@example.com', 'x@[192.0.2.1]', 'a.b+c@sub-domain.example', 'u@xn--bcher-kva.example', 'a@host_name.example']) {
    assert.ok(isMailbox(good), good);
  }
  for (const bad of ['', 'a', '@example.com', 'a@', 'a@b@c', 'a b@example.com', 'a@-bad.example', 'a@exa mple.com', 'a@example..com']) {
    assert.ok(!isMailbox(bad), bad);
  }
  assert.deepEqual(parseMailboxes('Team: a@x.example, b@y.example;'), { mailboxes: ['a@x.example', 'b@y.example'], angles: 0 });
  for (const good of ['<a@b>', ' <123.456@mail.example.com> ', '(c) <x$y@z> (d)']) assert.ok(isMessageId(good), good);
  for (const bad of ['a@b', '<ab>', '<a@b', '<a@b> <c@d>', '<a b@c>', '']) assert.ok(!isMessageId(bad), bad);
});

test('headers: the checks option is validated', () => {
  assert.throws(() => plugin.options!.parse({ checks: { from_invalid: 'maybe' } }));
  assert.throws(() => plugin.options!.parse({ checks: { from_bogus: 'record' } }));
  assert.throws(() => plugin.options!.parse({ alignment: 'loose' }));
  const defaults = plugin.options!.parse({});
  assert.deepEqual(defaults.checks, {
    from_invalid: 'reject',
    from_multiple: 'reject',
    message_id_missing: 'off',
    message_id_invalid: 'record',
    from_envelope: 'record',
    from_recipient: 'record',
  });
});
