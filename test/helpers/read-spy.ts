/**
 * Watches, through the real proxy, whether the plugins listed between two
 * instances of the scripted test plugin read the message: the first instance
 * (at data_post) notes where the spool keeps the message and wraps every way of
 * reading it, the second counts and unwraps, so the core's own relaying after
 * data_post is not counted. For the "over the cap: passed unscanned, never
 * loaded" checks of the content scanners.
 *
 *   plugins: [spy.before, { clamav: {...} }, spy.after]
 */
import type { SpooledMessage } from '../../src/message/message';
import type { HookContext } from '../../src/plugin/api';
import { scripted } from '../fixtures/plugins/scripted';

const READERS = ['stream', 'bodyStream', 'bodyBuffer', 'bodyTail'] as const;

export interface ReadSpy {
  before: Record<string, unknown>;
  after: Record<string, unknown>;
  /** What the last message showed: the spool's temp file (if any) and the reads between the two. */
  last(): { tempPath: string | undefined; reads: string[] } | undefined;
}

export function readSpy(): ReadSpy {
  let seen: { tempPath: string | undefined; reads: string[] } | undefined;
  scripted.reset();
  const script = scripted.script as Record<string, unknown>;
  script.spy_before_data_post = (_ctx: HookContext, message: SpooledMessage) => {
    const reads: string[] = [];
    seen = { tempPath: message.tempPath, reads };
    for (const name of READERS) {
      const original = message[name] as (...a: unknown[]) => unknown;
      Object.defineProperty(message, name, {
        configurable: true,
        value: (...a: unknown[]) => {
          reads.push(name);
          return original.apply(message, a);
        },
      });
    }
  };
  script.spy_after_data_post = (_ctx: HookContext, message: SpooledMessage) => {
    for (const name of READERS) delete (message as unknown as Record<string, unknown>)[name];
  };
  return {
    before: { 'scripted:spy_before': { prefix: 'spy_before_' } },
    after: { 'scripted:spy_after': { prefix: 'spy_after_' } },
    last: () => seen,
  };
}
