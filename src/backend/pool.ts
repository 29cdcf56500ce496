import type { SmtpClient } from './smtp-client';

/**
 * Idle downstream links kept for the next transaction. A proxy that opens a
 * new link per message pays connect, greeting, EHLO and QUIT each time; a
 * link that ended its last transaction cleanly (250/5xx at end of data, or
 * RSET) is as good as new, since Postfix and other XFORWARD servers forget
 * the client attributes at the end of every transaction, and XFORWARD is sent
 * again before each MAIL. Links told who the client is by XCLIENT are never
 * pooled.
 */
export class DownstreamPool {
  private readonly idleLinks: { client: SmtpClient; timer: NodeJS.Timeout; onClose: () => void }[] = [];
  private closed = false;

  constructor(
    private readonly maxIdle: number,
    private readonly idleMs: number,
  ) {}

  get size(): number {
    return this.idleLinks.length;
  }

  /** A live idle link, or undefined. */
  take(): SmtpClient | undefined {
    for (;;) {
      const entry = this.idleLinks.pop();
      if (!entry) return undefined;
      clearTimeout(entry.timer);
      entry.client.removeListener('close', entry.onClose);
      if (entry.client.idle) return entry.client;
      entry.client.close();
    }
  }

  /** Keeps a clean link for later, or lets it go (QUIT) when the pool is full or closing. */
  give(client: SmtpClient): void {
    if (this.closed || !client.idle || this.idleLinks.length >= this.maxIdle) {
      void client.quit().catch(() => client.close());
      return;
    }
    const entry = {
      client,
      // Well before the downstream's own idle timeout (Postfix: 300 s), so it is we who end it.
      timer: setTimeout(() => this.remove(entry, true), this.idleMs),
      onClose: () => this.remove(entry, false),
    };
    entry.timer.unref();
    client.once('close', entry.onClose);
    this.idleLinks.push(entry);
  }

  private remove(entry: DownstreamPool['idleLinks'][number], quit: boolean): void {
    const i = this.idleLinks.indexOf(entry);
    if (i >= 0) this.idleLinks.splice(i, 1);
    clearTimeout(entry.timer);
    entry.client.removeListener('close', entry.onClose);
    if (quit) void entry.client.quit().catch(() => entry.client.close());
  }

  /** QUIT every idle link; later give() calls QUIT at once. */
  async close(): Promise<void> {
    this.closed = true;
    const links = this.idleLinks.splice(0);
    await Promise.allSettled(
      links.map((e) => {
        clearTimeout(e.timer);
        e.client.removeListener('close', e.onClose);
        return e.client.quit();
      }),
    );
  }
}
