import type { Writable } from 'node:stream';

/**
 * Calls `done` once, when `stream` drains or closes, whichever comes first:
 * a stream that its reader destroys never drains, it only closes, and a
 * writer waiting for 'drain' alone would wait for ever.
 */
export function afterDrainOrClose(stream: Writable, done: () => void): void {
  const go = (): void => {
    stream.off('drain', go);
    stream.off('close', go);
    done();
  };
  stream.on('drain', go);
  stream.on('close', go);
}
