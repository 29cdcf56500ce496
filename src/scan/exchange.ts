/**
 * One request/reply exchange with a content scanner daemon (spamd, clamd, and
 * any other that speaks "connect, send the message, read the verdict"): the
 * request is streamed with backpressure, so a message is never held in memory
 * whole, and the whole exchange has one deadline, after which the socket and
 * the message stream are torn down.
 *
 * A scanner may answer before it has read everything (clamd's "size limit
 * exceeded") and close: the writes then fail, but the reply it sent is what
 * counts, so a reply received before the connection broke is returned.
 */
import net from 'node:net';
import { once } from 'node:events';
import { describeTarget, type ScanTarget } from './target';

const WRITE_BUFFER = 1024 * 1024;
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export type ScanErrorKind = 'connect' | 'timeout' | 'io' | 'protocol';

/** Anything that kept a scanner from giving a verdict. Plugins map it to their on_scan_error policy. */
export class ScanError extends Error {
  constructor(
    readonly kind: ScanErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'ScanError';
  }
}

/** Where a request is written; write() waits while the socket's buffer is full. */
export interface RequestWriter {
  write(chunk: Buffer): Promise<void>;
}

export interface ExchangeOptions {
  target: ScanTarget;
  /** Deadline for the whole exchange (connect, send, scan, reply), in milliseconds. */
  timeoutMs: number;
  /** A reply longer than this is a protocol error (a scanner's verdict is short). */
  maxReply: number;
  /** Writes the request. The signal aborts when the exchange ends early (timeout, reply, error). */
  send(out: RequestWriter, signal: AbortSignal): Promise<void>;
  /** True once the reply is complete, for protocols that do not close after it; otherwise the reply ends at EOF. */
  complete?(reply: Buffer): boolean;
  /** Half-close after the request (spamd and clamd both allow it; default true). */
  endAfterSend?: boolean;
}

/** Runs one exchange and returns the raw reply. Throws ScanError. */
export function exchange(opts: ExchangeOptions): Promise<Buffer> {
  const where = describeTarget(opts.target);
  return new Promise<Buffer>((resolve, reject) => {
    const ac = new AbortController();
    const chunks: Buffer[] = [];
    let got = 0;
    let connected = false;
    let settled = false;
    let socketError: Error | undefined;
    let sendError: Error | undefined;

    // A large write buffer keeps data queued, so most writes reach the kernel from libuv's poll
    // phase, right after pending replies were read (see writer.write).
    const endpoint: net.NetConnectOpts =
      opts.target.kind === 'unix' ? { path: opts.target.path } : { host: opts.target.host, port: opts.target.port };
    // Duplex options pass through net.connect(); @types/node does not list them.
    const sock = net.connect({ ...endpoint, writableHighWaterMark: WRITE_BUFFER } as unknown as net.NetConnectOpts);

    const finish = (err?: ScanError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ac.abort();
      sock.destroy();
      if (err) reject(err);
      else resolve(Buffer.concat(chunks, got));
    };

    const timer = setTimeout(
      () => finish(new ScanError('timeout', `${where}: no complete answer within ${opts.timeoutMs / 1000} s`)),
      opts.timeoutMs,
    );

    sock.on('data', (d: Buffer) => {
      got += d.length;
      if (got > opts.maxReply) return finish(new ScanError('protocol', `${where}: reply longer than ${opts.maxReply} bytes`));
      chunks.push(d);
      if (opts.complete?.(Buffer.concat(chunks, got))) finish();
    });
    sock.on('end', () => finish());
    sock.on('error', (err) => {
      socketError ??= err;
    });
    sock.on('close', () => {
      if (settled) return;
      // Whatever arrived before the connection broke is the reply (the caller's parser judges it).
      if (got > 0) return finish();
      if (!connected) return finish(new ScanError('connect', `cannot connect to ${where}: ${(socketError ?? new Error('closed')).message}`));
      const why = sendError ?? socketError;
      finish(new ScanError('io', `${where}: connection closed without an answer${why ? ` (${why.message})` : ''}`));
    });

    const writer: RequestWriter = {
      async write(chunk: Buffer): Promise<void> {
        if (ac.signal.aborted || sock.destroyed) throw new Error('scanner connection is closed');
        if (sock.writableLength === 0) {
          // Into an empty queue a write goes to the kernel at once, from here. If the scanner has
          // answered early and closed (clamd past its StreamMaxLength), that write fails and Node
          // drops the socket before the reply waiting in it is read. A full turn of the event loop
          // first lets the poll phase read it.
          await turn();
          await turn();
          if (ac.signal.aborted || sock.destroyed) throw new Error('scanner connection is closed');
        }
        if (!sock.write(chunk)) await once(sock, 'drain', { signal: ac.signal });
      },
    };

    sock.once('connect', () => {
      connected = true;
      opts.send(writer, ac.signal).then(
        () => {
          if (!settled && opts.endAfterSend !== false) sock.end();
        },
        (err: Error) => {
          if (settled) return;
          // A write that failed because the scanner closed early: its reply (if any) decides in 'close'.
          sendError = err;
          sock.destroy();
        },
      );
    });
  });
}
