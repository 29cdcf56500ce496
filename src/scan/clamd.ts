/**
 * A client for ClamAV's clamd: the message is streamed with zINSTREAM, in
 * chunks each preceded by its length (4 bytes, big-endian), ended by a chunk
 * of length 0. clamd answers with one NUL-terminated line and closes:
 *
 *   stream: OK
 *   stream: Eicar-Signature FOUND
 *   INSTREAM size limit exceeded. ERROR      (more than its StreamMaxLength)
 *   <anything else> ERROR
 *
 * clamd decodes MIME itself (ScanMail, on by default), so the raw message is
 * what it gets.
 */
import type { Message } from '../message/types';
import { exchange, ScanError } from './exchange';
import { sendMessage } from './send-message';
import type { ScanTarget } from './target';

export const CLAMD_DEFAULT_SOCKET = '/var/run/clamav/clamd.ctl';

export type ClamdVerdict =
  | { status: 'clean' }
  | { status: 'infected'; virus: string }
  /** clamd stopped reading at its StreamMaxLength: the message was not scanned. */
  | { status: 'too_large'; detail: string };

export interface ClamdScanOptions {
  target: ScanTarget;
  timeoutMs: number;
  /** Size of the INSTREAM chunks (default 64 KiB). */
  chunkSize?: number;
}

const MAX_REPLY = 4096;
const END = Buffer.alloc(4);

function lengthPrefix(piece: Buffer): Buffer[] {
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(piece.length, 0);
  return [len, piece];
}

const nulTerminated = (reply: Buffer): boolean => reply.includes(0);

/** Streams the message to clamd and returns its verdict. Throws ScanError. */
export async function clamdScan(message: Message, opts: ClamdScanOptions): Promise<ClamdVerdict> {
  const started = Date.now();
  let sent = 0;
  let reply: Buffer;
  try {
    reply = await exchange({
      target: opts.target,
      timeoutMs: opts.timeoutMs,
      maxReply: MAX_REPLY,
      complete: nulTerminated,
      async send(out, signal) {
        await out.write(Buffer.from('zINSTREAM\0', 'latin1'));
        const frame = (piece: Buffer): Buffer[] => {
          sent += piece.length;
          return lengthPrefix(piece);
        };
        await sendMessage(message, out, signal, { maxChunk: opts.chunkSize, frame });
        await out.write(END);
      },
    });
  } catch (err) {
    // Past its StreamMaxLength clamd answers and closes at once; the rest of the stream then
    // makes its kernel reset the connection, which can destroy the answer before it is read.
    // Asking again with just the size tells that case apart from a clamd that died.
    const left = opts.timeoutMs - (Date.now() - started);
    if (err instanceof ScanError && err.kind === 'io' && sent > 0 && left > 0) {
      const limit = await sizeLimitAnswer(opts.target, message.size(), Math.min(PROBE_TIMEOUT, left));
      if (limit) return { status: 'too_large', detail: limit };
    }
    throw err;
  }
  return parseClamdReply(reply);
}

const PROBE_TIMEOUT = 1000;

/**
 * Announces a single chunk of `size` bytes and sends none of it: clamd answers
 * "size limit exceeded" at once if that is over its StreamMaxLength, and
 * otherwise waits for the data (until we give up). Returns clamd's answer in
 * the first case, undefined otherwise.
 */
async function sizeLimitAnswer(target: ScanTarget, size: number, timeoutMs: number): Promise<string | undefined> {
  if (size > 0xffffffff) return undefined;
  const head = Buffer.alloc(14);
  head.write('zINSTREAM\0', 0, 'latin1');
  head.writeUInt32BE(size, 10);
  try {
    const reply = await exchange({
      target,
      timeoutMs,
      maxReply: MAX_REPLY,
      complete: nulTerminated,
      endAfterSend: false,
      async send(out) {
        await out.write(head);
      },
    });
    const line = cleanLine(reply);
    return /size limit exceeded/i.test(line) ? line : undefined;
  } catch {
    return undefined;
  }
}

/** A simple command (PING, VERSION): its NUL-terminated answer. */
export async function clamdCommand(target: ScanTarget, command: string, timeoutMs: number): Promise<string> {
  const reply = await exchange({
    target,
    timeoutMs,
    maxReply: MAX_REPLY,
    complete: nulTerminated,
    async send(out) {
      await out.write(Buffer.from(`z${command}\0`, 'latin1'));
    },
  });
  return cleanLine(reply);
}

function cleanLine(reply: Buffer): string {
  const nul = reply.indexOf(0);
  return reply.toString('latin1', 0, nul < 0 ? reply.length : nul).trim();
}

/** Parses clamd's answer to INSTREAM. Throws ScanError('protocol') for errors and anything unknown. */
export function parseClamdReply(reply: Buffer): ClamdVerdict {
  const line = cleanLine(reply);
  if (/^stream: OK$/.test(line)) return { status: 'clean' };
  const found = /^stream: (.+) FOUND$/.exec(line);
  if (found) return { status: 'infected', virus: found[1].trim() };
  if (/size limit exceeded/i.test(line)) return { status: 'too_large', detail: line };
  if (!line) throw new ScanError('protocol', 'clamd: empty reply');
  throw new ScanError('protocol', `clamd: ${line.slice(0, 200)}`);
}
