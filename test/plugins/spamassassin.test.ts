/**
 * spamassassin against a real spamd (Debian's spamd) started once for this
 * file: GTUBE refused, a plain message marked, per-recipient thresholds, size
 * cap without reading the message, the Received line only spamd sees, a
 * stopped or hanging spamd deferring. Then over the wire through the whole
 * proxy to a fake downstream.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin, { effectiveThreshold, RECIPIENT_THRESHOLD_OPTION } from '../../plugins/spamassassin';
import { Decision } from '../../src/plugin/decision';
import { spoolBuffer } from '../../src/message/spool';
import type { SpooledMessage } from '../../src/message/message';
import { parseSpamdReply } from '../../src/scan/spamd';
import { ScanError } from '../../src/scan/exchange';
import { callHook, loadPlugin, makeContext, type FakeContext } from '../helpers/plugin-context';
import { GTUBE, startSpamd, type Spamd } from '../helpers/spamd';
import { freePort } from '../helpers/postfix';
import { sendAsPostfix } from '../helpers/dkim-keys';
import { readSpy } from '../helpers/read-spy';
import { startFaultServer } from '../helpers/fault-server';
import { startScannerProxies, type ScannerProxies } from '../helpers/scanner-proxies';

const headerLines = (subject: string) => [
  'From: Alice Example <alice@example.net>',
  'To: bob@example.test',
  `Subject: ${subject}`,
  `Date: ${new Date().toUTCString()}`,
  'Message-ID: <20260101100000.12345@mail.example.net>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
];

const SPAM = [...headerLines('cheap offer'), 'X-Spam-Flag: NO', '', 'This is the GTUBE, the', GTUBE, '', ''].join('\r\n');
const HAM = [
  ...headerLines('Minutes of the meeting'),
  'X-Spam-Flag: YES',
  'X-Spam-Status: Yes, forged by the sender',
  '',
  'Hello Bob,',
  '',
  'here are the minutes of yesterday\'s meeting about the garden fence.',
  'We agreed to paint it green next spring.',
  '',
  'Alice',
  '',
].join('\r\n');

let spamd: Spamd;

before(async () => {
  spamd = await startSpamd();
});
after(async () => {
  await spamd?.stop();
});

async function setup(raw: string | Buffer, options: object = {}, recipients = ['bob@example.test']) {
  const hooks = await loadPlugin(plugin, { server: spamd.server, ...options });
  const message = await spoolBuffer(Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'latin1'));
  const ctx = makeContext({ sender: 'alice@example.net', recipients, clientAddr: '192.0.2.10', helo: 'mail.example.net' });
  return { hooks, message, ctx };
}

function withThresholds(ctx: FakeContext, values: (string | true | undefined)[]): void {
  ctx.txn!.recipients.forEach((r, i) => {
    if (values[i] !== undefined) r.options = { [RECIPIENT_THRESHOLD_OPTION]: values[i]! };
  });
}

function forbidReading(message: SpooledMessage): void {
  const refuse = () => {
    throw new Error('the message was read');
  };
  Object.assign(message, { stream: refuse, bodyStream: refuse, bodyBuffer: refuse, bodyTail: refuse });
}

describe('spamassassin against a private spamd', () => {
  test('GTUBE is refused; score, threshold and rules are recorded', async () => {
    const { hooks, message, ctx } = await setup(SPAM);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DENY);
    assert.equal(verdict.enhanced, '5.7.1');
    assert.match(verdict.message!, /^Message rejected as spam \(score \d+\.\d, limit 10\)$/);
    const r = ctx.myResults()!;
    assert.equal(r.fail[0], 'spam');
    assert.ok((r.details.score as number) >= 900, 'GTUBE alone scores 1000');
    assert.equal(r.details.threshold, 5);
    assert.equal(r.details.reject_threshold, 10);
    assert.ok((r.details.tests as string[]).includes('GTUBE'));
    assert.equal(message.headers.get('X-Spam-Flag'), 'YES');
    assert.equal(message.headers.count('X-Spam-Flag'), 1, 'the sender\'s X-Spam-Flag is gone');
    await message.dispose();
  });

  test('a plain message passes with the X-Spam headers; forged ones are replaced', async () => {
    const { hooks, message, ctx } = await setup(HAM);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED, JSON.stringify(ctx.myResults()));
    const r = ctx.myResults()!;
    assert.deepEqual(r.pass, ['ham']);
    const score = r.details.score as number;
    assert.ok(score < 5, `score ${score}`);
    const h = message.headers;
    assert.deepEqual(h.getAll('X-Spam-Flag'), ['NO']);
    assert.equal(h.count('X-Spam-Status'), 1);
    assert.match(h.get('X-Spam-Status')!, /^No, score=-?\d+\.\d required=5\.0 tests=\S+$/);
    assert.equal(Number(h.get('X-Spam-Score')), score);
    assert.equal(h.get('X-Spam-Level'), score >= 1 ? '*'.repeat(Math.floor(score)) : '');
    // Added at the top, in a fixed order.
    assert.deepEqual(h.fields().slice(0, 4).map((f) => f.name), ['X-Spam-Flag', 'X-Spam-Score', 'X-Spam-Level', 'X-Spam-Status']);
    await message.dispose();
  });

  test('over the UNIX socket too', async () => {
    const { hooks, message, ctx } = await setup(SPAM, { server: spamd.socket });
    assert.equal((await callHook(hooks, 'data_post', ctx, message)).decision, Decision.DENY);
    await message.dispose();
  });

  test('subject_prefix marks spam that is not refused (reject_threshold: null)', async () => {
    const { hooks, message, ctx } = await setup(SPAM, { reject_threshold: null, subject_prefix: '[SPAM] ' });
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.deepEqual(message.headers.getAll('Subject'), ['[SPAM] cheap offer']);
    assert.equal(message.headers.get('X-Spam-Level'), '*'.repeat(50));
    assert.match(message.headers.get('X-Spam-Status')!, /^Yes, score=\d{3,4}\.\d required=5\.0 tests=.*GTUBE/);
    assert.equal(ctx.myResults()!.details.reject_threshold, null);
    await message.dispose();

    const ham = await setup(HAM, { subject_prefix: '[SPAM] ' });
    await callHook(ham.hooks, 'data_post', ham.ctx, ham.message);
    assert.equal(ham.message.headers.get('Subject'), 'Minutes of the meeting');
    await ham.message.dispose();
  });

  test('per-recipient thresholds: the smallest of the recipients\' applies', async () => {
    const two = ['bob@example.test', 'carol@example.test'];
    // GTUBE scores 1000: refused once any recipient's threshold is at or below it.
    const cases: { global: number | null; own: (string | undefined)[]; limit: number | null }[] = [
      { global: null, own: ['500', undefined], limit: 500 },
      { global: 2000, own: ['1500', undefined], limit: null },
      { global: 2000, own: ['1500', '900'], limit: 900 },
      { global: 800, own: ['5000', '6000'], limit: null }, // every recipient has its own: the global one does not apply
      { global: 2000, own: ['abc', undefined], limit: null }, // not a number: ignored, the global one applies
    ];
    for (const c of cases) {
      const { hooks, message, ctx } = await setup(SPAM, { reject_threshold: c.global }, two);
      withThresholds(ctx, c.own);
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      const label = JSON.stringify(c);
      if (c.limit === null) {
        assert.equal(verdict.decision, Decision.DECLINED, label);
      } else {
        assert.equal(verdict.decision, Decision.DENY, label);
        assert.match(verdict.message!, new RegExp(`limit ${c.limit}\\)$`), label);
      }
      if (c.own.includes('abc')) assert.ok(ctx.log.entries.some((e) => e.level === 'warn' && /abc/.test(e.msg)));
      await message.dispose();
    }
  });

  test('effectiveThreshold: one message, one answer', () => {
    const ctx = makeContext({ sender: 'a@example.net', recipients: ['a@example.test', 'b@example.test', 'c@example.test'] });
    assert.equal(effectiveThreshold(ctx, 10), 10);
    withThresholds(ctx, ['7', undefined, '20']);
    assert.equal(effectiveThreshold(ctx, 10), 7);
    assert.equal(effectiveThreshold(ctx, null), 7);
    withThresholds(ctx, ['7', '15', '20']);
    assert.equal(effectiveThreshold(ctx, 5), 7);
    withThresholds(ctx, [true, ' ', '-1.5']);
    assert.equal(effectiveThreshold(ctx, 5), -1.5);
    assert.equal(effectiveThreshold(makeContext({ txn: true }), 12), 12);
  });

  test('over max_size: not read at all, passes marked unscanned', async () => {
    const { hooks, message, ctx } = await setup(SPAM, { max_size: 100 });
    forbidReading(message);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.match(ctx.myResults()!.skip[0], /^unscanned: message of \d+ bytes exceeds max_size 100$/);
    assert.match(message.headers.get('X-Spam-Status')!, /^Unscanned, message of \d+ bytes exceeds max_size 100$/);
    assert.equal(message.headers.count('X-Spam-Flag'), 0, 'the sender\'s X-Spam-Flag is removed even when not scanning');
    await message.dispose();

    const quiet = await setup(SPAM, { max_size: 100, mark_unscanned: false });
    await callHook(quiet.hooks, 'data_post', quiet.ctx, quiet.message);
    assert.equal(quiet.message.headers.count('X-Spam-Status'), 0);
    await quiet.message.dispose();
  });

  test('received_header: spamd alone sees our hop with the client address', async () => {
    const without = await setup(HAM, { received_header: false });
    await callHook(without.hooks, 'data_post', without.ctx, without.message);
    assert.ok((without.ctx.myResults()!.details.tests as string[]).includes('NO_RECEIVED'));
    await without.message.dispose();

    // The test env is standalone mode: auto means on.
    const withIt = await setup(HAM);
    await callHook(withIt.hooks, 'data_post', withIt.ctx, withIt.message);
    const tests = withIt.ctx.myResults()!.details.tests as string[];
    assert.ok(!tests.includes('NO_RECEIVED'), tests.join(','));
    assert.equal(withIt.message.headers.count('Received'), 0, 'the message itself gets no Received line');
    await withIt.message.dispose();
  });
});

describe('spamassassin when spamd fails', () => {
  test('a stopped spamd defers (default on_scan_error: defer)', async () => {
    const stopped = await startSpamd();
    await stopped.stop();
    for (const server of [stopped.server, stopped.socket]) {
      const { hooks, message, ctx } = await setup(HAM, { server });
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      assert.equal(verdict.decision, Decision.DENYSOFT, server);
      assert.equal(verdict.enhanced, '4.3.0');
      assert.match(verdict.message!, /^Spam scanner temporarily unavailable/);
      assert.match(ctx.myResults()!.err[0], /^connect: cannot connect to /);
      await message.dispose();
    }
  });

  test('on_scan_error: accept passes the message, marked unscanned', async () => {
    const { hooks, message, ctx } = await setup(SPAM, { server: `127.0.0.1:${await freePort()}`, on_scan_error: 'accept' });
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.equal(ctx.myResults()!.err.length, 1);
    assert.deepEqual(message.headers.getAll('X-Spam-Status'), ['Unscanned, spamd failed']);
    assert.equal(message.headers.count('X-Spam-Flag'), 0);
    await message.dispose();
  });

  test('a spamd that hangs is given up after scan_timeout', async () => {
    const hang = await startFaultServer((s) => s.resume());
    try {
      const { hooks, message, ctx } = await setup(HAM, { server: hang.server, scan_timeout: 0.3 });
      const start = Date.now();
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      const took = Date.now() - start;
      assert.equal(verdict.decision, Decision.DENYSOFT);
      assert.ok(took >= 250 && took < 2000, `took ${took} ms`);
      assert.match(ctx.myResults()!.err[0], /^timeout: /);
      await message.dispose();
    } finally {
      hang.close();
    }
  });

  test('an error status from spamd defers', async () => {
    const bad = await startFaultServer((s) => s.once('data', () => s.end('SPAMD/1.0 76 Bad header line: (Content-length mismatch)\r\n')));
    try {
      const { hooks, message, ctx } = await setup(HAM, { server: bad.server });
      assert.equal((await callHook(hooks, 'data_post', ctx, message)).decision, Decision.DENYSOFT);
      assert.match(ctx.myResults()!.err[0], /^protocol: spamd: error 76 Bad header line/);
      await message.dispose();
    } finally {
      bad.close();
    }
  });

  test('parseSpamdReply', () => {
    const reply = (s: string) => Buffer.from(s, 'latin1');
    assert.deepEqual(parseSpamdReply(reply('SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: False ; -2.3 / 5.0\r\n\r\nALL_TRUSTED')), {
      isSpam: false,
      score: -2.3,
      threshold: 5,
      scoreText: '-2.3',
      thresholdText: '5.0',
      tests: ['ALL_TRUSTED'],
    });
    const spam = parseSpamdReply(reply('SPAMD/1.5 0 EX_OK\r\nSpam: True ; 15.2 / 5.0\r\nContent-length: 13\r\n\r\nGTUBE,BAYES_9'));
    assert.equal(spam.isSpam, true);
    assert.deepEqual(spam.tests, ['GTUBE', 'BAYES_9']);
    assert.deepEqual(parseSpamdReply(reply('SPAMD/1.1 0 EX_OK\r\nSpam: Yes ; 6 / 5\r\n\r\n')).tests, []);
    for (const bad of [
      'SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n\r\nGTUBE', // no Spam header
      'SPAMD/1.1 0 EX_OK\r\nContent-length: 20\r\nSpam: True ; 6.0 / 5.0\r\n\r\nGTUBE', // truncated
      'SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 6.0 / 5.0\r\n\r\n',
      'HTTP/1.1 200 OK\r\n\r\n',
      '',
    ]) {
      assert.throws(() => parseSpamdReply(reply(bad)), (e: unknown) => e instanceof ScanError && e.kind === 'protocol', JSON.stringify(bad));
    }
  });

  test('options are validated; a bad server address fails at load', async () => {
    assert.throws(() => plugin.options!.parse({ on_scan_error: 'skip' }));
    assert.throws(() => plugin.options!.parse({ subject_prefix: '[SPAM]\r\nBcc: x' }));
    assert.throws(() => plugin.options!.parse({ user: 'two words' }));
    assert.throws(() => plugin.options!.parse({ rejectthreshold: 5 }));
    await assert.rejects(async () => loadPlugin(plugin, { server: 'spamd.example:0' }), /server: invalid port/);
    assert.equal(plugin.defaults?.immune, undefined, 'relay clients are immune (the core default)');
  });
});

describe('spamassassin over the wire', () => {
  let rig: ScannerProxies;
  const spy = readSpy();

  before(async () => {
    const stopped = await startSpamd();
    await stopped.stop();
    rig = await startScannerProxies('spamassassin', { live: spamd.server, stopped: stopped.server }, spy, { from: 'alice@example.net', to: 'bob@example.test' });
  });
  after(() => rig?.close());

  test('GTUBE: 5xx at the end of data, nothing delivered', async () => {
    const { eod, delivered } = await rig.send(rig.proxy, SPAM);
    assert.equal(eod.code, 550);
    const m = /^5\.7\.1 Message rejected as spam \(score (\d+\.\d), limit 10\)$/.exec(`${eod.enhanced} ${eod.lines.join(' ')}`);
    assert.ok(m, eod.lines.join(' '));
    assert.ok(Number(m[1]) >= 900, 'GTUBE alone scores 1000');
    assert.equal(delivered.length, 0);
  });

  test('clean: delivered with X-Spam-Status, the forged headers gone', async () => {
    const { eod, delivered } = await rig.send(rig.proxy, HAM);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    const text = delivered[0].data.toString('latin1');
    assert.match(text, /^X-Spam-Status: No, score=-?\d+\.\d required=5\.0 tests=\S+\r\n/m);
    assert.match(text, /^X-Spam-Flag: NO\r\n/m);
    assert.doesNotMatch(text, /forged by the sender|X-Spam-Flag: YES/);
    assert.match(text, /paint it green/);
  });

  test('a message over max_size (spooled to a file) is delivered unscanned, marked', async () => {
    const big = HAM.replace('Alice\r\n', `Alice\r\n${('z'.repeat(900) + '\r\n').repeat(1700)}`);
    assert.ok(big.length > 1.5e6, 'bigger than the spool\'s memory threshold');
    const { eod, delivered } = await rig.send(rig.proxy, big);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    const text = delivered[0].data.toString('latin1');
    assert.match(text, /^X-Spam-Status: Unscanned, message of \d+ bytes exceeds max_size 512000\r\n/m);
    assert.doesNotMatch(text, /X-Spam-Flag/);
    assert.doesNotMatch(text, /forged by the sender/, 'sender copies are removed even when not scanning');
    assert.equal(text.slice(text.indexOf('\r\n\r\n')), big.slice(big.indexOf('\r\n\r\n')), 'the body is relayed unchanged');
  });

  test('spamd stopped: 451, nothing delivered', async () => {
    const { eod, delivered } = await rig.send(rig.stoppedProxy, HAM);
    assert.equal(eod.code, 451);
    assert.match(`${eod.enhanced} ${eod.lines.join(' ')}`, /^4\.3\.0 Spam scanner temporarily unavailable/);
    assert.equal(delivered.length, 0);
  });

  test('spamd stopped under reject: false (log only): delivered, but marked unscanned', async () => {
    const { eod, delivered } = await rig.send(rig.logOnlyProxy, HAM);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    const text = delivered[0].data.toString('latin1');
    assert.deepEqual(text.match(/^X-Spam-Status:.*$/gm), ['X-Spam-Status: Unscanned, spamd failed']);
    assert.doesNotMatch(text, /^X-Spam-Flag:/m, 'the sender\'s copy is gone, none of ours');
  });

  test('over max_size and over spool.memory_threshold (behind Postfix): spooled to a file, never read by the plugin, delivered marked and unchanged', async () => {
    // GTUBE inside: proof that it was not scanned, rather than scanned and found clean.
    const big = SPAM.replace(GTUBE, `${GTUBE}\r\n${('y'.repeat(900) + '\r\n').repeat(250)}`);
    assert.ok(big.length > 200_000, `${big.length} bytes`);
    const before = rig.downstream.messages.length;
    const r = await sendAsPostfix(rig.cappedProxy.port, { addr: '192.0.2.10', helo: 'mail.example.net', from: 'alice@example.net', to: ['bob@example.test'], message: big });
    assert.equal(r.eod?.code, 250);
    const seen = spy.last();
    assert.ok(seen?.tempPath, 'the spool kept the message in a temp file');
    assert.deepEqual(seen.reads, [], 'spamassassin did not read the message');
    const text = rig.downstream.messages[before]!.data.toString('latin1');
    assert.match(text, /^X-Spam-Status: Unscanned, message of \d+ bytes exceeds max_size 200000\r\n/);
    assert.doesNotMatch(text, /^X-Spam-Flag:/m);
    assert.equal(text.slice(text.indexOf('\r\n\r\n')), big.slice(big.indexOf('\r\n\r\n')), 'the body is relayed unchanged');
  });
});
