/**
 * clamav against a real clamd (Debian's clamav-daemon) started here with a
 * signature database made in the setup (an MD5 signature of the EICAR file):
 * infected mail refused by virus name, clean mail marked, size caps (ours and
 * clamd's StreamMaxLength) passing mail unscanned and marked without reading
 * it into memory, a stopped or hanging clamd deferring. Then over the wire
 * through the whole proxy to a fake downstream.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import plugin from '../../plugins/clamav';
import { Decision } from '../../src/plugin/decision';
import { spoolBuffer } from '../../src/message/spool';
import type { SpooledMessage } from '../../src/message/message';
import { callHook, loadPlugin, makeContext } from '../helpers/plugin-context';
import { EICAR, EICAR_SIGNATURE, messageWithAttachment, startClamd, type Clamd } from '../helpers/clamd';
import { freePort } from '../helpers/postfix';
import { sendAsPostfix } from '../helpers/dkim-keys';
import { readSpy } from '../helpers/read-spy';
import { startFaultServer } from '../helpers/fault-server';
import { startScannerProxies, type ScannerProxies } from '../helpers/scanner-proxies';

const VIRUS_NAME = new RegExp(`^${EICAR_SIGNATURE}(\\.UNOFFICIAL)?$`);

const CLEAN = [
  'From: Sender <sender@example.net>',
  'To: alice@example.test',
  'Subject: hello',
  'X-Virus-Scanned: forged by the sender',
  '',
  'Nothing to see here.',
  '',
].join('\r\n');

let clamd: Clamd;

before(async () => {
  clamd = await startClamd({ streamMaxLength: '1M' });
});
after(async () => {
  await clamd?.stop();
});

async function scan(raw: string | Buffer, options: object = {}, spool: { memoryThreshold?: number } = {}) {
  const hooks = await loadPlugin(plugin, { server: clamd.server, ...options });
  const message = await spoolBuffer(Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'latin1'), spool);
  const ctx = makeContext({ sender: 'sender@example.net', recipients: ['alice@example.test'] });
  return { hooks, message, ctx };
}

/** Makes every way of reading the message throw: proves a plugin did not read it. */
function forbidReading(message: SpooledMessage): void {
  const refuse = () => {
    throw new Error('the message was read');
  };
  Object.assign(message, { stream: refuse, bodyStream: refuse, bodyBuffer: refuse, bodyTail: refuse });
}

/** Counts what bodyBuffer would load: streaming a message must never call it. */
function forbidBuffering(message: SpooledMessage): void {
  Object.assign(message, {
    bodyBuffer: () => {
      throw new Error('the whole body was loaded into memory');
    },
  });
}

describe('clamav against a private clamd', () => {
  test('EICAR as a base64 attachment is refused, naming the virus', async () => {
    const { hooks, message, ctx } = await scan(messageWithAttachment(EICAR));
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DENY);
    assert.match(verdict.message!, /^Virus found: Eicar-Signature(\.UNOFFICIAL)?$/);
    const r = ctx.myResults()!;
    assert.equal(r.fail.length, 1);
    assert.match(r.fail[0], /^virus:Eicar-Signature/);
    assert.match(String(r.details.virus), VIRUS_NAME);
    await message.dispose();
  });

  test('a clean message passes with X-Virus-Scanned, the forged copy removed', async () => {
    const { hooks, message, ctx } = await scan(CLEAN);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    assert.deepEqual(ctx.myResults()!.pass, ['clean']);
    assert.deepEqual(message.headers.getAll('X-Virus-Scanned').length, 1);
    assert.match(message.headers.get('X-Virus-Scanned')!, /^ClamAV at \S+$/);
    await message.dispose();
  });

  test('add_header: false leaves the headers alone', async () => {
    const { hooks, message, ctx } = await scan(CLEAN, { add_header: false });
    assert.equal((await callHook(hooks, 'data_post', ctx, message)).decision, Decision.DECLINED);
    assert.deepEqual(message.headers.getAll('X-Virus-Scanned'), ['forged by the sender']);
    await message.dispose();
  });

  test('over the UNIX socket too', async () => {
    const { hooks, message, ctx } = await scan(messageWithAttachment(EICAR), { server: clamd.socket });
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DENY);
    assert.match(verdict.message!, /^Virus found: Eicar-Signature/);
    await message.dispose();
  });

  test('a message spooled to a file is streamed, not loaded: a virus at its end is found', async () => {
    const filler = Array.from({ length: 9000 }, (_, i) => `line ${i} of the filler text, to make the message big`).join('\r\n');
    const raw = messageWithAttachment(EICAR, 'eicar.com', filler);
    assert.ok(raw.length > 400_000 && raw.length < 1_000_000);
    const { hooks, message, ctx } = await scan(raw, {}, { memoryThreshold: 64 * 1024 });
    assert.ok(message.tempPath, 'the message should be in a temp file');
    forbidBuffering(message);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DENY, JSON.stringify(ctx.myResults()));
    assert.match(verdict.message!, /Eicar-Signature/);
    await message.dispose();
  });

  test('over max_size: not read at all, passes marked unscanned', async () => {
    const raw = messageWithAttachment(EICAR);
    const { hooks, message, ctx } = await scan(raw, { max_size: 200 });
    forbidReading(message);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    const r = ctx.myResults()!;
    assert.equal(r.skip.length, 1);
    assert.match(r.skip[0], /^unscanned: message of \d+ bytes exceeds max_size 200$/);
    assert.match(message.headers.get('X-Virus-Scanned')!, /^Unscanned, message of \d+ bytes exceeds max_size 200$/);
    await message.dispose();
  });

  test("over clamd's StreamMaxLength: passes marked unscanned, with a warning to lower max_size", async () => {
    const big = Buffer.concat([Buffer.from(CLEAN, 'latin1'), Buffer.from(('x'.repeat(998) + '\r\n').repeat(2100), 'latin1')]);
    assert.ok(big.length > 2 * 1024 * 1024);
    const { hooks, message, ctx } = await scan(big, {}, { memoryThreshold: 64 * 1024 });
    forbidBuffering(message);
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED, JSON.stringify(ctx.myResults()));
    assert.match(ctx.myResults()!.skip[0], /StreamMaxLength/);
    assert.match(message.headers.get('X-Virus-Scanned')!, /^Unscanned, .*StreamMaxLength/);
    assert.ok(ctx.log.entries.some((e) => e.level === 'warn' && /max_size/.test(e.msg)));
    await message.dispose();
  });
});

