/**
 * A small client for SpamAssassin's spamd (the SPAMC/1.5 protocol, as spamc
 * speaks it). Written here rather than taken from npm: the npm spamd clients
 * are unmaintained, read the whole message into a string (no streaming, no
 * 8-bit safety) and have no deadline; the protocol itself is a few lines.
 *
 *   SYMBOLS SPAMC/1.5\r\n
 *   Content-length: <bytes>\r\n
 *   User: <name>\r\n            (optional: whose preferences spamd applies)
 *   \r\n
 *   <message>
 *
 *   SPAMD/1.1 0 EX_OK\r\n
 *   Content-length: 55\r\n
 *   Spam: True ; 1000.0 / 5.0\r\n
 *   \r\n
 *   GTUBE,MSGID_SHORT,NO_RECEIVED          (the names of the rules that hit)
 *
 * spamd closes the connection after its reply. A status other than 0 (EX_OK)
 * is an error, as is a reply without a "Spam:" line.
 */
import type { Message } from '../message/types';
import { exchange, ScanError } from './exchange';
import { sendMessage } from './send-message';
import type { ScanTarget } from './target';

export const SPAMD_DEFAULT_PORT = 783;
const MAX_REPLY = 256 * 1024;

export interface SpamdVerdict {
  /** spamd's own verdict: score >= its required_score. */
  isSpam: boolean;
  score: number;
  /** spamd's required_score (the spam threshold of the user it applied). */
  threshold: number;
  /** The score and threshold as spamd wrote them ("1000.0", "5.0"), for headers. */
  scoreText: string;
  thresholdText: string;
  /** Names of the rules that hit. */
  tests: string[];
}

export interface SpamdCheckOptions {
  target: ScanTarget;
  timeoutMs: number;
  /** The User header: whose preferences spamd applies (omitted: spamd's default user). */
  user?: string;
  /** Bytes prepended to the message for spamd only (a Received header describing the client). */
  prefix?: Buffer;
}

/** Sends the message (streamed) with the SYMBOLS command and returns spamd's verdict. Throws ScanError. */
export async function spamdCheck(message: Message, opts: SpamdCheckOptions): Promise<SpamdVerdict> {
  const prefix = opts.prefix ?? Buffer.alloc(0);
  const length = prefix.length + message.size();
  const head = [`SYMBOLS SPAMC/1.5`, `Content-length: ${length}`];
  if (opts.user) head.push(`User: ${opts.user}`);
  const request = Buffer.from(head.join('\r\n') + '\r\n\r\n', 'latin1');
  const reply = await exchange({
    target: opts.target,
    timeoutMs: opts.timeoutMs,
    maxReply: MAX_REPLY,
    async send(out, signal) {
      await out.write(request);
      await sendMessage(message, out, signal, { prefix, expectedSize: length });
    },
  });
  return parseSpamdReply(reply);
}

/** PING: resolves when spamd answers PONG (used to wait for a starting spamd). */
export async function spamdPing(target: ScanTarget, timeoutMs: number): Promise<void> {
  const reply = await exchange({
    target,
    timeoutMs,
    maxReply: 1024,
    async send(out) {
      await out.write(Buffer.from('PING SPAMC/1.5\r\n\r\n', 'latin1'));
    },
  });
  const line = reply.toString('latin1').split('\r\n')[0] ?? '';
  if (!/^SPAMD\/\d+\.\d+ 0 PONG/.test(line)) throw new ScanError('protocol', `spamd answered PING with ${JSON.stringify(line)}`);
}

const STATUS_RE = /^SPAMD\/(\d+\.\d+)\s+(\d+)\s*(.*)$/;
const SPAM_RE = /^(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*\/\s*(-?\d+(?:\.\d+)?)$/i;

/** Parses a reply to CHECK/SYMBOLS/REPORT. Throws ScanError('protocol') on anything else. */
export function parseSpamdReply(reply: Buffer): SpamdVerdict {
  const sep = reply.indexOf('\r\n\r\n');
  const headEnd = sep < 0 ? reply.length : sep;
  const lines = reply.toString('latin1', 0, headEnd).split('\r\n');
  const status = STATUS_RE.exec(lines[0] ?? '');
  if (!status) throw new ScanError('protocol', `spamd: unexpected reply ${JSON.stringify((lines[0] ?? '').slice(0, 200))}`);
  if (status[2] !== '0') throw new ScanError('protocol', `spamd: error ${status[2]} ${status[3].trim()}`);
  let spam: RegExpExecArray | null = null;
  let contentLength: number | undefined;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'spam') spam = SPAM_RE.exec(value);
    else if (name === 'content-length') contentLength = Number(value);
  }
  if (!spam) throw new ScanError('protocol', 'spamd: reply without a valid "Spam:" header');
  const body = sep < 0 ? Buffer.alloc(0) : reply.subarray(sep + 4);
  if (contentLength !== undefined && body.length !== contentLength) {
    throw new ScanError('protocol', `spamd: reply body of ${body.length} bytes, ${contentLength} announced`);
  }
  const tests = body
    .toString('latin1')
    .split(',')
    .map((t) => t.trim())
    .filter((t) => /^[A-Za-z0-9_.:-]+$/.test(t));
  return {
    isSpam: /^(true|yes)$/i.test(spam[1]),
    score: Number(spam[2]),
    threshold: Number(spam[3]),
    scoreText: spam[2],
    thresholdText: spam[3],
    tests,
  };
}
