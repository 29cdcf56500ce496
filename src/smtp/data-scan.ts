/**
 * smtp-server's DATA parser, with its search done by Buffer#indexOf.
 *
 * SMTPStream#_feedDataStream looks for a dot at the start of a line by testing
 * every byte of the message in a JavaScript loop: at 5 MB messages that loop
 * was 12-15% of prequeue's CPU (bench/README.md). This is the same method with
 * the loop replaced by a native search for "\n." and nothing else changed: the
 * same state (_lastBytes, _atDataStart), the same end and unstuffing rules, the
 * same byte counting and back-pressure, so what the message is and where it
 * ends stay smtp-server's decision. test/core/data-scan.test.ts feeds both the
 * same input in random chunkings and requires the same output.
 *
 * It is installed per parser by the front end (HookedConnection#_createParser),
 * the one place that bends smtp-server.
 */
import type { SMTPStream } from 'smtp-server/lib/smtp-stream';
import { afterDrainOrClose } from '../util/streams';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const LF_DOT = Buffer.from('\n.');

type Callback = (err?: Error | null) => void;

export function feedDataStream(this: SMTPStream, chunk: Buffer, done: Callback): void {
  // Only called in data mode, which always has a stream.
  const dataStream = this._dataStream!;
  if (this._lastBytes && this._lastBytes.length) {
    chunk = Buffer.concat([this._lastBytes, chunk], this._lastBytes.length + chunk.length);
    this._lastBytes = false;
  }
  let len = chunk.length;

  // A terminator at the very start (an empty message), but only before any payload was consumed: see smtp-server.
  if (this._atDataStart && len >= 3 && chunk[0] === DOT && chunk[1] === CR && chunk[2] === LF) {
    this._endDataMode(false, chunk.subarray(3), done);
    return;
  }
  if (this._atDataStart && len >= 2 && chunk[0] === DOT && chunk[1] === DOT) {
    chunk = chunk.subarray(1);
    len--;
    this._atDataStart = false;
  }

  // Dots at offsets 2 .. len-3 that follow a LF: the two bytes after each decide what it is.
  for (let lf = chunk.indexOf(LF_DOT, 1); lf !== -1 && lf + 1 < len - 2; lf = chunk.indexOf(LF_DOT, lf + 1)) {
    const i = lf + 1;
    if (chunk[i - 2] === CR && chunk[i + 1] === CR && chunk[i + 2] === LF) {
      // "\r\n.\r\n": everything before the dot, the last line's CRLF included, is the message.
      const buf = chunk.subarray(0, i);
      this._countDataBytes(buf.length);
      this._endDataMode(buf, chunk.subarray(i + 3), done);
      return;
    }
    if (chunk[i + 1] === DOT) {
      // An escape dot: emit what came before it and go on after it.
      const buf = chunk.subarray(0, i);
      this._lastBytes = false;
      this._countDataBytes(buf.length);
      if (dataStream.writable) dataStream.write(buf);
      const rest = chunk.subarray(i + 1);
      setImmediate(() => this._feedDataStream(rest, done));
      return;
    }
  }

  // The last bytes may be the start of a terminator or an escape: keep them for the next chunk.
  this._lastBytes = len < 4 ? chunk : chunk.subarray(len - 4);
  if (this._lastBytes.length >= len) return done();
  const buf = chunk.subarray(0, len - this._lastBytes.length);
  this._countDataBytes(buf.length);
  if (!dataStream.writable) return done();
  if (dataStream.write(buf) || dataStream.destroyed) return done();
  afterDrainOrClose(dataStream, done);
}
