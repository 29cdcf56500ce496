/**
 * The proxies a content scanner plugin (clamav, spamassassin) is tested with
 * over SMTP: against its live scanner, against one that was started and
 * stopped (connections refused), the same under reject: false, and a Postfix
 * mode one with a small spool and max_size between the two read spies.
 */
import type { Reply } from '../../src/smtp/reply';
import { FakeSmtpServer, type FakeMessage } from './fake-smtp-server';
import { startProxy, type TestProxy } from './proxy';
import type { ReadSpy } from './read-spy';
import { SmtpTalk } from './smtp-talk';

export interface ScannerProxies {
  downstream: FakeSmtpServer;
  proxy: TestProxy;
  stoppedProxy: TestProxy;
  logOnlyProxy: TestProxy;
  /** Postfix mode, spool.memory_threshold 64 KiB, the plugin's max_size 200 000. */
  cappedProxy: TestProxy;
  /** One message from `from` to `to` through `p`: the end-of-data reply and what the downstream got for it. */
  send(p: TestProxy, message: string): Promise<{ eod: Reply; delivered: FakeMessage[] }>;
  close(): Promise<void>;
}

export async function startScannerProxies(
  plugin: string,
  servers: { live: string; stopped: string },
  spy: ReadSpy,
  envelope: { from: string; to: string },
): Promise<ScannerProxies> {
  const downstream = await FakeSmtpServer.start();
  const start = (mode: 'standalone' | 'postfix', options: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<TestProxy> =>
    startProxy({ mode, downstream: { address: `127.0.0.1:${downstream.port}` }, plugins: [{ [plugin]: options }], ...extra });
  const proxies = {
    proxy: await start('standalone', { server: servers.live }),
    stoppedProxy: await start('standalone', { server: servers.stopped }),
    logOnlyProxy: await start('standalone', { server: servers.stopped, reject: false }),
    cappedProxy: await start('postfix', {}, {
      spool: { memory_threshold: 64 * 1024 },
      plugins: [spy.before, { [plugin]: { server: servers.live, max_size: 200_000 } }, spy.after],
    }),
  };
  return {
    downstream,
    ...proxies,
    async send(p, message) {
      const before = downstream.messages.length;
      const t = await SmtpTalk.connect(p.port);
      try {
        const r = await t.send(envelope.from, [envelope.to], message);
        return { eod: r.eod!, delivered: downstream.messages.slice(before) };
      } finally {
        await t.quit();
      }
    },
    async close() {
      for (const p of Object.values(proxies)) await p.close();
      await downstream.close();
    },
  };
}
