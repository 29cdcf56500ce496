/**
 * Streams a spooled message to a scanner, chunk by chunk, as it will be relayed
 * (headers as edited so far, then the body): never read into memory whole, and
 * the read stops as soon as the exchange is aborted.
 */
import type { Message } from '../message/types';
import type { RequestWriter } from './exchange';

export interface SendMessageOptions {
  /** Sent before the message and counted in its size (e.g. a Received header only the scanner sees). */
  prefix?: Buffer;
  /** Largest piece handed to frame()/the socket at once (default 64 KiB). */
  maxChunk?: number;
  /** Wraps each piece for the wire (clamd's length-prefixed chunks); default: as is. */
  frame?: (piece: Buffer) => Buffer[];
  /** The exact number of bytes the protocol announced (spamd's Content-length): more or fewer is an error. */
  expectedSize?: number;
}

const DEFAULT_MAX_CHUNK = 64 * 1024;

/** Sends prefix + message; returns the number of message bytes sent (prefix included). */
export async function sendMessage(message: Message, out: RequestWriter, signal: AbortSignal, opts: SendMessageOptions = {}): Promise<number> {
  const max = opts.maxChunk ?? DEFAULT_MAX_CHUNK;
  const frame = opts.frame ?? ((piece: Buffer) => [piece]);
  let sent = 0;
  const put = async (data: Buffer): Promise<void> => {
    for (let off = 0; off < data.length; off += max) {
      const piece = data.subarray(off, Math.min(data.length, off + max));
      sent += piece.length;
      if (opts.expectedSize !== undefined && sent > opts.expectedSize) {
        throw new Error(`message grew while it was sent to the scanner (more than the ${opts.expectedSize} bytes announced)`);
      }
      for (const b of frame(piece)) await out.write(b);
    }
  };
  if (opts.prefix?.length) await put(opts.prefix);
  const stream = message.stream();
  const stop = (): void => {
    stream.destroy();
  };
  signal.addEventListener('abort', stop, { once: true });
  try {
    for await (const chunk of stream) await put(chunk as Buffer);
  } finally {
    signal.removeEventListener('abort', stop);
    stream.destroy();
  }
  if (opts.expectedSize !== undefined && sent !== opts.expectedSize) {
    throw new Error(`sent ${sent} bytes to the scanner, ${opts.expectedSize} were announced`);
  }
  return sent;
}
