import type { AddressInfo } from 'node:net';
import { FrontendServer, type HookedConnection } from './smtp/frontend';
import { Session } from './session/session';
import { closeRuntime, type Runtime } from './runtime';

/**
 * The listener: accepts connections, gives each a Session bound to the
 * runtime current at accept time, and owns reload and graceful shutdown.
 */
export class ProxyServer {
  private runtime: Runtime;
  private readonly smtp: FrontendServer;
  private readonly sessions = new Set<Session>();
  private readonly perAddress = new Map<string, number>();
  private readonly retired = new Set<Runtime>();
  private closing = false;

  constructor(runtime: Runtime) {
    this.runtime = runtime;
    const c = runtime.config;
    this.smtp = new FrontendServer(
      {
        hostname: c.hostname,
        banner: c.banner,
        maxMessageSize: c.limits.message_size,
        maxRecipients: c.limits.recipients,
        maxConnections: c.limits.connections,
        maxCommandLength: c.limits.command_line_length,
        idleTimeoutMs: c.limits.idle_timeout * 1000,
        closeTimeoutMs: c.shutdown_timeout * 1000,
        trustedProxies: runtime.trustedProxies,
        tls: runtime.tls,
      },
      (conn) => this.openSession(conn),
    );
    this.smtp.on('error', (err: Error & { code?: string }) => {
      // Client-side resets are routine (Postfix closes right after QUIT without reading 221).
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') this.runtime.log.debug(`connection: ${err.message}`);
      else this.runtime.log.warn(`smtp: ${err.message}`);
    });
  }

  private openSession(conn: HookedConnection): Session {
    const addr = conn.remoteAddress;
    this.perAddress.set(addr, (this.perAddress.get(addr) ?? 0) + 1);
    const session = new Session({
      runtime: this.runtime,
      id: conn.id,
      peer: { addr, port: conn.remotePort },
      local: { addr: conn.localAddress, port: conn.localPort },
      secure: !!conn.secure,
      connectionsFromPeer: () => this.perAddress.get(addr) ?? 0,
      input: conn,
    });
    this.sessions.add(session);
    const rt = this.runtime;
    session.onDisconnected = () => {
      const n = (this.perAddress.get(addr) ?? 1) - 1;
      if (n > 0) this.perAddress.set(addr, n);
      else this.perAddress.delete(addr);
    };
    session.onClosed = () => {
      this.sessions.delete(session);
      if (this.retired.has(rt) && rt.users === 0) this.retireQuietly(rt);
    };
    return session;
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.runtime.config.listen;
    return new Promise((resolve, reject) => {
      this.smtp.server.once('error', reject);
      this.smtp.listen(port, host, () => {
        this.smtp.server.removeListener('error', reject);
        resolve(this.smtp.server.address() as AddressInfo);
      });
    });
  }

  get activeSessions(): number {
    return this.sessions.size;
  }

  /**
   * Swaps in a new runtime for new connections. Sessions in progress keep the
   * one they started with; the old plugins are shut down once they are done.
   */
  reload(next: Runtime): void {
    const old = this.runtime;
    const a = old.config.listen;
    const b = next.config.listen;
    if (a.host !== b.host || a.port !== b.port) {
      next.log.warn(`listen address change (${a.host}:${a.port} -> ${b.host}:${b.port}) needs a restart; still listening on the old one`);
    }
    this.runtime = next;
    this.smtp.trustedProxies = next.trustedProxies;
    // A renewed certificate (or tls: added/removed) applies to every STARTTLS from now on.
    this.smtp.setTls(next.tls);
    this.retired.add(old);
    if (old.users === 0) this.retireQuietly(old);
  }

  private retireQuietly(rt: Runtime): void {
    this.retire(rt).catch((err: Error) => rt.log.error(`shutting down the old plugins failed: ${err.message}`));
  }

  private async retire(rt: Runtime): Promise<void> {
    this.retired.delete(rt);
    await closeRuntime(rt);
  }

  /** Stop accepting; let transactions in flight finish until the deadline; then cut them off (421). */
  async close(deadlineMs = this.runtime.config.shutdown_timeout * 1000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const listenerClosed = new Promise<void>((resolve) => this.smtp.drain(resolve));
    const deadline = Date.now() + deadlineMs;
    while (this.sessions.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    if (this.sessions.size) {
      this.runtime.log.warn(`shutdown deadline reached with ${this.sessions.size} session(s) open; closing them`);
      this.smtp.forceClose();
      // Their disconnect handling (downstream QUIT, disconnect hooks) still gets a moment.
      const until = Date.now() + 2000;
      while (this.sessions.size && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
    }
    await listenerClosed;
    await closeRuntime(this.runtime);
    for (const rt of [...this.retired]) await this.retire(rt);
  }
}