describe('clamav when clamd fails', () => {
  test('a stopped clamd defers (default on_scan_error: defer)', async () => {
    const stopped = await startClamd();
    await stopped.stop();
    for (const server of [stopped.server, stopped.socket]) {
      const { hooks, message, ctx } = await scan(CLEAN, { server });
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      assert.equal(verdict.decision, Decision.DENYSOFT, server);
      assert.equal(verdict.enhanced, '4.3.0');
      assert.match(ctx.myResults()!.err[0], /^connect: cannot connect to /);
      assert.equal(message.headers.count('X-Virus-Scanned'), 1, 'headers untouched when deferring');
      await message.dispose();
    }
  });

  test('on_scan_error: accept passes the message, marked unscanned', async () => {
    const { hooks, message, ctx } = await scan(CLEAN, { server: `127.0.0.1:${await freePort()}`, on_scan_error: 'accept' });
    const verdict = await callHook(hooks, 'data_post', ctx, message);
    assert.equal(verdict.decision, Decision.DECLINED);
    const r = ctx.myResults()!;
    assert.equal(r.err.length, 1);
    assert.deepEqual(r.skip, ['unscanned: scan failed']);
    assert.deepEqual(message.headers.getAll('X-Virus-Scanned'), ['Unscanned, clamd failed']);
    await message.dispose();
  });

  test('a clamd that hangs is given up after scan_timeout', async () => {
    // Fault injection: accepts, reads, never answers.
    const hang = await startFaultServer((s) => s.resume());
    try {
      const { hooks, message, ctx } = await scan(CLEAN, { server: hang.server, scan_timeout: 0.3 });
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

  test('an error answer defers', async () => {
    const bad = await startFaultServer((s) => s.once('data', () => s.end('UNKNOWN COMMAND\0')));
    try {
      const { hooks, message, ctx } = await scan(CLEAN, { server: bad.server });
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      assert.equal(verdict.decision, Decision.DENYSOFT);
      assert.match(ctx.myResults()!.err[0], /^protocol: clamd: UNKNOWN COMMAND/);
      await message.dispose();
    } finally {
      bad.close();
    }
  });

  /** Fault injection: the first connection is reset mid-stream without an answer; later ones get `probeAnswer`. */
  function resettingServer(probeAnswer: string | undefined) {
    return startFaultServer((s, n) => {
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (n === 1 && got > 100_000) s.resetAndDestroy();
        else if (n > 1 && got >= 14 && probeAnswer !== undefined) s.end(probeAnswer);
      });
    });
  }
  const BIG = Buffer.concat([Buffer.from(CLEAN, 'latin1'), Buffer.from(('y'.repeat(998) + '\r\n').repeat(500), 'latin1')]);

  test('a connection reset mid-stream is asked again: a size-limit answer means unscanned, not deferred', async () => {
    const fake = await resettingServer('INSTREAM size limit exceeded. ERROR\0');
    try {
      const { hooks, message, ctx } = await scan(BIG, { server: fake.server });
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      assert.equal(verdict.decision, Decision.DECLINED, JSON.stringify(ctx.myResults()));
      assert.equal(fake.connections(), 2);
      assert.match(ctx.myResults()!.skip[0], /StreamMaxLength/);
      await message.dispose();
    } finally {
      fake.close();
    }
  });

  test('a connection reset mid-stream with no size-limit answer defers', async () => {
    const fake = await resettingServer(undefined);
    try {
      const { hooks, message, ctx } = await scan(BIG, { server: fake.server, scan_timeout: 3 });
      const start = Date.now();
      const verdict = await callHook(hooks, 'data_post', ctx, message);
      assert.equal(verdict.decision, Decision.DENYSOFT);
      assert.ok(Date.now() - start < 2500, 'the second question waits one second at most');
      assert.match(ctx.myResults()!.err[0], /^io: .*without an answer/);
      await message.dispose();
    } finally {
      fake.close();
    }
  });

  test('options are validated; a bad server address fails at load', async () => {
    assert.throws(() => plugin.options!.parse({ on_scan_error: 'skip' }));
    assert.throws(() => plugin.options!.parse({ max_size: 0 }));
    assert.throws(() => plugin.options!.parse({ timeout_scan: 3 }));
    await assert.rejects(async () => loadPlugin(plugin, { server: 'relative/clamd.sock' }), /server: /);
    await assert.rejects(async () => loadPlugin(plugin, { server: '127.0.0.1:99999' }), /server: invalid port/);
    assert.equal(plugin.defaults?.immune, false);
  });
});

describe('clamav over the wire', () => {
  let rig: ScannerProxies;
  const spy = readSpy();

  before(async () => {
    const stopped = await startClamd();
    await stopped.stop();
    rig = await startScannerProxies('clamav', { live: clamd.server, stopped: stopped.server }, spy, { from: 'sender@example.net', to: 'alice@example.test' });
  });
  after(() => rig?.close());

  test('EICAR: 5xx at the end of data, nothing delivered', async () => {
    const { eod, delivered } = await rig.send(rig.proxy, messageWithAttachment(EICAR));
    assert.equal(eod.code, 550);
    assert.match(`${eod.enhanced} ${eod.lines.join(' ')}`, /5\.7\.1 Virus found: Eicar-Signature/);
    assert.equal(delivered.length, 0);
  });

  test('clean: delivered with X-Virus-Scanned', async () => {
    const { eod, delivered } = await rig.send(rig.proxy, CLEAN);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    const text = delivered[0].data.toString('latin1');
    assert.match(text, /^X-Virus-Scanned: ClamAV at \S+\r\n/m);
    assert.doesNotMatch(text, /forged by the sender/);
    assert.match(text, /Nothing to see here\./);
  });

  test("a message over clamd's StreamMaxLength is delivered unscanned, marked", async () => {
    const big = CLEAN.replace('Nothing to see here.', ('q'.repeat(900) + '\r\n').repeat(1700));
    const { eod, delivered } = await rig.send(rig.proxy, big);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    assert.match(delivered[0].data.toString('latin1'), /^X-Virus-Scanned: Unscanned, message of \d+ bytes exceeds clamd's StreamMaxLength\r\n/m);
  });

  test('clamd stopped: 451, nothing delivered', async () => {
    const { eod, delivered } = await rig.send(rig.stoppedProxy, CLEAN);
    assert.equal(eod.code, 451);
    assert.match(`${eod.enhanced} ${eod.lines.join(' ')}`, /4\.3\.0 Virus scanner temporarily unavailable/);
    assert.equal(delivered.length, 0);
  });

  test('clamd stopped under reject: false (log only): delivered, but marked unscanned', async () => {
    const { eod, delivered } = await rig.send(rig.logOnlyProxy, CLEAN);
    assert.equal(eod.code, 250);
    assert.equal(delivered.length, 1);
    const text = delivered[0].data.toString('latin1');
    assert.deepEqual(text.match(/^X-Virus-Scanned:.*$/gm), ['X-Virus-Scanned: Unscanned, clamd failed']);
  });

  test('over max_size and over spool.memory_threshold (behind Postfix): spooled to a file, never read by clamav, delivered marked and unchanged', async () => {
    // EICAR inside: proof that it was not scanned, rather than scanned and found clean.
    const filler = Array.from({ length: 5000 }, (_, i) => `line ${i} of a long message that no scanner should read`).join('\r\n');
    const raw = messageWithAttachment(EICAR, 'eicar.com', filler);
    assert.ok(raw.length > 200_000 && raw.length > 64 * 1024, `${raw.length} bytes`);
    const before = rig.downstream.messages.length;
    const r = await sendAsPostfix(rig.cappedProxy.port, { addr: '192.0.2.20', helo: 'mail.example.net', from: 'sender@example.net', to: ['alice@example.test'], message: raw });
    assert.equal(r.eod?.code, 250);
    const seen = spy.last();
    assert.ok(seen?.tempPath, 'the spool kept the message in a temp file');
    assert.deepEqual(seen.reads, [], 'clamav did not read the message');
    const text = rig.downstream.messages[before]!.data.toString('latin1');
    assert.match(text, /^X-Virus-Scanned: Unscanned, message of \d+ bytes exceeds max_size 200000\r\n/);
    assert.equal(text.slice(text.indexOf('\r\n\r\n')), raw.slice(raw.indexOf('\r\n\r\n')), 'the body is relayed unchanged');
    const line = rig.cappedProxy.log.lines.filter((l) => l.msg === 'transaction').at(-1)?.meta.results as Record<string, string> | undefined;
    assert.match(line?.clamav ?? '', /skip=unscanned: message of \d+ bytes exceeds max_size 200000/);
  });
});
