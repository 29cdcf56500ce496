/**
 * The chain's semantics over real connections: order, first decision wins,
 * timeouts and failure policy, the common options (reject, reject_type,
 * immunity), deferred rejection, meta-hooks, and who the client is in
 * Postfix mode (XFORWARD from trusted peers only).
 */
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, deny } from '../../src/plugin/decision';
import type { HookContext, MetaInfo } from '../../src/plugin/api';
import { FakeSmtpServer } from '../helpers/fake-smtp-server';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { SmtpTalk } from '../helpers/smtp-talk';
import { scripted } from '../fixtures/plugins/scripted';

let downstream: FakeSmtpServer;
let proxy: TestProxy | undefined;

before(async () => {
  downstream = await FakeSmtpServer.start();
});
after(async () => {
  await downstream.close();
});
beforeEach(() => scripted.reset());
afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

async function start(config: Record<string, unknown>): Promise<TestProxy> {
  proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${downstream.port}` }, ...config });
  return proxy;
}

async function mailRcpt(port: number, from = 'a@example.net', to = 'b@example.test'): Promise<{ t: SmtpTalk; mail: number; rcpt?: number }> {
  const t = await SmtpTalk.connect(port);
  await t.cmd('EHLO client.example.net');
  const mail = await t.cmd(`MAIL FROM:<${from}>`);
  if (mail.code !== 250) return { t, mail: mail.code };
  const rcpt = await t.cmd(`RCPT TO:<${to}>`);
  return { t, mail: mail.code, rcpt: rcpt.code };
}

describe('order and first decision', () => {
  test('the first non-DECLINED plugin wins; later ones are not called', async () => {
    const p = await start({ plugins: [{ 'scripted:one': { prefix: 'one_' } }, { 'scripted:two': { prefix: 'two_' } }] });
    scripted.script['one_mail' as 'mail'] = Decision.DECLINED;
    scripted.script['two_mail' as 'mail'] = Decision.DENY;
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 550);
    await a.t.quit();
    scripted.reset();
    scripted.script['one_mail' as 'mail'] = Decision.OK;
    scripted.script['two_mail' as 'mail'] = Decision.DENY;
    const b = await mailRcpt(p.port);
    assert.equal(b.mail, 250);
    assert.deepEqual(
      scripted.calls.filter((c) => c.hook === 'mail').map((c) => c.plugin),
      ['scripted:one'],
    );
    await b.t.quit();
  });

  test('a plugin OK at RCPT still leaves the final word to the downstream', async () => {
    const ds = await FakeSmtpServer.start({ script: { rcpt: '550 5.1.1 unknown user' } });
    try {
      proxy = await startProxy({ mode: 'standalone', downstream: { address: `127.0.0.1:${ds.port}` }, plugins: ['scripted'] });
      scripted.script.rcpt = Decision.OK;
      const a = await mailRcpt(proxy.port);
      assert.equal(a.rcpt, 550);
      await a.t.quit();
    } finally {
      await ds.close();
    }
  });
});

describe('failure policy', () => {
  test('a hook past its timeout answers 451 (default on_error: defer)', async () => {
    const p = await start({ plugins: [{ scripted: { timeout: 0.2 } }] });
    scripted.script.mail = () => new Promise((r) => setTimeout(() => r(Decision.OK), 2000));
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 451);
    assert.ok(p.log.lines.some((l) => /failed in mail: timed out/.test(l.msg)));
    await a.t.quit();
  });

  test('a hook that throws answers 451, never 250', async () => {
    const p = await start({ plugins: ['scripted'] });
    scripted.script.rcpt = () => {
      throw new Error('boom');
    };
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 250);
    assert.equal(a.rcpt, 451);
    await a.t.quit();
  });

  test('on_error: skip treats a failing plugin as DECLINED', async () => {
    const p = await start({ plugins: [{ scripted: { on_error: 'skip', timeout: 0.2 } }] });
    scripted.script.mail = () => {
      throw new Error('boom');
    };
    scripted.script.rcpt = () => new Promise((r) => setTimeout(() => r(Decision.DENY), 1000));
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 250);
    assert.equal(a.rcpt, 250);
    await a.t.quit();
  });

  test('a throwing data_post plugin gives 451 and nothing is delivered', async () => {
    const p = await start({ plugins: ['scripted'] });
    scripted.script.data_post = () => {
      throw new Error('scanner exploded');
    };
    const before = downstream.messages.length;
    const t = await SmtpTalk.connect(p.port);
    const r = await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\nhello\r\n');
    assert.equal(r.eod?.code, 451);
    assert.equal(downstream.messages.length, before);
    await t.quit();
  });
});

describe('common options', () => {
  test('reject: false only logs', async () => {
    const p = await start({ plugins: [{ scripted: { reject: false } }] });
    scripted.script.mail = deny('you are bad');
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 250);
    assert.ok(p.log.lines.some((l) => /would reject at mail/.test(l.msg)));
    await a.t.quit();
  });

  test('reject: defer delivers a MAIL rejection at RCPT', async () => {
    const p = await start({ plugins: [{ scripted: { reject: 'defer' } }] });
    scripted.script.mail = deny('bad sender');
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 250);
    assert.equal(a.rcpt, 550);
    await a.t.quit();
  });

  for (const [type, code, closes] of [
    ['temp', 450, false],
    ['perm', 550, false],
    ['disconnect', 550, true],
    ['temp_disconnect', 421, true],
  ] as const) {
    test(`reject_type: ${type} turns a DENY into ${code}${closes ? ' + close' : ''}`, async () => {
      const p = await start({ plugins: [{ scripted: { reject_type: type } }] });
      scripted.script.rcpt = Decision.DENY;
      const a = await mailRcpt(p.port);
      assert.equal(a.rcpt, code);
      await Promise.race([a.t.closed, new Promise((r) => setTimeout(r, 200))]);
      assert.equal(a.t.isClosed, closes);
      a.t.destroy();
    });
  }

  test('relay clients are immune to immune-able plugins only', async () => {
    const p = await start({
      relay_clients: ['127.0.0.0/8'],
      plugins: [{ 'scripted:checks': { prefix: 'c_', immune: true } }, { 'scripted:always': { prefix: 'a_', immune: false } }],
    });
    scripted.script['c_mail' as 'mail'] = Decision.DENY;
    const a = await mailRcpt(p.port);
    assert.equal(a.mail, 250, 'immune plugin skipped');
    await a.t.quit();
    scripted.script['a_rcpt' as 'rcpt'] = Decision.DENY;
    const b = await mailRcpt(p.port);
    assert.equal(b.rcpt, 550, 'non-immune plugin still runs');
    await b.t.quit();
  });

  test('immune_senders exempt a sender, and the exemption is per transaction', async () => {
    const p = await start({ immune_senders: ['@trusted.example'], plugins: [{ scripted: { immune: true } }] });
    scripted.script.rcpt = Decision.DENY;
    const a = await mailRcpt(p.port, 'boss@trusted.example');
    assert.equal(a.rcpt, 250);
    const r = await a.t.cmd('RSET');
    assert.equal(r.code, 250);
    const m = await a.t.cmd('MAIL FROM:<x@other.example>');
    assert.equal(m.code, 250);
    const rc = await a.t.cmd('RCPT TO:<b@example.test>');
    assert.equal(rc.code, 550);
    await a.t.quit();
  });
});

describe('meta-hooks', () => {
  test('deny and ok meta-hooks are told which hook and plugin decided', async () => {
    const p = await start({ plugins: ['scripted'] });
    const seen: MetaInfo[] = [];
    scripted.script.deny = (_ctx: HookContext, ...args: unknown[]) => {
      seen.push(args[0] as MetaInfo);
      return undefined;
    };
    scripted.script.ok = scripted.script.deny;
    scripted.script.mail = Decision.OK;
    scripted.script.rcpt = deny('nope');
    const a = await mailRcpt(p.port);
    assert.equal(a.rcpt, 550);
    assert.deepEqual(
      seen.map((s) => [s.hook, s.plugin, s.verdict.decision]),
      [
        ['mail', 'scripted', Decision.OK],
        ['rcpt', 'scripted', Decision.DENY],
      ],
    );
    await a.t.quit();
  });
});

describe('connection verdicts', () => {
  test('standalone: a deferred connect rejection is delivered at MAIL', async () => {
    const p = await start({ deferred_rejection: { connection: true, stage: 'mail' }, plugins: ['scripted'] });
    scripted.script.connect = deny('listed in a DNSBL');
    const t = await SmtpTalk.connect(p.port);
    assert.equal(t.greeting.code, 220);
    assert.equal((await t.cmd('EHLO c.example')).code, 250);
    const m = await t.cmd('MAIL FROM:<a@example.net>');
    assert.equal(m.code, 550);
    assert.match(m.lines.join(' '), /listed in a DNSBL/);
    await t.quit();
  });

  test('stage: rcpt lets MAIL through and rejects every RCPT', async () => {
    const p = await start({ deferred_rejection: { connection: true, stage: 'rcpt' }, plugins: ['scripted'] });
    scripted.script.helo = deny('bad helo');
    const t = await SmtpTalk.connect(p.port);
    assert.equal((await t.cmd('HELO c.example')).code, 250);
    assert.equal((await t.cmd('MAIL FROM:<a@example.net>')).code, 250);
    assert.equal((await t.cmd('RCPT TO:<b@example.test>')).code, 550);
    assert.equal((await t.cmd('RCPT TO:<c@example.test>')).code, 550);
    await t.quit();
  });
});

describe('Postfix mode', () => {
  test('plugins see the XFORWARD client; Postfix\'s own EHLO fires no hook; connect verdicts wait for MAIL', async () => {
    const p = await start({ mode: 'postfix', plugins: ['scripted'] });
    const clients: string[] = [];
    const helos: string[] = [];
    scripted.script.connect = (ctx: HookContext) => {
      clients.push(ctx.conn.client.addr);
      return ctx.conn.client.addr === '192.0.2.7' ? deny('blocked client') : undefined;
    };
    scripted.script.ehlo = (_ctx: HookContext, ...args: unknown[]) => {
      helos.push(String(args[0]));
      return undefined;
    };
    const t = await SmtpTalk.connect(p.port);
    const ehlo = await t.cmd('EHLO mx.example.test');
    assert.ok(ehlo.lines.some((l) => l.startsWith('XFORWARD ')), 'XFORWARD advertised to a trusted peer');
    assert.deepEqual(helos, [], "Postfix's EHLO is not the client's");
    const x = await t.cmd('XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=4711 HELO=spammer.example IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=REMOTE');
    assert.equal(x.code, 250, 'XFORWARD itself is never refused: Postfix would show a generic 451');
    assert.deepEqual(clients, ['192.0.2.7']);
    assert.deepEqual(helos, ['spammer.example']);
    const m = await t.cmd('MAIL FROM:<a@example.net>');
    assert.equal(m.code, 550);
    assert.match(m.lines.join(' '), /blocked client/);
    await t.quit();
  });

  test('XFORWARD from an untrusted peer is refused and nothing it claims is used or forwarded', async () => {
    const p = await start({ mode: 'postfix', trusted_proxies: ['192.0.2.1'], plugins: ['scripted'] });
    const clients: string[] = [];
    scripted.script.mail = (ctx: HookContext) => {
      clients.push(ctx.conn.client.addr);
      return undefined;
    };
    const t = await SmtpTalk.connect(p.port);
    const ehlo = await t.cmd('EHLO mx.example.test');
    assert.ok(!ehlo.lines.some((l) => /^X(FORWARD|CLIENT)/.test(l)), 'not advertised');
    const x = await t.cmd('XFORWARD ADDR=192.0.2.99 NAME=forged.example');
    assert.equal(x.code, 550);
    const c = await t.cmd('XCLIENT ADDR=192.0.2.99');
    assert.equal(c.code, 550);
    const before = downstream.messages.length;
    const r = await t.send('a@example.net', ['b@example.test'], 'Subject: x\r\n\r\nhi\r\n', 'mx.example.test');
    assert.equal(r.eod?.code, 250);
    assert.deepEqual(clients, ['127.0.0.1']);
    const msg = downstream.messages[before]!;
    assert.ok(msg.xforward.every((l) => l.includes('ADDR=127.0.0.1') && !l.includes('192.0.2.99')), msg.xforward.join('|'));
    await t.quit();
  });
});
