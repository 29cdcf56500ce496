/**
 * A TCP server on a free loopback port that does what a test tells it with
 * each connection (reads and never answers, answers nonsense, resets): fault
 * injection for the plugins that talk to a daemon (clamd, spamd).
 */
import net from 'node:net';

export interface FaultServer {
  /** "127.0.0.1:PORT", as a plugin's `server` option. */
  server: string;
  port: number;
  /** Connections accepted so far. */
  connections(): number;
  /** Stops listening and destroys the connections still open. */
  close(): void;
}

export async function startFaultServer(onConnection: (socket: net.Socket, n: number) => void): Promise<FaultServer> {
  const sockets: net.Socket[] = [];
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    s.on('error', () => undefined);
    onConnection(s, sockets.length);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  return {
    server: `127.0.0.1:${port}`,
    port,
    connections: () => sockets.length,
    close() {
      sockets.forEach((s) => s.destroy());
      srv.close();
    },
  };
}
